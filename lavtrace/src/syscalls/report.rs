//! The `syscalls` rows as JSON objects and as a text table.

use std::{cmp::Reverse, fmt::Write as _};

use lavtrace_common::syscalls::SyscallStats;
use serde::Serialize;

use super::stats;
use crate::{
    family::SortKey,
    names::{errno_name, syscall_name},
    units,
};

#[derive(Debug, Clone, Serialize)]
pub struct ErrnoCount {
    pub name: String,
    pub errno: u32,
    pub count: u64,
}

impl ErrnoCount {
    pub fn new(errno: u32, count: u64) -> Self {
        ErrnoCount {
            name: errno_name(errno),
            errno,
            count,
        }
    }
}

/// One syscall over one window (an interval or the whole run).
#[derive(Debug, Clone, Serialize)]
pub struct SyscallRow {
    pub name: String,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    pub top_errno: Option<ErrnoCount>,
    pub total_ns: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The window's log2 latency buckets (the metrics endpoint's histograms); in JSON as
    /// `histogram`, the non-empty range as the fsync rows have it (report.html plots it).
    #[serde(rename = "histogram", serialize_with = "histogram")]
    pub buckets: [u64; lavtrace_common::syscalls::LATENCY_BUCKETS],
}

#[derive(Serialize)]
struct Bucket {
    lo_ns: u64,
    hi_ns: u64,
    count: u64,
}

/// The buckets from the lowest to the highest non-empty one (none when all are empty).
pub(crate) fn histogram<S: serde::Serializer>(
    buckets: &[u64; lavtrace_common::syscalls::LATENCY_BUCKETS],
    s: S,
) -> Result<S::Ok, S::Error> {
    let range = match (
        buckets.iter().position(|&n| n > 0),
        buckets.iter().rposition(|&n| n > 0),
    ) {
        (Some(first), Some(last)) => first..=last,
        _ => return s.collect_seq(std::iter::empty::<Bucket>()),
    };
    s.collect_seq(range.map(|i| Bucket {
        lo_ns: stats::bucket_lower(i),
        hi_ns: stats::bucket_upper(i),
        count: buckets[i],
    }))
}

impl SyscallRow {
    pub fn new(nr: u32, w: &SyscallStats, top_errno: Option<ErrnoCount>) -> Self {
        SyscallRow {
            name: syscall_name(nr),
            nr,
            count: w.count,
            errors: w.errors,
            top_errno,
            total_ns: w.total_ns,
            avg_ns: w.total_ns.checked_div(w.count).unwrap_or(0),
            p50_ns: stats::percentile(&w.buckets, w.max_ns, 0.50),
            p99_ns: stats::percentile(&w.buckets, w.max_ns, 0.99),
            max_ns: w.max_ns,
            buckets: w.buckets,
        }
    }
}

/// Orders rows for display, most first.
pub fn sort_rows(rows: &mut [&SyscallRow], sort: SortKey) {
    match sort {
        SortKey::Count => rows.sort_by_key(|r| Reverse(r.count)),
        SortKey::Time => rows.sort_by_key(|r| Reverse(r.total_ns)),
        SortKey::Errors => rows.sort_by(|a, b| b.errors.cmp(&a.errors).then(b.count.cmp(&a.count))),
        SortKey::Max => rows.sort_by_key(|r| Reverse(r.max_ns)),
    }
}

/// The table: top `top` rows by `sort`, then a total line.
pub fn write_text(out: &mut String, rows: &[SyscallRow], sort: SortKey, top: usize) {
    let mut sorted: Vec<&SyscallRow> = rows.iter().collect();
    sort_rows(&mut sorted, sort);
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>7} {:<16} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "SYSCALL", "COUNT", "ERRORS", "TOP ERRNO", "TOTAL", "AVG", "P50", "P99", "MAX"
    );
    for r in sorted.iter().take(top) {
        let errno = r
            .top_errno
            .as_ref()
            .map(|e| format!("{} ({})", e.name, e.count))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>7} {:<16} {:>8} {:>8} {:>8} {:>8} {:>8}",
            r.name,
            r.count,
            r.errors,
            errno,
            units::ns(r.total_ns),
            units::ns(r.avg_ns),
            units::ns(r.p50_ns),
            units::ns(r.p99_ns),
            units::ns(r.max_ns),
        );
    }
    let count: u64 = rows.iter().map(|r| r.count).sum();
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    let hidden = rows.len().saturating_sub(top);
    let more = if hidden > 0 {
        format!(" ({hidden} more syscalls not shown; --top)")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>7}   {} distinct{more}",
        "total",
        count,
        errors,
        rows.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_row_carries_its_non_empty_bucket_range() {
        let mut w = SyscallStats {
            count: 4,
            total_ns: 4000,
            max_ns: 3000,
            ..SyscallStats::default()
        };
        w.buckets[9] = 1;
        w.buckets[11] = 3;
        let v = serde_json::to_value(SyscallRow::new(0, &w, None)).unwrap();
        assert_eq!(
            v["histogram"],
            serde_json::json!([
                {"lo_ns": 512, "hi_ns": 1023, "count": 1},
                {"lo_ns": 1024, "hi_ns": 2047, "count": 0},
                {"lo_ns": 2048, "hi_ns": 4095, "count": 3},
            ])
        );
        let idle = SyscallRow::new(0, &SyscallStats::default(), None);
        assert_eq!(
            serde_json::to_value(idle).unwrap()["histogram"],
            serde_json::json!([])
        );
    }
}
