//! The `fsync` rows as JSON objects and as text: a table, then a log2 histogram per row like
//! bcc's `*dist` tools.

use crate::printable::printable;
use std::fmt::Write as _;

use lavtrace_common::syscalls::LATENCY_BUCKETS;
use serde::Serialize;

use super::{PathInfo, stats::Latency};
use crate::{
    storage::{lavinmq::Kind, nr},
    syscalls::stats::{bucket_lower, bucket_upper},
    units,
};

#[derive(Debug, Clone, Serialize)]
pub struct MountRef {
    pub point: String,
    pub fstype: String,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub lo_ns: u64,
    pub hi_ns: u64,
    pub count: u64,
}

/// One (syscall, file, flags) over one window.
#[derive(Debug, Clone, Serialize)]
pub struct FsyncRow {
    pub syscall: &'static str,
    /// The file (fd's path, the mapping's file for msync, "(all filesystems)" for sync).
    pub path: String,
    pub kind: Kind,
    /// The filesystem holding `path` (for syncfs: the one it flushed).
    pub mount: Option<MountRef>,
    /// msync (MS_ASYNC does no I/O, MS_SYNC does) and sync_file_range flags.
    pub flags: Option<String>,
    pub count: u64,
    pub errors: u64,
    /// Bytes in the ranges asked for (msync, sync_file_range).
    pub bytes: u64,
    pub total_ns: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Log2 buckets from the lowest to the highest non-empty one.
    pub histogram: Vec<Bucket>,
    /// `--per-thread`: the calling thread's id and name (null name: exited unseen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// The LavinMQ queue of the file; null outside a queue dir.
    pub queue: Option<crate::storage::naming::QueueRef>,
    #[serde(skip)]
    pub display: String,
}

/// The non-empty range of a latency's log2 buckets, as the JSON rows carry it (the gc
/// family's distributions too).
pub fn histogram(l: &Latency) -> Vec<Bucket> {
    if l.count == 0 {
        return Vec::new();
    }
    let first = l.log2.iter().position(|&n| n > 0).unwrap_or(0);
    let last = l.log2.iter().rposition(|&n| n > 0).unwrap_or(0);
    (first..=last)
        .map(|i| Bucket {
            lo_ns: bucket_lower(i),
            hi_ns: bucket_upper(i),
            count: l.log2[i],
        })
        .collect()
}

impl FsyncRow {
    pub fn new(nr: u32, path: &str, flags: Option<u64>, info: &PathInfo, l: &Latency) -> FsyncRow {
        let histogram = histogram(l);
        FsyncRow {
            syscall: syscall_name(nr),
            path: path.to_string(),
            kind: info.kind,
            mount: info.mount.clone(),
            flags: flags.map(|f| flag_names(nr, f)),
            count: l.count,
            errors: l.errors,
            bytes: l.bytes,
            total_ns: l.total_ns,
            avg_ns: l.total_ns.checked_div(l.count).unwrap_or(0),
            p50_ns: l.quantile(0.50),
            p90_ns: l.quantile(0.90),
            p99_ns: l.quantile(0.99),
            p999_ns: l.quantile(0.999),
            max_ns: l.max_ns,
            histogram,
            tid: None,
            thread: None,
            queue: info.queue.clone(),
            display: info.display.clone(),
        }
    }
}

/// Its calls are only these (`State::on_record`), all named on every architecture.
pub fn syscall_name(n: u32) -> &'static str {
    crate::names::syscall(n).unwrap_or("?")
}

/// `MS_SYNC|MS_INVALIDATE`, `SYNC_FILE_RANGE_WRITE`; unknown bits in hex.
pub fn flag_names(n: u32, flags: u64) -> String {
    let table: &[(u64, &str)] = match n {
        nr::MSYNC => &[
            (libc::MS_ASYNC as u64, "MS_ASYNC"),
            (libc::MS_INVALIDATE as u64, "MS_INVALIDATE"),
            (libc::MS_SYNC as u64, "MS_SYNC"),
        ],
        nr::SYNC_FILE_RANGE => &[
            (libc::SYNC_FILE_RANGE_WAIT_BEFORE as u64, "WAIT_BEFORE"),
            (libc::SYNC_FILE_RANGE_WRITE as u64, "WRITE"),
            (libc::SYNC_FILE_RANGE_WAIT_AFTER as u64, "WAIT_AFTER"),
        ],
        _ => &[],
    };
    let mut names: Vec<String> = table
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let known: u64 = table.iter().map(|(b, _)| b).sum();
    if flags & !known != 0 {
        names.push(format!("{:#x}", flags & !known));
    }
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

fn what(r: &FsyncRow) -> String {
    match &r.flags {
        Some(f) => format!("{} {f}", r.syscall),
        None => r.syscall.to_string(),
    }
}

fn file(r: &FsyncRow) -> String {
    let mut s = r.display.clone();
    match r.kind {
        Kind::File | Kind::Anonymous | Kind::System => {}
        k => {
            let _ = write!(s, " ({})", k.name());
        }
    }
    if r.syscall == "syncfs"
        && let Some(m) = &r.mount
    {
        let _ = write!(s, " [fs {} {} on {}]", m.fstype, m.source, m.point);
    }
    if let Some(tid) = r.tid {
        let _ = write!(
            s,
            " · thread {} ({tid})",
            printable(r.thread.as_deref().unwrap_or("?"))
        );
    }
    s
}

/// The table of the top `top` rows, then their histograms.
pub fn write_text(out: &mut String, rows: &[FsyncRow], top: usize) {
    if rows.is_empty() {
        out.push_str("\nfsync: no durability calls\n");
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:>8} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}  FILE",
        "DURABILITY CALL", "COUNT", "ERR", "P50", "P90", "P99", "P99.9", "MAX"
    );
    for r in rows.iter().take(top) {
        let _ = writeln!(
            out,
            "{:<26} {:>8} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
            what(r),
            r.count,
            r.errors,
            units::ns(r.p50_ns),
            units::ns(r.p90_ns),
            units::ns(r.p99_ns),
            units::ns(r.p999_ns),
            units::ns(r.max_ns),
            file(r)
        );
    }
    if rows.len() > top {
        let _ = writeln!(out, "({} more rows not shown; --top)", rows.len() - top);
    }
    for r in rows.iter().take(top) {
        write_histogram(out, r);
    }
}

/// bcc style: `  4.10µs -> 8.19µs    : 12       |****                |`.
fn write_histogram(out: &mut String, r: &FsyncRow) {
    const WIDTH: u64 = 40;
    let calls = if r.count == 1 { "call" } else { "calls" };
    let _ = writeln!(out, "\n{} · {} · {} {calls}", what(r), file(r), r.count);
    let _ = writeln!(out, "{:>22}     : {:<8} distribution", "latency", "count");
    let peak = r
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(0)
        .max(1);
    for b in &r.histogram {
        let stars = (b.count * WIDTH).div_ceil(peak).min(WIDTH) as usize;
        let hi = if b.hi_ns == u64::MAX || b.hi_ns >= bucket_upper(LATENCY_BUCKETS - 1) {
            "…".to_string()
        } else {
            units::ns(b.hi_ns + 1)
        };
        let _ = writeln!(
            out,
            "{:>10} -> {:<8}  : {:<8} |{:<40}|",
            units::ns(b.lo_ns),
            hi,
            b.count,
            "*".repeat(if b.count == 0 { 0 } else { stars })
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msync_flags_are_named() {
        assert_eq!(flag_names(nr::MSYNC, libc::MS_ASYNC as u64), "MS_ASYNC");
        assert_eq!(
            flag_names(nr::MSYNC, (libc::MS_SYNC | libc::MS_INVALIDATE) as u64),
            "MS_INVALIDATE|MS_SYNC"
        );
        assert_eq!(flag_names(nr::MSYNC, 0x100), "0x100");
        assert_eq!(flag_names(nr::MSYNC, 0), "0");
        assert_eq!(
            flag_names(nr::SYNC_FILE_RANGE, libc::SYNC_FILE_RANGE_WRITE as u64),
            "WRITE"
        );
    }

    #[test]
    fn text_has_table_and_histogram() {
        let mut l = Latency::default();
        for ns in [5_000, 6_000, 7_000, 100_000] {
            l.record(ns, false, 0);
        }
        let info = PathInfo {
            kind: Kind::DataDir,
            display: "/var/lib/lavinmq".into(),
            queue: None,
            mount: Some(MountRef {
                point: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/sda1".into(),
            }),
        };
        let row = FsyncRow::new(nr::SYNCFS, "/var/lib/lavinmq", None, &info, &l);
        let mut s = String::new();
        write_text(&mut s, &[row], 10);
        assert!(s.contains("syncfs"), "{s}");
        assert!(
            s.contains("/var/lib/lavinmq (data dir) [fs ext4 /dev/sda1 on /]"),
            "{s}"
        );
        assert!(s.contains("distribution"), "{s}");
        // 3 calls in 4.10µs..8.19µs: the full bar; 1 in 65.5µs..131µs.
        assert!(s.contains(&format!("|{}|", "*".repeat(40))), "{s}");
        assert!(s.contains(&format!("|{:<40}|", "*".repeat(14))), "{s}");
    }
}
