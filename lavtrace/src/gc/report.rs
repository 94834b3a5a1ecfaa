//! A gc window: its pauses joined from the kernel's records, their figures, text, JSON, and
//! the `--slow-gc` log.

use std::{fmt::Write as _, io::Write as _, time::Duration};

use lavtrace_common::gc::{GcRecord, syscall};
use serde::Serialize;

use super::Signals;
use crate::{
    family::{self, TextOptions},
    fsync::{
        slow::{clock, realtime_minus_monotonic},
        stats::Latency,
    },
    threads::ThreadNames,
    units,
};

/// Pauses a window's log keeps (the longest); the rest are counted in `log_dropped`.
pub const LOG_MAX: usize = 256;

/// The thread that took longest to stop.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Laggard {
    pub tid: u32,
    pub thread: Option<String>,
    /// Its syscall when the suspend signal came; `runnable` (not held in the kernel: running
    /// or waiting for a CPU), `not_in_syscall` (held in the kernel outside a syscall, a page
    /// fault), or null (this kernel's hooks cannot tell).
    pub syscall: Option<String>,
    /// From the suspend signal sent to it to it stopped.
    pub answer_ns: u64,
}

/// One stop-the-world.
#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    /// CLOCK_REALTIME of its first suspend signal.
    pub begin_unix_ns: i128,
    pub collector_tid: u32,
    pub collector: Option<String>,
    /// Threads sent the suspend signal.
    pub threads_stopped: u32,
    /// First suspend signal to the last thread parked (in sigsuspend, or in its handler).
    pub stop_ns: u64,
    /// First suspend signal to the last thread resumed (took the restart signal).
    pub pause_ns: u64,
    /// Suspend signals sent again to a thread already signalled (bdwgc's retries).
    pub resends: u32,
    /// Threads whose resumption was seen (less than `threads_stopped`: one exited, or the
    /// run ended mid-pause).
    pub threads_resumed: u32,
    pub laggard: Option<Laggard>,
    #[serde(skip)]
    pub begin_ns: u64,
    #[serde(skip)]
    pub end_ns: u64,
}

/// A syscall value of the kernel's record as the report names it.
fn syscall_name(nr: i32) -> Option<String> {
    match nr {
        syscall::UNKNOWN => None,
        syscall::RUNNABLE => Some("runnable".into()),
        syscall::NOT_A_SYSCALL => Some("not_in_syscall".into()),
        n if n >= 0 => Some(crate::names::syscall_name(n as u32)),
        _ => None,
    }
}

/// One pause from its record and its threads' records.
pub fn join(head: &GcRecord, threads: &[GcRecord], names: &mut ThreadNames) -> Pause {
    let begin = head.t0;
    // A thread is stopped when it parks in sigsuspend, or (no hook saw that) when its
    // handler starts.
    let stopped_at = |t: &GcRecord| match (t.t2, t.t1) {
        (0, 0) => None,
        (0, answered) => Some(answered),
        (parked, answered) => Some(parked.max(answered)),
    };
    let last = threads
        .iter()
        .filter_map(|t| stopped_at(t).map(|at| (at, t)))
        .max_by_key(|(at, _)| *at);
    let end = threads.iter().map(|t| t.t3).max().unwrap_or(head.t3);
    let laggard = last.map(|(at, t)| Laggard {
        tid: t.tid,
        thread: names.name(t.tid).map(|n| n.to_string()),
        syscall: syscall_name(t.syscall),
        answer_ns: at.saturating_sub(t.t0),
    });
    let offset = realtime_minus_monotonic();
    Pause {
        begin_unix_ns: i128::from(begin) + offset,
        collector_tid: head.tid,
        collector: names.name(head.tid).map(|n| n.to_string()),
        threads_stopped: head.count,
        // No thread seen stopping (all exited): the suspend phase's end, the first restart.
        stop_ns: last.map_or(head.t3, |(at, _)| at).saturating_sub(begin),
        pause_ns: end.saturating_sub(begin),
        resends: head.resends,
        threads_resumed: threads.len() as u32,
        laggard,
        begin_ns: begin,
        end_ns: end,
    }
}

/// The figures of a set of pauses.
#[derive(Clone, Default)]
pub struct Totals {
    pub pause: Latency,
    pub stop: Latency,
    /// The longest pauses, at most `LOG_MAX` (the summary's log).
    pub log: Vec<Pause>,
    pub log_dropped: u64,
}

impl Totals {
    pub fn of(pauses: &[Pause]) -> Totals {
        let mut t = Totals::default();
        for p in pauses {
            t.pause.record(p.pause_ns, false, 0);
            t.stop.record(p.stop_ns, false, 0);
        }
        t
    }

    /// Adds a closed window (its figures and its pauses) to the run's.
    pub fn merge(&mut self, window: &Totals, pauses: &[Pause]) {
        self.pause.merge(&window.pause);
        self.stop.merge(&window.stop);
        self.log.extend(pauses.iter().cloned());
        let kept = keep_longest(&mut self.log);
        self.log_dropped += kept;
    }
}

/// Trims `log` to the `LOG_MAX` longest pauses, in time order; returns how many went.
fn keep_longest(log: &mut Vec<Pause>) -> u64 {
    if log.len() <= LOG_MAX {
        return 0;
    }
    let dropped = (log.len() - LOG_MAX) as u64;
    log.sort_by_key(|p| std::cmp::Reverse(p.pause_ns));
    log.truncate(LOG_MAX);
    log.sort_by_key(|p| p.begin_ns);
    dropped
}

/// A latency's figures as JSON shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub total_ns: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Log2 buckets from the lowest to the highest non-empty one.
    pub histogram: Vec<crate::fsync::Bucket>,
    /// Every log2 bucket (the metrics histogram).
    #[serde(skip)]
    pub log2: [u64; lavtrace_common::syscalls::LATENCY_BUCKETS],
}

impl Distribution {
    fn of(l: &Latency) -> Distribution {
        let histogram = crate::fsync::histogram(l);
        Distribution {
            count: l.count,
            total_ns: l.total_ns,
            avg_ns: l.total_ns.checked_div(l.count).unwrap_or(0),
            p50_ns: l.quantile(0.50),
            p90_ns: l.quantile(0.90),
            p99_ns: l.quantile(0.99),
            p999_ns: l.quantile(0.999),
            max_ns: l.max_ns,
            histogram,
            log2: l.log2,
        }
    }
}

/// The family's part of a window.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub pauses: u64,
    /// Pauses per second of the window.
    pub rate: f64,
    pub wall_ns: u64,
    /// The share of the window's wall time the world was stopped (pause time / wall time).
    pub stopped_share: f64,
    pub pause_ns: Distribution,
    pub stop_ns: Distribution,
    pub signals: SignalsJson,
    /// The window's pauses (the summary: the `LOG_MAX` longest of the run).
    pub log: Vec<Pause>,
    pub log_dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignalsJson {
    pub suspend: u32,
    pub restart: u32,
}

impl Section {
    pub fn new(t: &Totals, mut log: Vec<Pause>, wall_ns: u64, signals: Signals) -> Section {
        let dropped = keep_longest(&mut log);
        let secs = wall_ns as f64 / 1e9;
        Section {
            pauses: t.pause.count,
            rate: if secs > 0.0 {
                t.pause.count as f64 / secs
            } else {
                0.0
            },
            wall_ns,
            stopped_share: if wall_ns > 0 {
                t.pause.total_ns as f64 / wall_ns as f64
            } else {
                0.0
            },
            pause_ns: Distribution::of(&t.pause),
            stop_ns: Distribution::of(&t.stop),
            signals: SignalsJson {
                suspend: signals.suspend,
                restart: signals.restart,
            },
            log,
            log_dropped: t.log_dropped + dropped,
        }
    }
}

impl Section {
    /// One line for the live view's header: the window's pauses, time stopped, the longest,
    /// and its laggard.
    pub fn headline(&self) -> String {
        let mut s = format!(
            "GC {} pauses, {} stopped ({:.1}%)",
            self.pauses,
            units::ns(self.pause_ns.total_ns),
            self.stopped_share * 100.0
        );
        if let Some(p) = self.log.iter().max_by_key(|p| p.pause_ns) {
            s.push_str(&format!(", max {}", units::ns(p.pause_ns)));
            if let Some(l) = &p.laggard {
                s.push_str(&format!(
                    " (laggard {} {})",
                    l.thread.as_deref().unwrap_or("?"),
                    l.syscall.as_deref().unwrap_or("?")
                ));
            }
        }
        s
    }
}

impl family::Section for Section {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        family::one_key("gc", self)
    }

    /// The window's pauses, longest first: who collected, how many threads stopped, how long
    /// stopping took, and who answered last from which syscall.
    fn pane(&self) -> Option<family::TablePane> {
        let mut log: Vec<&Pause> = self.log.iter().collect();
        log.sort_by_key(|p| std::cmp::Reverse(p.pause_ns));
        Some(family::TablePane {
            name: "gc",
            title: format!(
                "· this interval · {} pauses, {} stopped ({:.1} %) · p99 {} ",
                self.pauses,
                units::ns(self.pause_ns.total_ns),
                self.stopped_share * 100.0,
                units::ns(self.pause_ns.p99_ns)
            ),
            header: vec![
                "PAUSE",
                "STOP",
                "THREADS",
                "COLLECTOR",
                "LAGGARD",
                "IN SYSCALL",
            ],
            rows: log
                .into_iter()
                .map(|p| {
                    let laggard = p.laggard.as_ref();
                    vec![
                        units::ns(p.pause_ns),
                        units::ns(p.stop_ns),
                        p.threads_stopped.to_string(),
                        format!(
                            "{} ({})",
                            p.collector.as_deref().unwrap_or("?"),
                            p.collector_tid
                        ),
                        laggard.map_or_else(String::new, |l| {
                            format!("{} ({})", l.thread.as_deref().unwrap_or("?"), l.tid)
                        }),
                        laggard.and_then(|l| l.syscall.clone()).unwrap_or_default(),
                    ]
                })
                .collect(),
        })
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        let p = &self.pause_ns;
        let _ = writeln!(
            out,
            "GC PAUSES {} ({:.1}/s)  stopped {} = {:.2}% of {}  pause p50 {} p99 {} max {}  \
             stop max {}",
            self.pauses,
            self.rate,
            units::ns(p.total_ns),
            self.stopped_share * 100.0,
            units::ns(self.wall_ns),
            units::ns(p.p50_ns),
            units::ns(p.p99_ns),
            units::ns(p.max_ns),
            units::ns(self.stop_ns.max_ns),
        );
        if self.pauses == 0 {
            return;
        }
        if text.summary {
            let peak = p
                .histogram
                .iter()
                .map(|b| b.count)
                .max()
                .unwrap_or(1)
                .max(1);
            for b in &p.histogram {
                let bar = "#".repeat((b.count * 40).div_ceil(peak) as usize);
                let _ = writeln!(
                    out,
                    "  {:>8} .. {:<8} {:>8} {bar}",
                    units::ns(b.lo_ns),
                    units::ns(b.hi_ns),
                    b.count
                );
            }
        }
        let mut longest: Vec<&Pause> = self.log.iter().collect();
        longest.sort_by_key(|p| std::cmp::Reverse(p.pause_ns));
        let _ = writeln!(
            out,
            "  {:<15} {:>8} {:>7} {:>9} {:>9}  LAGGARD (TID THREAD SYSCALL)",
            "BEGIN (UTC)", "COLLECT", "THREADS", "STOP", "PAUSE"
        );
        for pause in longest.iter().take(text.top.min(5)) {
            let _ = writeln!(out, "  {}", line(pause));
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn line(p: &Pause) -> String {
    let laggard = p.laggard.as_ref().map_or_else(
        || "-".to_string(),
        |l| {
            format!(
                "{} {} {}",
                l.tid,
                l.thread.as_deref().unwrap_or("?"),
                l.syscall.as_deref().unwrap_or("?")
            )
        },
    );
    format!(
        "{:<15} {:>8} {:>7} {:>9} {:>9}  {laggard}",
        clock(p.begin_unix_ns),
        p.collector_tid,
        p.threads_stopped,
        units::ns(p.stop_ns),
        units::ns(p.pause_ns),
    )
}

/// `--slow-gc DURATION`: every pause at least that long, printed as it ends.
pub struct SlowLog {
    threshold_ns: u64,
    json: bool,
    header_done: bool,
}

#[derive(Serialize)]
struct SlowRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    pause: &'a Pause,
}

impl SlowLog {
    pub fn new(threshold: Duration, json: bool) -> SlowLog {
        SlowLog {
            threshold_ns: threshold.as_nanos().min(u128::from(u64::MAX)) as u64,
            json,
            header_done: false,
        }
    }

    pub fn print(&mut self, pause: &Pause) {
        if pause.pause_ns < self.threshold_ns {
            return;
        }
        let text = if self.json {
            match serde_json::to_string(&SlowRecord {
                r#type: "slow_gc",
                pause,
            }) {
                Ok(s) => s + "\n",
                Err(_) => return,
            }
        } else {
            let mut s = String::new();
            if !self.header_done {
                s.push_str(&format!(
                    "SLOW GC {:<15} {:>8} {:>7} {:>9} {:>9}  LAGGARD (TID THREAD SYSCALL)\n",
                    "BEGIN (UTC)", "COLLECT", "THREADS", "STOP", "PAUSE"
                ));
                self.header_done = true;
            }
            s.push_str("SLOW GC ");
            s.push_str(&line(pause));
            s.push('\n');
            s
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// A window of pauses of these lengths, each stopped in half its length (metrics tests).
#[cfg(test)]
pub fn section_of(pause_ns: &[u64]) -> Section {
    let mut names = ThreadNames::seed(u32::MAX);
    let pauses: Vec<Pause> = pause_ns
        .iter()
        .map(|&ns| {
            let head = GcRecord {
                kind: lavtrace_common::gc::kind::PAUSE,
                t0: 1_000,
                t3: 1_000 + ns / 2,
                count: 1,
                ..GcRecord::default()
            };
            let t = GcRecord {
                kind: lavtrace_common::gc::kind::THREAD,
                t0: 1_000,
                t1: 1_000 + ns / 2,
                t3: 1_000 + ns,
                syscall: syscall::UNKNOWN,
                ..GcRecord::default()
            };
            join(&head, &[t], &mut names)
        })
        .collect();
    let totals = Totals::of(&pauses);
    Section::new(&totals, pauses, 1_000_000_000, Signals::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lavtrace_common::gc::kind;

    #[test]
    fn the_pane_lists_the_longest_pause_first() {
        use family::Section as _;
        let pane = section_of(&[2_000_000, 9_000_000, 4_000_000])
            .pane()
            .unwrap();
        assert_eq!(pane.name, "gc");
        let pauses: Vec<&str> = pane.rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            pauses,
            [
                units::ns(9_000_000),
                units::ns(4_000_000),
                units::ns(2_000_000)
            ]
        );
        assert!(pane.title.contains("3 pauses"), "{}", pane.title);
        assert!(pane.rows.iter().all(|r| r.len() == pane.header.len()));
    }

    fn thread(tid: u32, sent: u64, answered: u64, parked: u64, resumed: u64, nr: i32) -> GcRecord {
        GcRecord {
            seq: 1,
            kind: kind::THREAD,
            tid,
            t0: sent,
            t1: answered,
            t2: parked,
            t3: resumed,
            syscall: nr,
            ..GcRecord::default()
        }
    }

    #[test]
    fn a_pause_is_joined_from_its_threads() {
        let head = GcRecord {
            seq: 1,
            kind: kind::PAUSE,
            tid: 7,
            t0: 1_000,
            t3: 5_000,
            count: 3,
            ..GcRecord::default()
        };
        let threads = [
            thread(8, 1_000, 1_100, 1_200, 5_100, syscall::RUNNABLE),
            thread(9, 1_010, 3_000, 3_050, 5_300, 35),
            // No sigsuspend hook: stopped when the handler started.
            thread(10, 1_020, 1_500, 0, 5_200, syscall::UNKNOWN),
        ];
        let mut names = ThreadNames::seed(u32::MAX);
        let p = join(&head, &threads, &mut names);
        assert_eq!((p.threads_stopped, p.threads_resumed), (3, 3));
        assert_eq!((p.stop_ns, p.pause_ns), (2_050, 4_300));
        let l = p.laggard.unwrap();
        assert_eq!(
            (l.tid, l.syscall.as_deref(), l.answer_ns),
            (9, Some("nanosleep"), 2_040)
        );
        assert_eq!(syscall_name(syscall::UNKNOWN), None);
    }

    #[test]
    fn the_headline_names_the_longest_pause() {
        let s = section_of(&[2_000_000, 40_000_000]);
        assert_eq!(
            s.headline(),
            "GC 2 pauses, 42.0ms stopped (4.2%), max 40.0ms (laggard ? ?)"
        );
    }

    #[test]
    fn the_log_keeps_the_longest() {
        let mut names = ThreadNames::seed(u32::MAX);
        let mut log: Vec<Pause> = (0..LOG_MAX as u64 + 3)
            .map(|i| {
                let head = GcRecord {
                    kind: kind::PAUSE,
                    t0: i * 10,
                    t3: i * 10 + (i % 7) + 1,
                    ..GcRecord::default()
                };
                join(&head, &[], &mut names)
            })
            .collect();
        assert_eq!(keep_longest(&mut log), 3);
        assert_eq!(log.len(), LOG_MAX);
        assert!(log.windows(2).all(|w| w[0].begin_ns < w[1].begin_ns));
    }
}
