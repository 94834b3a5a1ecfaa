//! The limits a LavinMQ broker runs into, each next to its use: open fds against the `open
//! files` soft limit, mappings against `vm.max_map_count`, and the data dir's filesystem.
//! LavinMQ's troubleshooting guide lists fd exhaustion and a low `vm.max_map_count` (one
//! mapping per segment and per connection) as classic outages; a full disk stops publishes.
//!
//! Every figure is an Option: a process that is gone, or a /proc file that does not parse,
//! leaves it unknown rather than wrong.

use std::{collections::HashSet, ffi::CString, fs, os::unix::fs::MetadataExt as _, path::Path};

use serde::Serialize;

use crate::{printable::printable, storage::maps, units};

/// Warn when a figure reaches this share of its limit (LavinMQ's guide: act before the limit).
pub const WARN_PERCENT: u64 = 80;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `Max open files` soft limit of the target; None when unlimited or unknown.
    pub fd_limit: Option<u64>,
    pub fds_open: Option<u64>,
    pub max_map_count: Option<u64>,
    pub mappings: Option<u64>,
    /// Free to unprivileged users (what the broker, not root, can still write).
    pub disk_free_bytes: Option<u64>,
    pub disk_size_bytes: Option<u64>,
    /// In use (blocks not free). With `disk_free_bytes` it gives the use share as df's `Use%`
    /// does: blocks reserved for root, or lost to the filesystem's own structures, are in
    /// neither.
    pub disk_used_bytes: Option<u64>,
    /// Disk space the data dir takes (allocated blocks, as `du` counts: segments are sparse).
    pub data_dir_bytes: Option<u64>,
}

/// A figure at or past `WARN_PERCENT` of its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Warning {
    Fds,
    Mappings,
    Disk,
}

impl Limits {
    /// The limits of process `pid`, with `data_dir` as it sees it (None: no disk figures).
    pub fn of(pid: u32, data_dir: Option<&str>) -> Limits {
        let disk = data_dir.map(|d| format!("/proc/{pid}/root{d}"));
        let fs = disk.as_deref().and_then(|d| filesystem(Path::new(d)));
        Limits {
            fd_limit: fd_soft_limit(pid),
            fds_open: fds_open(pid),
            max_map_count: maps::max_map_count(),
            mappings: maps::live_count(pid),
            disk_free_bytes: fs.map(|f| f.0),
            disk_size_bytes: fs.map(|f| f.1),
            disk_used_bytes: fs.map(|f| f.2),
            data_dir_bytes: disk.as_deref().map(|d| allocated_bytes(Path::new(d))),
        }
    }

    /// What the broker can fill: used plus free to unprivileged writers (df's `Use%` base).
    pub fn disk_usable(&self) -> Option<u64> {
        Some(self.disk_used_bytes?.saturating_add(self.disk_free_bytes?))
    }

    /// The figures at or past `WARN_PERCENT` of their limit.
    pub fn warnings(&self) -> Vec<Warning> {
        [
            (Warning::Fds, self.fds_open, self.fd_limit),
            (Warning::Mappings, self.mappings, self.max_map_count),
            (Warning::Disk, self.disk_used_bytes, self.disk_usable()),
        ]
        .into_iter()
        .filter(|&(_, used, limit)| near(used, limit))
        .map(|(w, _, _)| w)
        .collect()
    }
}

/// The limits of one target as every record shows them (`limits` in JSON, the LIMITS line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub limits: Limits,
    /// The data dir the disk figures are of, as the target sees it (None: not found).
    pub data_dir: Option<String>,
    pub warnings: Vec<Warning>,
}

/// Reads a target's limits each interval. Everything comes from /proc and statvfs at the
/// moment of reading, the ground truth an operator would check by hand (ls /proc/PID/fd,
/// /proc/PID/maps, df, du), rather than from lavtrace's own fd and mapping models, which only
/// see what happened after attach.
#[derive(Debug)]
pub struct Watch {
    pid: u32,
    data_dir: Option<String>,
    /// The last reading of a live target: what a summary after its exit shows.
    last: Option<Report>,
}

impl Watch {
    pub fn new(pid: u32) -> Watch {
        Watch {
            pid,
            data_dir: super::data_dir::find(pid).map(|(d, _)| d),
            last: None,
        }
    }

    pub fn read(&mut self) -> Report {
        // A broker that had not opened its data dir yet at attach may have done so since.
        if self.data_dir.is_none() {
            self.data_dir = super::data_dir::find(self.pid).map(|(d, _)| d);
        }
        let limits = Limits::of(self.pid, self.data_dir.as_deref());
        // A live process always has mappings; an exited one (a zombie too) has none, and an
        // empty fd dir that means nothing.
        if limits.mappings.is_none() {
            return self.last.clone().unwrap_or_else(|| Report {
                limits: Limits {
                    max_map_count: limits.max_map_count,
                    ..Limits::default()
                },
                ..Report::default()
            });
        }
        let report = Report {
            warnings: limits.warnings(),
            limits,
            data_dir: self.data_dir.clone(),
        };
        self.last = Some(report.clone());
        report
    }
}

impl Report {
    /// The LIMITS line, then one WARNING line per figure at or past WARN_PERCENT.
    /// `connections`: the target's open TCP connections, when the tcp family knows them
    /// (each one is an fd: they count against the same limit).
    pub fn text(&self, connections: Option<usize>) -> String {
        let l = &self.limits;
        let of = |used: Option<u64>, limit: Option<u64>| match (used, limit) {
            (Some(u), Some(m)) if m > 0 => format!("{u}/{m} ({} %)", percent(u, m)),
            (Some(u), _) => format!("{u} (no limit)"),
            (None, _) => "unknown".to_string(),
        };
        let mut fds = format!("fds {}", of(l.fds_open, l.fd_limit));
        if let Some(n) = connections {
            fds.push_str(&format!(", {n} TCP"));
        }
        let mut parts = vec![fds, format!("mappings {}", of(l.mappings, l.max_map_count))];
        match (&self.data_dir, l.disk_free_bytes, l.disk_size_bytes) {
            (Some(dir), Some(free), Some(size)) => parts.push(format!(
                "disk {} free of {} ({} % used) · data dir {} {}",
                units::bytes(free),
                units::bytes(size),
                percent(l.disk_used_bytes.unwrap_or(0), l.disk_usable().unwrap_or(0)),
                printable(dir),
                l.data_dir_bytes
                    .map_or_else(|| "?".to_string(), units::bytes),
            )),
            (Some(dir), ..) => parts.push(format!("data dir {} (disk unreadable)", printable(dir))),
            (None, ..) => parts.push("data dir not found".to_string()),
        }
        let mut out = format!("LIMITS  {}\n", parts.join(" · "));
        for w in &self.warnings {
            out.push_str(&format!("WARNING {}\n", self.warning(*w)));
        }
        out
    }

    /// One warning, with what to do about it.
    pub fn warning(&self, w: Warning) -> String {
        let l = &self.limits;
        let pair = |u: Option<u64>, m: Option<u64>| {
            let (u, m) = (u.unwrap_or(0), m.unwrap_or(0));
            format!("{u} of {m}, {} %", percent(u, m))
        };
        match w {
            Warning::Fds => format!(
                "open fds near the target's open-files limit ({}): raise LimitNOFILE",
                pair(l.fds_open, l.fd_limit)
            ),
            Warning::Mappings => format!(
                "mappings near vm.max_map_count ({}): raise vm.max_map_count",
                pair(l.mappings, l.max_map_count)
            ),
            Warning::Disk => format!(
                "the data dir's disk is {} % full ({} free)",
                percent(l.disk_used_bytes.unwrap_or(0), l.disk_usable().unwrap_or(0)),
                units::bytes(l.disk_free_bytes.unwrap_or(0))
            ),
        }
    }
}

/// Whole percent, rounded down (79.9 % is not yet 80 %), 0 for a zero limit.
fn percent(used: u64, limit: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    (u128::from(used) * 100 / u128::from(limit)) as u64
}

/// `used` is at least WARN_PERCENT of a known, non-zero `limit`.
pub fn near(used: Option<u64>, limit: Option<u64>) -> bool {
    match (used, limit) {
        (Some(used), Some(limit)) if limit > 0 => {
            u128::from(used) * 100 >= u128::from(limit) * u128::from(WARN_PERCENT)
        }
        _ => false,
    }
}

/// The soft `Max open files` of /proc/PID/limits.
pub fn fd_soft_limit(pid: u32) -> Option<u64> {
    parse_fd_soft_limit(&fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

/// `Max open files            1024                 524288               files`
fn parse_fd_soft_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    // "unlimited" is no limit to warn about.
    rest.split_whitespace().next()?.parse().ok()
}

/// Entries of /proc/PID/fd.
pub fn fds_open(pid: u32) -> Option<u64> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.filter(|e| e.is_ok()).count() as u64)
}

/// (free to unprivileged users, size, used) in bytes of the filesystem holding `path`.
fn filesystem(path: &Path) -> Option<(u64, u64, u64)> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct, which is plain data and fully written on success.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a pointer to the struct above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize;
    Some((
        st.f_bavail.saturating_mul(unit),
        st.f_blocks.saturating_mul(unit),
        st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(unit),
    ))
}

/// Allocated bytes below `dir` (itself included), hard links once, symlinks not followed, not
/// crossing into other filesystems: what `du -sx --block-size=1` reports. Entries that vanish
/// during the walk (a segment deleted meanwhile) are skipped.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(dir) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![(dir.to_path_buf(), top)];
    while let Some((path, meta)) = stack.pop() {
        if meta.dev() != dev {
            continue;
        }
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        // st_blocks is in 512-byte units whatever the filesystem's block size.
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            for entry in fs::read_dir(&path).into_iter().flatten().flatten() {
                if let Ok(m) = entry.metadata() {
                    stack.push((entry.path(), m));
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn fd_limit_is_the_soft_rlimit() {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let want = (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur);
        assert_eq!(fd_soft_limit(me()), want);
    }

    #[test]
    fn limits_lines_parse() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_fd_soft_limit(text), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files";
        assert_eq!(parse_fd_soft_limit(unlimited), None);
        assert_eq!(parse_fd_soft_limit("garbage"), None);
    }

    #[test]
    fn fds_open_grows_by_exactly_the_files_opened() {
        // Other tests open files on their threads: retry until a quiet moment shows the
        // exact difference (each attempt is independent ground truth).
        let dir = tempfile::tempdir().unwrap();
        let exact = (0..50).any(|_| {
            let before = fds_open(me()).unwrap();
            let files: Vec<fs::File> = (0..7)
                .map(|i| fs::File::create(dir.path().join(i.to_string())).unwrap())
                .collect();
            let during = fds_open(me()).unwrap();
            drop(files);
            let after = fds_open(me()).unwrap();
            during == before + 7 && after == before
        });
        assert!(exact, "fds_open never moved by exactly 7");
    }

    #[test]
    fn mappings_and_max_map_count_come_from_proc() {
        let l = Limits::of(me(), None);
        let max: u64 = fs::read_to_string("/proc/sys/vm/max_map_count")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(l.max_map_count, Some(max));
        assert!(l.mappings.unwrap() > 0);
        assert_eq!(l.disk_free_bytes, None);
        assert_eq!(l.data_dir_bytes, None);
    }

    #[test]
    fn disk_figures_match_statvfs_and_du() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("q")).unwrap();
        fs::write(
            dir.path().join("q").join("msgs.0000000001"),
            vec![7u8; 300_000],
        )
        .unwrap();
        // A sparse file: 8 MiB long, nothing allocated.
        fs::File::create(dir.path().join("q").join("msgs.0000000002"))
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        fs::hard_link(
            dir.path().join("q").join("msgs.0000000001"),
            dir.path().join("link"),
        )
        .unwrap();
        let d = dir.path().to_str().unwrap();
        let l = Limits::of(me(), Some(d));
        let du = std::process::Command::new("du")
            .args(["-sx", "--block-size=1", d])
            .output()
            .unwrap();
        let du: u64 = String::from_utf8(du.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(l.data_dir_bytes, Some(du));
        assert!((300_000..8 << 20).contains(&du), "{du}");
        let df = std::process::Command::new("df")
            .args(["--block-size=1", "--output=size", d])
            .output()
            .unwrap();
        let size: u64 = String::from_utf8(df.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(l.disk_size_bytes, Some(size));
        assert!(l.disk_free_bytes.unwrap() <= size);
        // df's Use%: used / (used + available), rounded up.
        let df = std::process::Command::new("df")
            .args(["--block-size=1", "--output=used,avail,pcent", d])
            .output()
            .unwrap();
        let df = String::from_utf8(df.stdout).unwrap();
        let f: Vec<&str> = df.lines().nth(1).unwrap().split_whitespace().collect();
        let (used, avail): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        if (used, avail) == (l.disk_used_bytes.unwrap(), l.disk_free_bytes.unwrap()) {
            let pcent: u64 = f[2].trim_end_matches('%').parse().unwrap();
            let ours = l.disk_used_bytes.unwrap() * 100 / l.disk_usable().unwrap();
            assert!(pcent == ours || pcent == ours + 1, "df {pcent}% vs {ours}%");
        }
    }

    #[test]
    fn warnings_start_at_eighty_percent() {
        assert!(!near(Some(79), Some(100)));
        assert!(near(Some(80), Some(100)));
        assert!(!near(Some(80), None));
        assert!(!near(Some(5), Some(0)));
        let l = Limits {
            fd_limit: Some(1024),
            fds_open: Some(820),
            max_map_count: Some(65530),
            mappings: Some(100),
            disk_free_bytes: Some(10),
            disk_size_bytes: Some(120),
            disk_used_bytes: Some(90),
            data_dir_bytes: Some(1),
        };
        assert_eq!(l.warnings(), vec![Warning::Fds, Warning::Disk]);
        let json = serde_json::to_value(&l).unwrap();
        for k in [
            "fd_limit",
            "fds_open",
            "max_map_count",
            "mappings",
            "disk_free_bytes",
            "disk_size_bytes",
            "disk_used_bytes",
            "data_dir_bytes",
        ] {
            assert!(json[k].is_u64(), "{k}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::fuzz::config(300))]

        #[test]
        fn any_limits_text_gives_a_limit_or_none(
            text in crate::fuzz::proc_text(),
            value in prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                Just("unlimited".to_string()),
                crate::fuzz::proc_text(),
            ],
        ) {
            let _ = parse_fd_soft_limit(&text);
            let line = format!("{text}\nMax open files {value} 4096 files\n");
            if let Ok(n) = value.trim().parse::<u64>() {
                prop_assert_eq!(parse_fd_soft_limit(&line), Some(n));
            }
        }
    }
}
