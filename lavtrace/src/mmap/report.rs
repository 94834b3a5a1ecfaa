//! The `mmap` section as JSON and as text: calls and bytes per syscall with rates, per-kind
//! and per-file breakdowns, and the live mapping count against `vm.max_map_count`.

use crate::printable::printable;
use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use serde::Serialize;

use super::Counters;
use crate::{
    storage::{lavinmq, maps::ANONYMOUS, nr},
    units::bytes,
};

/// Warn when the target holds this share of `vm.max_map_count`: past the limit every new
/// mapping fails (LavinMQ maps one per segment, and its guide names this as a cause of
/// refused connections).
pub const WARN_RATIO: f64 = 0.8;

#[derive(Debug, Clone, Serialize)]
pub struct SyscallRow {
    pub syscall: &'static str,
    pub count: u64,
    pub errors: u64,
    /// mmap/munmap/madvise: the lengths; mremap: the new lengths; brk: how far it moved.
    pub bytes: u64,
    pub calls_per_s: f64,
    pub bytes_per_s: f64,
    /// madvise only: calls per advice (`MADV_DONTNEED`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    pub path: String,
    pub kind: lavinmq::Kind,
    pub mmaps: u64,
    pub munmaps: u64,
    pub mremaps: u64,
    pub madvises: u64,
    /// Bytes mapped (mmap lengths, mremap growth).
    pub bytes: u64,
    pub bytes_unmapped: u64,
    /// The LavinMQ queue of the file; null outside a queue dir.
    pub queue: Option<crate::storage::naming::QueueRef>,
    #[serde(skip)]
    pub display: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindRow {
    pub kind: lavinmq::Kind,
    pub files: u64,
    pub mmaps: u64,
    pub munmaps: u64,
    pub mremaps: u64,
    pub madvises: u64,
    pub bytes: u64,
    pub bytes_unmapped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MmapSection {
    pub syscalls: Vec<SyscallRow>,
    /// By kind of file: segment, ack file, anonymous, other files...
    pub kinds: Vec<KindRow>,
    pub files: Vec<FileRow>,
    /// Mappings the target holds at the end of the window (lines of /proc/PID/maps).
    pub live_mappings: Option<u64>,
    pub max_map_count: Option<u64>,
    /// `live_mappings` ≥ `WARN_RATIO` × `max_map_count`.
    pub map_count_warning: bool,
    /// `--per-thread`: calls per thread and syscall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<Vec<ThreadRow>>,
}

/// One syscall of one thread (`--per-thread`).
#[derive(Debug, Clone, Serialize)]
pub struct ThreadRow {
    pub tid: u32,
    /// Null for a thread that exited before lavtrace saw it.
    pub thread: Option<String>,
    pub syscall: &'static str,
    pub count: u64,
    pub errors: u64,
    pub bytes: u64,
}

/// Per-thread rows, most calls first; None without `--per-thread`.
pub fn thread_rows(
    c: &Counters,
    names: Option<&mut crate::threads::ThreadNames>,
) -> Option<Vec<ThreadRow>> {
    let names = names?;
    let mut rows: Vec<ThreadRow> = c
        .threads
        .iter()
        .map(|(&(tid, n), &[count, errors, bytes])| ThreadRow {
            tid,
            thread: names.name(tid).map(|s| s.to_string()),
            syscall: syscall_name(n),
            count,
            errors,
            bytes,
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.tid.cmp(&b.tid)));
    Some(rows)
}

/// Kind of each path of the target `pid`, worked out once (it looks at the disk for the data
/// dir).
pub struct KindCache {
    pid: u32,
    kinds: HashMap<Arc<str>, lavinmq::Kind>,
}

impl KindCache {
    pub fn new(pid: u32) -> KindCache {
        KindCache {
            pid,
            kinds: HashMap::new(),
        }
    }

    fn kind(&mut self, path: &Arc<str>) -> lavinmq::Kind {
        let pid = self.pid;
        *self.kinds.entry(path.clone()).or_insert_with(|| {
            if &**path == ANONYMOUS || !path.starts_with('/') {
                lavinmq::Kind::Anonymous
            } else {
                lavinmq::classify_on_disk(path, pid)
            }
        })
    }
}

/// Its calls are only these (`State::on_record`), all named on every architecture.
pub fn syscall_name(n: u32) -> &'static str {
    crate::names::syscall(n).unwrap_or("?")
}

fn advice_name(advice: u64) -> String {
    let name = match advice as i32 {
        libc::MADV_NORMAL => "MADV_NORMAL",
        libc::MADV_RANDOM => "MADV_RANDOM",
        libc::MADV_SEQUENTIAL => "MADV_SEQUENTIAL",
        libc::MADV_WILLNEED => "MADV_WILLNEED",
        libc::MADV_DONTNEED => "MADV_DONTNEED",
        libc::MADV_FREE => "MADV_FREE",
        libc::MADV_REMOVE => "MADV_REMOVE",
        libc::MADV_DONTFORK => "MADV_DONTFORK",
        libc::MADV_DOFORK => "MADV_DOFORK",
        libc::MADV_MERGEABLE => "MADV_MERGEABLE",
        libc::MADV_UNMERGEABLE => "MADV_UNMERGEABLE",
        libc::MADV_HUGEPAGE => "MADV_HUGEPAGE",
        libc::MADV_NOHUGEPAGE => "MADV_NOHUGEPAGE",
        libc::MADV_DONTDUMP => "MADV_DONTDUMP",
        libc::MADV_DODUMP => "MADV_DODUMP",
        libc::MADV_WIPEONFORK => "MADV_WIPEONFORK",
        libc::MADV_KEEPONFORK => "MADV_KEEPONFORK",
        libc::MADV_COLD => "MADV_COLD",
        libc::MADV_PAGEOUT => "MADV_PAGEOUT",
        libc::MADV_HWPOISON => "MADV_HWPOISON",
        _ => return format!("advice_{advice}"),
    };
    name.to_string()
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 100.0).round() / 100.0
    } else {
        0.0
    }
}

pub(super) fn section(
    c: &Counters,
    secs: f64,
    live: Option<u64>,
    max_map_count: Option<u64>,
    kinds: &mut KindCache,
    names: &mut crate::storage::naming::Namer,
) -> MmapSection {
    let syscalls = c
        .syscalls
        .iter()
        .map(|(&n, s)| SyscallRow {
            syscall: syscall_name(n),
            count: s.count,
            errors: s.errors,
            bytes: s.bytes,
            calls_per_s: rate(s.count, secs),
            bytes_per_s: rate(s.bytes, secs),
            advice: (n == nr::MADVISE).then(|| {
                s.advice
                    .iter()
                    .map(|(&a, &n)| (advice_name(a), n))
                    .collect()
            }),
        })
        .collect();
    let mut files: Vec<FileRow> = c
        .files
        .iter()
        .map(|(path, f)| {
            let naming = names.name(path);
            FileRow {
                path: path.to_string(),
                kind: kinds.kind(path),
                mmaps: f.mmaps,
                munmaps: f.munmaps,
                mremaps: f.mremaps,
                madvises: f.madvises,
                bytes: f.bytes,
                bytes_unmapped: f.bytes_unmapped,
                queue: naming.queue.clone(),
                display: naming.display.clone(),
            }
        })
        .collect();
    files.sort_by(|a, b| {
        let calls = |r: &FileRow| r.mmaps + r.munmaps + r.mremaps + r.madvises;
        calls(b).cmp(&calls(a)).then_with(|| a.path.cmp(&b.path))
    });
    let mut by_kind: std::collections::BTreeMap<lavinmq::Kind, KindRow> = Default::default();
    for f in &files {
        let k = by_kind.entry(f.kind).or_insert(KindRow {
            kind: f.kind,
            files: 0,
            mmaps: 0,
            munmaps: 0,
            mremaps: 0,
            madvises: 0,
            bytes: 0,
            bytes_unmapped: 0,
        });
        k.files += 1;
        k.mmaps += f.mmaps;
        k.munmaps += f.munmaps;
        k.mremaps += f.mremaps;
        k.madvises += f.madvises;
        // Byte sums saturate: the per-file figures already do (lengths are any u64).
        k.bytes = k.bytes.saturating_add(f.bytes);
        k.bytes_unmapped = k.bytes_unmapped.saturating_add(f.bytes_unmapped);
    }
    let map_count_warning = matches!((live, max_map_count),
        (Some(l), Some(m)) if m > 0 && l as f64 >= WARN_RATIO * m as f64);
    MmapSection {
        syscalls,
        kinds: by_kind.into_values().collect(),
        files,
        live_mappings: live,
        max_map_count,
        map_count_warning,
        threads: None,
    }
}

pub fn write_text(out: &mut String, s: &MmapSection, top: usize) {
    if s.syscalls.is_empty() {
        out.push_str("\nmmap: no mapping calls\n");
    } else {
        let _ = writeln!(
            out,
            "\n{:<10} {:>8} {:>5} {:>10} {:>9} {:>11}",
            "MAP CALL", "COUNT", "ERR", "BYTES", "CALLS/s", "BYTES/s"
        );
        for r in &s.syscalls {
            let mut advice = String::new();
            if let Some(a) = &r.advice {
                let list: Vec<String> = a.iter().map(|(k, v)| format!("{k} {v}")).collect();
                advice = format!("  {}", list.join(", "));
            }
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>5} {:>10} {:>9.1} {:>9}/s{advice}",
                r.syscall,
                r.count,
                r.errors,
                bytes(r.bytes),
                r.calls_per_s,
                bytes(r.bytes_per_s as u64)
            );
        }
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>6} {:>7} {:>7} {:>8} {:>10} {:>10}",
            "BY KIND", "FILES", "MMAPS", "MUNMAPS", "MREMAPS", "MADVISES", "MAPPED", "UNMAPPED"
        );
        for k in &s.kinds {
            let _ = writeln!(
                out,
                "{:<12} {:>5} {:>6} {:>7} {:>7} {:>8} {:>10} {:>10}",
                k.kind.name(),
                k.files,
                k.mmaps,
                k.munmaps,
                k.mremaps,
                k.madvises,
                bytes(k.bytes),
                bytes(k.bytes_unmapped)
            );
        }
        let _ = writeln!(
            out,
            "{:<6} {:>7} {:>7} {:>8} {:>10} {:>10}  FILE",
            "MMAPS", "MUNMAPS", "MREMAPS", "MADVISES", "MAPPED", "UNMAPPED"
        );
        for f in s.files.iter().take(top) {
            let _ = writeln!(
                out,
                "{:>6} {:>7} {:>7} {:>8} {:>10} {:>10}  {} ({})",
                f.mmaps,
                f.munmaps,
                f.mremaps,
                f.madvises,
                bytes(f.bytes),
                bytes(f.bytes_unmapped),
                f.display,
                f.kind.name()
            );
        }
        if s.files.len() > top {
            let _ = writeln!(out, "({} more files not shown; --top)", s.files.len() - top);
        }
    }
    if let Some(threads) = &s.threads {
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:<8} {:>7} {:>6} {:>10}",
            "THREAD", "TID", "MAPCALL", "COUNT", "ERR", "BYTES"
        );
        for t in threads.iter().take(top) {
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:<8} {:>7} {:>6} {:>10}",
                printable(t.thread.as_deref().unwrap_or("?")),
                t.tid,
                t.syscall,
                t.count,
                t.errors,
                bytes(t.bytes)
            );
        }
    }
    write_map_count(out, s);
}

fn write_map_count(out: &mut String, s: &MmapSection) {
    let (Some(live), Some(max)) = (s.live_mappings, s.max_map_count) else {
        return;
    };
    let pct = if max > 0 {
        live as f64 * 100.0 / max as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "mappings: {live} live of vm.max_map_count {max} ({pct:.1}%)"
    );
    if s.map_count_warning {
        let _ = writeln!(
            out,
            "WARNING: {live} mappings is {pct:.0}% of vm.max_map_count ({max}): at the limit new \
             segments cannot be mapped and connections are refused; raise it \
             (sysctl -w vm.max_map_count={})",
            (max * 4).max(262_144)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::{FileCount, SysCount};

    fn counters() -> Counters {
        let mut c = Counters::default();
        c.syscalls.insert(
            nr::MMAP,
            SysCount {
                count: 2,
                errors: 0,
                bytes: 16 << 20,
                advice: Default::default(),
            },
        );
        c.files.insert(
            Arc::from("/d/42099b4af021e53fd8fd4e056c2568d7c2e3ffa8/8c6e326cc8ba989509be7aa0485a4a523f4aaa47/msgs.0000000001"),
            FileCount {
                mmaps: 1,
                bytes: 8 << 20,
                ..FileCount::default()
            },
        );
        c.files.insert(
            Arc::from(ANONYMOUS),
            FileCount {
                mmaps: 1,
                bytes: 8 << 20,
                ..FileCount::default()
            },
        );
        c
    }

    #[test]
    fn kinds_rates_and_bytes() {
        let s = section(
            &counters(),
            2.0,
            Some(100),
            Some(65530),
            &mut KindCache::new(std::process::id()),
            &mut crate::storage::naming::Namer::with(None),
        );
        assert_eq!(s.syscalls[0].calls_per_s, 1.0);
        assert_eq!(s.syscalls[0].bytes_per_s, (8 << 20) as f64);
        let kinds: Vec<_> = s.kinds.iter().map(|k| (k.kind, k.mmaps)).collect();
        assert_eq!(
            kinds,
            vec![(lavinmq::Kind::Segment, 1), (lavinmq::Kind::Anonymous, 1)]
        );
        assert!(!s.map_count_warning);
    }

    #[test]
    fn map_count_warning_above_the_threshold() {
        let s = section(
            &counters(),
            1.0,
            Some(60_000),
            Some(65_530),
            &mut KindCache::new(std::process::id()),
            &mut crate::storage::naming::Namer::with(None),
        );
        assert!(s.map_count_warning);
        let mut out = String::new();
        write_text(&mut out, &s, 10);
        assert!(
            out.contains("mappings: 60000 live of vm.max_map_count 65530 (91.6%)"),
            "{out}"
        );
        assert!(
            out.contains("WARNING: 60000 mappings is 92% of vm.max_map_count"),
            "{out}"
        );
        assert!(
            out.contains("vhost:42099b4a/queue:8c6e326c/msgs.0000000001 (segment)"),
            "{out}"
        );
        let quiet = section(
            &counters(),
            1.0,
            Some(100),
            Some(65_530),
            &mut KindCache::new(std::process::id()),
            &mut crate::storage::naming::Namer::with(None),
        );
        let mut out = String::new();
        write_text(&mut out, &quiet, 10);
        assert!(!out.contains("WARNING"), "{out}");
    }
}
