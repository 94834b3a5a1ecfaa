//! The `sched` rows as JSON objects and as a text table.

use std::{cmp::Reverse, fmt::Write as _};

use lavtrace_common::{
    sched::{ThreadSched, state},
    syscalls::LATENCY_BUCKETS,
};
use serde::Serialize;

use crate::{family::SortKey, printable::printable, syscalls::stats, units};

/// Run-queue latency of one thread over a window: runnable (woken or preempted) until it
/// ran, per wait that ended in the window.
#[derive(Debug, Clone, Serialize)]
pub struct RunqLatency {
    pub count: u64,
    pub total_ns: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The non-empty range of the log2 buckets, as the syscall rows have it.
    #[serde(rename = "histogram", serialize_with = "crate::syscalls::histogram")]
    pub buckets: [u64; LATENCY_BUCKETS],
}

/// One thread over one window.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadRow {
    pub tid: u32,
    /// /proc/PID/task/TID/comm; null for a thread that exited before lavtrace saw it.
    pub thread: Option<String>,
    /// Where it was at the end of the window: running, runnable, sleeping, blocked, exited
    /// (unknown: not seen to switch yet).
    pub state: &'static str,
    pub on_cpu_ns: u64,
    pub runq_ns: RunqLatency,
    /// Off the CPU, waiting interruptibly (S) or in any other non-D state, until woken.
    pub sleep_ns: u64,
    /// Off the CPU in D (TASK_UNINTERRUPTIBLE: I/O, mostly), until woken.
    pub blocked_ns: u64,
    pub switches_voluntary: u64,
    /// Switched out while still runnable: preempted.
    pub switches_involuntary: u64,
    /// Switch-ins whose wakeup was not seen (the wait went into `sleep_ns`/`blocked_ns`, no
    /// run-queue sample).
    pub wakeups_unseen: u64,
}

impl ThreadRow {
    pub fn new(tid: u32, thread: Option<String>, w: &ThreadSched, st: u32) -> ThreadRow {
        ThreadRow {
            tid,
            thread,
            state: state_name(st),
            on_cpu_ns: w.on_cpu_ns,
            runq_ns: RunqLatency {
                count: w.runq_count,
                total_ns: w.runq_total_ns,
                avg_ns: w.runq_total_ns.checked_div(w.runq_count).unwrap_or(0),
                p50_ns: stats::percentile(&w.runq_buckets, w.runq_max_ns, 0.50),
                p99_ns: stats::percentile(&w.runq_buckets, w.runq_max_ns, 0.99),
                max_ns: w.runq_max_ns,
                buckets: w.runq_buckets,
            },
            sleep_ns: w.sleep_ns,
            blocked_ns: w.blocked_ns,
            switches_voluntary: w.voluntary,
            switches_involuntary: w.involuntary,
            wakeups_unseen: u64::from(w.unwoken),
        }
    }
}

fn state_name(st: u32) -> &'static str {
    match st {
        state::ON_CPU => "running",
        state::RUNQ => "runnable",
        state::SLEEP => "sleeping",
        state::BLOCKED => "blocked",
        state::EXITED => "exited",
        _ => "unknown",
    }
}

/// The JSON order: most on-CPU time first, then by tid.
pub fn sort_default(rows: &mut [ThreadRow]) {
    rows.sort_by(|a, b| b.on_cpu_ns.cmp(&a.on_cpu_ns).then(a.tid.cmp(&b.tid)));
}

/// The live view's table: the threads that waited longest for a CPU first (the question the
/// pane answers: is the broker starved), then by on-CPU time.
pub fn pane(rows: &[ThreadRow], missed: u64) -> crate::family::TablePane {
    let mut sorted: Vec<&ThreadRow> = rows.iter().collect();
    sorted.sort_by_key(|r| (Reverse(r.runq_ns.p99_ns), Reverse(r.on_cpu_ns), r.tid));
    let mut title = format!("· this interval · {} threads ", rows.len());
    if missed > 0 {
        title.push_str(&format!("· {missed} switches the kernel skipped "));
    }
    crate::family::TablePane {
        name: "scheduling",
        title,
        header: vec![
            "THREAD", "TID", "STATE", "ON-CPU", "RQ P99", "RQ MAX", "SLEEP", "BLOCKED", "VOL",
            "INVOL",
        ],
        rows: sorted
            .into_iter()
            .map(|r| {
                vec![
                    r.thread.clone().unwrap_or_else(|| "?".into()),
                    r.tid.to_string(),
                    r.state.to_string(),
                    units::ns(r.on_cpu_ns),
                    units::ns(r.runq_ns.p99_ns),
                    units::ns(r.runq_ns.max_ns),
                    units::ns(r.sleep_ns),
                    units::ns(r.blocked_ns),
                    r.switches_voluntary.to_string(),
                    r.switches_involuntary.to_string(),
                ]
            })
            .collect(),
    }
}

/// The table: top `top` threads by `sort` (count: switches; time: on-CPU; max: run-queue
/// max; errors: blocked time).
pub fn write_text(out: &mut String, rows: &[ThreadRow], sort: SortKey, top: usize) {
    let mut sorted: Vec<&ThreadRow> = rows.iter().collect();
    match sort {
        SortKey::Count => {
            sorted.sort_by_key(|r| Reverse(r.switches_voluntary + r.switches_involuntary))
        }
        SortKey::Time => sorted.sort_by_key(|r| Reverse(r.on_cpu_ns)),
        SortKey::Max => sorted.sort_by_key(|r| Reverse(r.runq_ns.max_ns)),
        SortKey::Errors => sorted.sort_by_key(|r| Reverse(r.blocked_ns)),
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7}",
        "THREAD",
        "TID",
        "ON-CPU",
        "RUNQ",
        "RQ P50",
        "RQ P99",
        "RQ MAX",
        "SLEEP",
        "BLOCKED(D)",
        "VOL",
        "INVOL"
    );
    for r in sorted.iter().take(top) {
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7}",
            printable(r.thread.as_deref().unwrap_or("?")),
            r.tid,
            units::ns(r.on_cpu_ns),
            r.runq_ns.count,
            units::ns(r.runq_ns.p50_ns),
            units::ns(r.runq_ns.p99_ns),
            units::ns(r.runq_ns.max_ns),
            units::ns(r.sleep_ns),
            units::ns(r.blocked_ns),
            r.switches_voluntary,
            r.switches_involuntary,
        );
    }
    let hidden = rows.len().saturating_sub(top);
    if hidden > 0 {
        let _ = writeln!(out, "({hidden} more threads not shown; --top)");
    }
    let unseen: u64 = rows.iter().map(|r| r.wakeups_unseen).sum();
    if unseen > 0 {
        let _ = writeln!(
            out,
            "{unseen} wakeups not seen by the kernel programs: those waits count as SLEEP or \
             BLOCKED, not in RUNQ"
        );
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no thread of the target switched)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_as_json_and_text() {
        let mut w = ThreadSched {
            on_cpu_ns: 5_000_000,
            sleep_ns: 20_000_000,
            voluntary: 4,
            involuntary: 1,
            runq_count: 2,
            runq_total_ns: 3_000,
            runq_max_ns: 2_500,
            ..ThreadSched::default()
        };
        w.runq_buckets[9] = 1;
        w.runq_buckets[11] = 1;
        let row = ThreadRow::new(7, Some("sleeper".into()), &w, state::SLEEP);
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["thread"], "sleeper");
        assert_eq!(v["state"], "sleeping");
        assert_eq!(v["runq_ns"]["count"], 2);
        assert_eq!(v["runq_ns"]["max_ns"], 2_500);
        assert_eq!(v["runq_ns"]["histogram"].as_array().unwrap().len(), 3);
        assert_eq!(v["switches_voluntary"], 4);
        let mut text = String::new();
        write_text(&mut text, &[row], SortKey::Count, 20);
        assert!(text.contains("sleeper"), "{text}");
        assert!(text.contains("BLOCKED(D)"), "{text}");
    }
}
