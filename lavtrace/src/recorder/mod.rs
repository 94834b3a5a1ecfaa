//! The flight recorder (`trace --keep ... --dump-on ...`): the last minutes of interval records,
//! as the JSON `trace --format json` prints, kept in memory (bounded by time and bytes), and
//! written as a bundle-like .tar.gz when a trigger fires, without re-running anything.
//!
//! The session feeds it every interval; it never names a family (the triggers read the
//! sections by type, `trigger`).

pub mod trigger;

use std::{
    collections::VecDeque,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use crate::{bundle, output::Sections, units};
pub use trigger::Trigger;

/// What to keep and when to dump (the `--keep`/`--dump-*` flags as plain values).
#[derive(Debug, Clone)]
pub struct Config {
    pub keep: Duration,
    pub max_bytes: u64,
    pub triggers: Vec<Trigger>,
    pub after: Duration,
    pub every: Duration,
    pub files: usize,
    pub dir: PathBuf,
}

struct Kept {
    at: Instant,
    /// How long before `at` its interval began: the kept records cover from the first one's
    /// start, not its end.
    window: Duration,
    line: String,
}

/// A trigger accepted, waiting for its `--dump-after`.
struct Pending {
    at: Instant,
    due: Instant,
    what: String,
    why: String,
    seq: u64,
    /// Triggers suppressed by `--dump-every` before this one.
    suppressed: u64,
}

pub struct Recorder {
    config: Config,
    pid: u32,
    comm: String,
    kept: VecDeque<Kept>,
    bytes: u64,
    pending: Option<Pending>,
    last_accepted: Option<Instant>,
    suppressed: u64,
    suppressed_total: u64,
    written: u64,
    last_seq: u64,
}

impl Recorder {
    pub fn new(config: Config, pid: u32, comm: &str) -> Recorder {
        Recorder {
            config,
            pid,
            comm: comm.to_string(),
            kept: VecDeque::new(),
            bytes: 0,
            pending: None,
            last_accepted: None,
            suppressed: 0,
            suppressed_total: 0,
            written: 0,
            last_seq: 0,
        }
    }

    /// For the headers: what is kept against both bounds, "flight recorder: 12 intervals,
    /// 2.4s of 10m, 3.2KiB of 64.0MiB kept; 1 dump".
    pub fn describe(&self) -> String {
        let span = match (self.kept.front(), self.kept.back()) {
            (Some(first), Some(last)) => last
                .at
                .duration_since(first.at)
                .saturating_add(first.window),
            _ => Duration::ZERO,
        };
        // Whole tenths: humantime would print every nanosecond.
        let span = Duration::from_millis(span.as_millis() as u64 / 100 * 100);
        let dumps = match self.written {
            0 => String::new(),
            1 => "; 1 dump".into(),
            n => format!("; {n} dumps"),
        };
        format!(
            "flight recorder: {} interval{}, {} of {}, {} of {} kept{dumps}",
            self.kept.len(),
            if self.kept.len() == 1 { "" } else { "s" },
            humantime::format_duration(span),
            humantime::format_duration(self.config.keep),
            units::bytes(self.bytes),
            units::bytes(self.config.max_bytes)
        )
    }

    /// One interval (`window` long, ending `now`): keep its record, check the triggers, write
    /// a dump that is due.
    pub fn observe(
        &mut self,
        now: Instant,
        window: Duration,
        seq: u64,
        line: String,
        sections: &Sections,
    ) {
        self.last_seq = seq;
        self.bytes += line.len() as u64 + 1;
        self.kept.push_back(Kept {
            at: now,
            window,
            line,
        });
        self.evict(now);
        let fired: Vec<(String, String)> = self
            .config
            .triggers
            .iter()
            .filter_map(|t| t.fires(sections).map(|why| (t.to_string(), why)))
            .collect();
        for (what, why) in fired {
            self.request(now, what, why);
        }
        if self.pending.as_ref().is_some_and(|p| now >= p.due) {
            self.dump();
        }
    }

    /// A trigger (also SIGUSR2 or the live view's key): a dump after `--dump-after`, unless
    /// one is already coming or the last was less than `--dump-every` ago (then counted).
    pub fn request(&mut self, now: Instant, what: String, why: String) {
        let too_soon = self
            .last_accepted
            .is_some_and(|t| now.duration_since(t) < self.config.every);
        if self.pending.is_some() || too_soon {
            self.suppressed += 1;
            self.suppressed_total += 1;
            return;
        }
        self.last_accepted = Some(now);
        self.pending = Some(Pending {
            at: now,
            due: now + self.config.after,
            what,
            why,
            seq: self.last_seq,
            suppressed: std::mem::take(&mut self.suppressed),
        });
    }

    /// At the end of the run: a dump still waiting is written with what there is.
    pub fn finish(&mut self) {
        if self.pending.is_some() {
            self.dump();
        }
        eprintln!(
            "lavtrace: flight recorder: {} dump(s) written, {} trigger(s) suppressed by \
             --dump-every",
            self.written, self.suppressed_total
        );
    }

    fn evict(&mut self, now: Instant) {
        // While a dump is coming, its window (keep before the trigger) stays.
        let from = match &self.pending {
            Some(p) => p.at.checked_sub(self.config.keep),
            None => now.checked_sub(self.config.keep),
        };
        while let Some(front) = self.kept.front() {
            let old = from.is_some_and(|f| front.at < f);
            if !old && self.bytes <= self.config.max_bytes {
                break;
            }
            self.bytes -= front.line.len() as u64 + 1;
            self.kept.pop_front();
        }
    }

    fn dump(&mut self) {
        let Some(p) = self.pending.take() else { return };
        match self.write(&p) {
            Ok(path) => {
                self.written += 1;
                eprintln!("lavtrace: dump written: {} ({})", path.display(), p.why);
                if let Err(e) = rotate(&self.config.dir, self.config.files) {
                    eprintln!("lavtrace: removing old dumps: {e:#}");
                }
            }
            // The trace goes on: a full disk must not end it.
            Err(e) => eprintln!("lavtrace: writing a dump: {e:#}"),
        }
    }

    fn write(&self, p: &Pending) -> Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!("{PREFIX}{}-{}-{}", self.comm, self.pid, now.as_millis());
        let mut trace = String::with_capacity(self.bytes as usize);
        for k in &self.kept {
            trace.push_str(&k.line);
            trace.push('\n');
        }
        let trigger = serde_json::json!({
            "trigger": p.what,
            "reason": p.why,
            "seq": p.seq,
            "dump": self.written + 1,
            "after_ms": self.config.after.as_millis(),
            "keep_ms": self.config.keep.as_millis(),
            "suppressed_before": p.suppressed,
            "records": self.kept.len(),
        });
        let summary = bundle::summary::TraceSummary::parse(&trace);
        let title = format!("{} (pid {}): {}", self.comm, self.pid, p.why);
        let mut files = vec![
            ("trace.json", trace.into_bytes()),
            ("trigger.json", format!("{trigger:#}\n").into_bytes()),
            (
                "resources.txt",
                bundle::resources::Resources::of(self.pid)
                    .text()
                    .into_bytes(),
            ),
        ];
        match bundle::html::render(&title, "flight recorder dump", &summary) {
            Ok(html) => files.push(("report.html", html.into_bytes())),
            Err(e) => files.push(("report.html.txt", format!("{e:#}\n").into_bytes())),
        }
        std::fs::create_dir_all(&self.config.dir)
            .with_context(|| format!("creating {}", self.config.dir.display()))?;
        let out = self.config.dir.join(format!("{name}.tar.gz"));
        let partial = self.config.dir.join(format!(".{name}.partial"));
        let result = write_tar(&partial, &name, now.as_secs(), &files)
            .and_then(|()| std::fs::rename(&partial, &out).context("renaming"));
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result.with_context(|| format!("writing {}", out.display()))?;
        Ok(out)
    }
}

const PREFIX: &str = "lavtrace-dump-";

fn write_tar(path: &Path, top: &str, mtime: u64, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        tar.append_data(&mut header, format!("{top}/{name}"), bytes.as_slice())?;
    }
    tar.into_inner()?.finish()?.flush()?;
    Ok(())
}

/// Keeps the newest `keep` dumps in `dir` (by modification time), as logrotate does.
fn rotate(dir: &Path, keep: usize) -> Result<()> {
    let mut dumps: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".tar.gz"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dumps.sort();
    let excess = dumps.len().saturating_sub(keep);
    for (_, path) in dumps.into_iter().take(excess) {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// `--keep-bytes`: a count with an optional K/M/G (binary) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let mult: u64 = match t[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (examples: 512K, 64M, 1G)")),
    };
    let n: u64 = digits.parse().map_err(|e| format!("{e}"))?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| "must be more than 0 and fit in 64 bits".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keep_ms: u64, max_bytes: u64, every_ms: u64) -> Config {
        Config {
            keep: Duration::from_millis(keep_ms),
            max_bytes,
            triggers: Vec::new(),
            after: Duration::ZERO,
            every: Duration::from_millis(every_ms),
            files: 5,
            dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn the_window_is_bounded_by_time_and_bytes() {
        let t0 = Instant::now();
        let mut r = Recorder::new(config(1000, 1 << 20, 0), 1, "x");
        for i in 0..10u64 {
            r.kept.push_back(Kept {
                at: t0 + Duration::from_millis(i * 200),
                window: Duration::from_millis(200),
                line: "0123456789".into(),
            });
            r.bytes += 11;
            r.evict(t0 + Duration::from_millis(i * 200));
        }
        // t = 1800ms: the records at 800..=1800 ms are within 1 s.
        assert_eq!(r.kept.len(), 6);
        assert_eq!(r.bytes, 66);
        // Records at 800..=1800 ms, each the 200 ms before it: 600 ms to 1.8 s.
        assert_eq!(
            r.describe(),
            "flight recorder: 6 intervals, 1s 200ms of 1s, 66B of 1.0MiB kept"
        );
        r.config.max_bytes = 30;
        r.evict(t0 + Duration::from_millis(1800));
        assert_eq!(r.kept.len(), 2);
        r.written = 1;
        assert_eq!(
            r.describe(),
            "flight recorder: 2 intervals, 400ms of 1s, 22B of 30B kept; 1 dump"
        );
    }

    #[test]
    fn triggers_inside_dump_every_are_counted() {
        let t0 = Instant::now();
        let mut r = Recorder::new(config(1000, 1 << 20, 1000), 1, "x");
        r.request(t0, "a".into(), "a".into());
        assert!(r.pending.is_some());
        r.pending = None;
        r.request(t0 + Duration::from_millis(500), "b".into(), "b".into());
        assert!(r.pending.is_none());
        r.request(t0 + Duration::from_millis(1100), "c".into(), "c".into());
        assert_eq!(r.pending.as_ref().map(|p| p.suppressed), Some(1));
    }

    #[test]
    fn byte_caps_parse() {
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1T").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
