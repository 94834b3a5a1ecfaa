//! `--per-thread` for the syscalls family: the kernel's (tid, syscall) table, differenced per
//! window and grouped by thread, with thread names.

use crate::printable::printable;
use std::{cmp::Reverse, collections::HashMap, fmt::Write as _};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuHashMap};
use lavtrace_common::syscalls::{ThreadHalves, ThreadKey, ThreadStats};
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
    map: PerCpuHashMap<MapData, ThreadKey, ThreadHalves>,
    names: ThreadNames,
    /// Each key's halves (`lavtrace_common::cut`) as last read.
    last: HashMap<ThreadKey, ThreadHalves>,
    /// The half the pending cut closes.
    closing: Option<u32>,
}

impl Threads {
    pub fn new(map: PerCpuHashMap<MapData, ThreadKey, ThreadHalves>, pid: u32) -> Threads {
        Threads {
            map,
            names: ThreadNames::seed(pid),
            last: HashMap::new(),
            closing: None,
        }
    }

    /// The open interval ends with half `half`.
    pub fn cut(&mut self, half: u32) {
        self.closing = Some(half);
    }

    fn read(&self) -> Result<HashMap<ThreadKey, ThreadHalves>> {
        let mut out = HashMap::new();
        for entry in self.map.iter() {
            let (key, slots) = entry.context("reading per-thread syscall stats")?;
            let mut sum = ThreadHalves::default();
            for cpu in slots.iter() {
                for (s, c) in sum.iter_mut().zip(cpu.iter()) {
                    *s = add(s, c);
                }
            }
            if !super::returns_error_codes(key.nr) {
                for s in &mut sum {
                    s.errors = 0;
                }
            }
            out.insert(key, sum);
        }
        Ok(out)
    }

    /// Threads in the interval the last cut closed (without one: since the previous call), or
    /// (`whole`) in every interval read so far: the session closes a last one before it asks.
    pub fn rows(&mut self, whole: bool) -> Result<Vec<ThreadRow>> {
        if whole {
            let total = self
                .last
                .iter()
                .map(|(k, [a, b])| (*k, add(a, b)))
                .collect();
            return Ok(group(&total, &mut self.names));
        }
        let cur = self.read()?;
        let halves = match self.closing.take() {
            Some(h) => vec![h as usize],
            None => vec![0, 1],
        };
        let mut window: HashMap<ThreadKey, ThreadStats> = HashMap::new();
        for (key, c) in &cur {
            let last = self.last.entry(*key).or_default();
            let mut w = ThreadStats {
                // Since attach: the kernel keeps no per-thread histogram to bound a window.
                max_ns: c[0].max_ns.max(c[1].max_ns),
                ..ThreadStats::default()
            };
            for &h in &halves {
                w.count += c[h].count.saturating_sub(last[h].count);
                w.errors += c[h].errors.saturating_sub(last[h].errors);
                w.total_ns += c[h].total_ns.saturating_sub(last[h].total_ns);
                last[h] = c[h];
            }
            window.insert(*key, w);
        }
        Ok(group(&window, &mut self.names))
    }
}

/// Both halves' figures together (max of the maxima).
fn add(a: &ThreadStats, b: &ThreadStats) -> ThreadStats {
    ThreadStats {
        count: a.count + b.count,
        errors: a.errors + b.errors,
        total_ns: a.total_ns + b.total_ns,
        max_ns: a.max_ns.max(b.max_ns),
    }
}

/// Rows of a window's (thread, syscall) figures, grouped by thread.
fn group(window: &HashMap<ThreadKey, ThreadStats>, names: &mut ThreadNames) -> Vec<ThreadRow> {
    let mut by_tid: HashMap<u32, ThreadRow> = HashMap::new();
    for (key, w) in window {
        if w.count == 0 {
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
            count: w.count,
            errors: w.errors,
            total_ns: w.total_ns,
            max_ns: w.max_ns,
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
    fn groups_a_window_by_thread() {
        let getppid = libc::SYS_getppid as u32;
        let close = libc::SYS_close as u32;
        let mut window = HashMap::new();
        window.insert(
            ThreadKey {
                tid: 7,
                nr: getppid,
            },
            stats(20, 200),
        );
        window.insert(ThreadKey { tid: 7, nr: close }, stats(5, 50));
        window.insert(ThreadKey { tid: 9, nr: close }, stats(50, 500));
        // Quiet in this window: no row.
        window.insert(ThreadKey { tid: 11, nr: close }, stats(0, 0));
        // Thread ids that do not exist in this process: unnamed.
        let mut names = ThreadNames::seed(std::process::id());
        let rows = group(&window, &mut names);
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

    #[test]
    fn halves_add_up() {
        let both = add(&stats(3, 30), &stats(4, 400));
        assert_eq!((both.count, both.total_ns, both.max_ns), (7, 430, 400));
    }
}
