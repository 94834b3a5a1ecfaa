//! `--per-thread` for the syscalls family: the kernel's (tid, syscall) table, differenced per
//! window and grouped by thread, with thread names.

use crate::printable::printable;
use std::{cmp::Reverse, collections::HashMap, fmt::Write as _};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuHashMap};
use lavtrace_common::syscalls::{ThreadKey, ThreadStats};
use serde::Serialize;

use crate::{family::SortKey, names::syscall_name, threads::ThreadNames, units};

/// One syscall of one thread over a window.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadSyscall {
    pub name: String,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// Slowest call since attach (the kernel keeps no per-thread histogram to bound a window).
    pub max_ns: u64,
}

/// One thread over a window: totals and its syscalls, most calls first.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadRow {
    pub tid: u32,
    /// /proc/PID/task/TID/comm; null for a thread that exited before lavtrace saw it.
    pub name: Option<String>,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub syscalls: Vec<ThreadSyscall>,
}

pub struct Threads {
    map: PerCpuHashMap<MapData, ThreadKey, ThreadStats>,
    names: ThreadNames,
    last: HashMap<ThreadKey, ThreadStats>,
}

impl Threads {
    pub fn new(map: PerCpuHashMap<MapData, ThreadKey, ThreadStats>, pid: u32) -> Threads {
        Threads {
            map,
            names: ThreadNames::seed(pid),
            last: HashMap::new(),
        }
    }

    fn read(&self) -> Result<HashMap<ThreadKey, ThreadStats>> {
        let mut out = HashMap::new();
        for entry in self.map.iter() {
            let (key, slots) = entry.context("reading per-thread syscall stats")?;
            let mut sum = ThreadStats::default();
            for s in slots.iter() {
                sum.count += s.count;
                sum.errors += s.errors;
                sum.total_ns += s.total_ns;
                sum.max_ns = sum.max_ns.max(s.max_ns);
            }
            if !super::returns_error_codes(key.nr) {
                sum.errors = 0;
            }
            out.insert(key, sum);
        }
        Ok(out)
    }

    /// Threads since the previous interval, or (`whole`) since attach.
    pub fn rows(&mut self, whole: bool) -> Result<Vec<ThreadRow>> {
        let cur = self.read()?;
        let rows = if whole {
            group(&cur, &HashMap::new(), &mut self.names)
        } else {
            let rows = group(&cur, &self.last, &mut self.names);
            self.last = cur;
            rows
        };
        Ok(rows)
    }
}

fn group(
    cur: &HashMap<ThreadKey, ThreadStats>,
    prev: &HashMap<ThreadKey, ThreadStats>,
    names: &mut ThreadNames,
) -> Vec<ThreadRow> {
    let mut by_tid: HashMap<u32, ThreadRow> = HashMap::new();
    for (key, c) in cur {
        let p = prev.get(key).copied().unwrap_or_default();
        let count = c.count.saturating_sub(p.count);
        if count == 0 {
            continue;
        }
        let row = by_tid.entry(key.tid).or_insert_with(|| ThreadRow {
            tid: key.tid,
            name: names.name(key.tid).map(|n| n.to_string()),
            count: 0,
            errors: 0,
            total_ns: 0,
            syscalls: Vec::new(),
        });
        let s = ThreadSyscall {
            name: syscall_name(key.nr),
            nr: key.nr,
            count,
            errors: c.errors.saturating_sub(p.errors),
            total_ns: c.total_ns.saturating_sub(p.total_ns),
            max_ns: c.max_ns,
        };
        row.count += s.count;
        row.errors += s.errors;
        row.total_ns += s.total_ns;
        row.syscalls.push(s);
    }
    let mut rows: Vec<ThreadRow> = by_tid.into_values().collect();
    for r in &mut rows {
        r.syscalls
            .sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
    }
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.tid.cmp(&b.tid)));
    rows
}

/// Text: one line per thread (top `top` by `sort`), with its busiest syscalls.
pub fn write_text(out: &mut String, rows: &[ThreadRow], sort: SortKey, top: usize) {
    let mut sorted: Vec<&ThreadRow> = rows.iter().collect();
    match sort {
        SortKey::Time | SortKey::Max => sorted.sort_by_key(|r| Reverse(r.total_ns)),
        SortKey::Errors => sorted.sort_by_key(|r| Reverse(r.errors)),
        SortKey::Count => sorted.sort_by_key(|r| Reverse(r.count)),
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>9} {:>7} {:>8}  TOP SYSCALLS (count, time)",
        "THREAD", "TID", "CALLS", "ERRORS", "TIME"
    );
    for r in sorted.iter().take(top) {
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>7} {:>8}  {}",
            printable(r.name.as_deref().unwrap_or("?")),
            r.tid,
            r.count,
            r.errors,
            units::ns(r.total_ns),
            top_syscalls(r, 3)
        );
    }
    let hidden = rows.len().saturating_sub(top);
    if hidden > 0 {
        let _ = writeln!(out, "({hidden} more threads not shown; --top)");
    }
}

/// `getppid 5000 (1.2ms), close 37 (20µs)`.
pub fn top_syscalls(r: &ThreadRow, n: usize) -> String {
    r.syscalls
        .iter()
        .take(n)
        .map(|s| format!("{} {} ({})", s.name, s.count, units::ns(s.total_ns)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(count: u64, total_ns: u64) -> ThreadStats {
        ThreadStats {
            count,
            errors: 0,
            total_ns,
            max_ns: total_ns,
        }
    }

    #[test]
    fn groups_by_thread_and_differences_windows() {
        let getppid = libc::SYS_getppid as u32;
        let close = libc::SYS_close as u32;
        let mut prev = HashMap::new();
        prev.insert(
            ThreadKey {
                tid: 7,
                nr: getppid,
            },
            stats(10, 100),
        );
        let mut cur = prev.clone();
        cur.insert(
            ThreadKey {
                tid: 7,
                nr: getppid,
            },
            stats(30, 300),
        );
        cur.insert(ThreadKey { tid: 7, nr: close }, stats(5, 50));
        cur.insert(ThreadKey { tid: 9, nr: close }, stats(50, 500));
        // Thread ids that do not exist in this process: unnamed.
        let mut names = ThreadNames::seed(std::process::id());
        let rows = group(&cur, &prev, &mut names);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].tid, rows[0].count), (9, 50));
        assert_eq!((rows[1].tid, rows[1].count, rows[1].total_ns), (7, 25, 250));
        assert_eq!(rows[1].syscalls[0].name, "getppid");
        assert_eq!(rows[1].syscalls[0].count, 20);
        assert_eq!(rows[1].name, None);
        let mut text = String::new();
        write_text(&mut text, &rows, SortKey::Count, 1);
        assert!(text.contains("close 50"), "{text}");
        assert!(text.contains("(1 more threads not shown; --top)"), "{text}");
    }
}
