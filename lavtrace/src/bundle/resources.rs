//! resources.txt: the troubleshooting guide's resource checks, each next to its limit, read
//! from /proc at one moment. Lines are `name: value` so that a person and a test read the same.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use crate::{
    lavinmq::{data_dir, limits, limits::Limits, names::Names},
    tcp::{procfs, table::state_name},
    units,
};

/// Rows in the largest-queues and largest-segments tables.
const TOP: usize = 10;

/// (label, allocated bytes), listed largest first.
pub type SizedEntry = (String, u64);

#[derive(Debug, Default)]
pub struct Resources {
    pub data_dir: Option<String>,
    pub limits: Limits,
    pub vm_rss_kib: Option<u64>,
    pub vm_size_kib: Option<u64>,
    /// Mapping kind → (count, bytes).
    pub mappings_by_kind: BTreeMap<&'static str, (u64, u64)>,
    pub listening: Vec<String>,
    pub connections_by_state: BTreeMap<String, u64>,
    pub queues: Vec<SizedEntry>,
    pub segments: Vec<SizedEntry>,
}

impl Resources {
    pub fn of(pid: u32) -> Resources {
        let data_dir = data_dir::find(pid).map(|(d, _)| d);
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mut r = Resources {
            limits: Limits::of(pid, data_dir.as_deref()),
            vm_rss_kib: status_kib(&status, "VmRSS:"),
            vm_size_kib: status_kib(&status, "VmSize:"),
            mappings_by_kind: mappings_by_kind(pid),
            ..Resources::default()
        };
        for s in procfs::target_sockets(pid) {
            if s.state == lavtrace_common::tcp::state::LISTEN {
                let name = crate::tcp::table::service(s.local.port()).unwrap_or("");
                r.listening
                    .push(format!("{} {name}", s.local).trim_end().to_string());
            } else {
                *r.connections_by_state
                    .entry(state_name(s.state))
                    .or_insert(0) += 1;
            }
        }
        r.listening.sort();
        r.listening.dedup();
        if let Some(d) = &data_dir {
            (r.queues, r.segments) = largest(pid, d);
        }
        r.data_dir = data_dir;
        r
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let opt = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |v| v.to_string());
        let l = &self.limits;
        let _ = writeln!(
            out,
            "data dir: {}",
            self.data_dir.as_deref().unwrap_or("not found")
        );
        let _ = writeln!(out, "disk free bytes: {}", opt(l.disk_free_bytes));
        let _ = writeln!(out, "disk size bytes: {}", opt(l.disk_size_bytes));
        let _ = writeln!(out, "data dir bytes: {}", opt(l.data_dir_bytes));
        let _ = writeln!(out, "VmRSS kB: {}", opt(self.vm_rss_kib));
        let _ = writeln!(out, "VmSize kB: {}", opt(self.vm_size_kib));
        let _ = writeln!(out, "fds open: {}", opt(l.fds_open));
        let _ = writeln!(out, "open files limit: {}", opt(l.fd_limit));
        let _ = writeln!(out, "mappings: {}", opt(l.mappings));
        let _ = writeln!(out, "max_map_count: {}", opt(l.max_map_count));
        for w in l.warnings() {
            let _ = writeln!(
                out,
                "warning: {w:?} at or past {}% of its limit",
                limits::WARN_PERCENT
            );
        }
        let _ = writeln!(out, "\n# mappings by kind (count, bytes)");
        for (kind, (n, bytes)) in &self.mappings_by_kind {
            let _ = writeln!(
                out,
                "mappings {kind}: {n} {bytes} ({})",
                units::bytes(*bytes)
            );
        }
        let _ = writeln!(out, "\n# TCP");
        for l in &self.listening {
            let _ = writeln!(out, "listening: {l}");
        }
        for (state, n) in &self.connections_by_state {
            let _ = writeln!(out, "connections {state}: {n}");
        }
        for (title, rows) in [
            ("largest queue directories", &self.queues),
            ("largest segment files", &self.segments),
        ] {
            let _ = writeln!(out, "\n# {title} (allocated bytes)");
            for (label, bytes) in rows {
                let _ = writeln!(out, "{bytes:>14} {:>10}  {label}", units::bytes(*bytes));
            }
        }
        out
    }
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// /proc/PID/maps by what each mapping is: shared file mappings are LavinMQ's segments.
fn mappings_by_kind(pid: u32) -> BTreeMap<&'static str, (u64, u64)> {
    kinds(&fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default())
}

fn kinds(text: &str) -> BTreeMap<&'static str, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        let name = f.nth(3).unwrap_or("");
        let kind = match name {
            "" => "anonymous",
            "[heap]" => "heap",
            n if n.starts_with("[stack") => "stack",
            n if n.starts_with('[') => "kernel",
            _ if perms.as_bytes().get(3) == Some(&b's') => "file shared",
            _ => "file private",
        };
        let entry = out.entry(kind).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += e.saturating_sub(s);
    }
    out
}

/// The largest queue dirs and segment files of data dir `dir` (as `pid` sees it), named.
fn largest(pid: u32, dir: &str) -> (Vec<SizedEntry>, Vec<SizedEntry>) {
    let names = Names::load_for_pid(pid, dir);
    let disk = format!("/proc/{pid}/root{dir}");
    let mut queues = Vec::new();
    let mut segments = Vec::new();
    let label = |path: &str| {
        names
            .resolve(path)
            .map_or_else(|| path.to_string(), |r| r.to_string())
    };
    for vhost in read_dirs(Path::new(&disk)) {
        for queue in read_dirs(&vhost) {
            let seen = seen_path(&disk, dir, &queue);
            queues.push((label(&seen), limits::allocated_bytes(&queue)));
            for file in fs::read_dir(&queue).into_iter().flatten().flatten() {
                let Ok(meta) = file.metadata() else { continue };
                if meta.is_file() && file.file_name().to_string_lossy().starts_with("msgs.") {
                    use std::os::unix::fs::MetadataExt as _;
                    let seen = seen_path(&disk, dir, &file.path());
                    segments.push((label(&seen), meta.blocks().saturating_mul(512)));
                }
            }
        }
    }
    for list in [&mut queues, &mut segments] {
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(TOP);
    }
    (queues, segments)
}

fn read_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// `path` under /proc/PID/root… as the target sees it.
fn seen_path(disk: &str, dir: &str, path: &Path) -> String {
    let p = path.to_string_lossy();
    format!("{dir}{}", p.strip_prefix(disk).unwrap_or(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_counted_by_kind() {
        let maps = "7f0000000000-7f0000800000 rw-s 00000000 08:01 12 /d/q/msgs.0000000001\n\
                    7f0000800000-7f0000801000 r--p 00000000 08:01 13 /usr/lib/libc.so.6\n\
                    55d000000000-55d000021000 rw-p 00000000 00:00 0  [heap]\n\
                    7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0  [stack]\n\
                    7f1000000000-7f1000002000 rw-p 00000000 00:00 0 \n\
                    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n\
                    garbage\n";
        let k = kinds(maps);
        assert_eq!(k["file shared"], (1, 8 << 20));
        assert_eq!(k["file private"], (1, 4096));
        assert_eq!(k["heap"], (1, 0x21000));
        assert_eq!(k["stack"], (1, 0x21000));
        assert_eq!(k["anonymous"], (1, 8192));
        assert_eq!(k["kernel"], (1, 4096));
        assert_eq!(k.len(), 6);
    }
}
