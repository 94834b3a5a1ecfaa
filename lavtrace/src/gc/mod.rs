//! Probe family `gc`: every Boehm-GC stop-the-world of the target, reconstructed in the
//! kernel from the collector's suspend and restart signals and each thread's answer
//! (`lavtrace-ebpf/src/gc.rs`); here the pause record and its threads' records are joined
//! into one pause, counted, and logged.

mod hooks;
mod report;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use lavtrace_common::{
    gc::{GcRecord, RING_BYTES, RING_MAP, kind},
    ring::lost,
};

#[cfg(test)]
pub use report::section_of;
pub use report::{Pause, Section};

use crate::{
    family::{self, Family, Flush, Options, Part, Window},
    kernel::{Hook, Overrides, cut::now_ns},
    ringbuf::{Drain, spawn_drain},
    threads::ThreadNames,
};

pub const FAMILY: &str = "gc";

/// The runtime's suspend and restart signals (`--gc-signals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    pub suspend: u32,
    pub restart: u32,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            suspend: lavtrace_common::gc::DEFAULT_SUSPEND_SIGNAL,
            restart: lavtrace_common::gc::DEFAULT_RESTART_SIGNAL,
        }
    }
}

impl Signals {
    /// `SUSPEND,RESTART`: signal names (`SIGPWR`, `PWR`) or numbers.
    pub fn parse(s: &str) -> Result<Signals, String> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| format!("{s:?}: expected SUSPEND,RESTART (e.g. SIGPWR,SIGXCPU)"))?;
        let signals = Signals {
            suspend: signal_number(a.trim())?,
            restart: signal_number(b.trim())?,
        };
        if signals.suspend == signals.restart {
            return Err(format!(
                "{s:?}: the suspend and restart signals must differ"
            ));
        }
        Ok(signals)
    }

    pub fn describe(&self) -> String {
        format!(
            "suspend {} ({}), restart {} ({})",
            signal_name(self.suspend),
            self.suspend,
            signal_name(self.restart),
            self.restart
        )
    }
}

/// Names of the signals a runtime may take for this (real-time ones by number).
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSYS", libc::SIGSYS),
];

fn signal_number(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        // SIGKILL and SIGSTOP cannot be caught, so no runtime stops the world with them.
        return match n {
            1..=64 if n != libc::SIGKILL as u32 && n != libc::SIGSTOP as u32 => Ok(n),
            _ => Err(format!("{n}: not a signal a handler can take")),
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v as u32)
        .ok_or_else(|| format!("{s}: unknown signal"))
}

pub fn signal_name(n: u32) -> String {
    SIGNALS
        .iter()
        .find(|&&(_, v)| v as u32 == n)
        .map_or_else(|| format!("signal {n}"), |(name, _)| (*name).to_string())
}

/// A pause being joined: its record (once the suspend phase ended) and its threads'.
#[derive(Debug, Default)]
struct Pending {
    pause: Option<GcRecord>,
    threads: Vec<GcRecord>,
}

/// Everything the drain task and the windows share.
struct State {
    pending: BTreeMap<u64, Pending>,
    /// Whole pauses not yet in a window, in the order they ended.
    done: Vec<Pause>,
    /// The interval's end (`Tracer::cut`): pauses ending after it belong to the next one.
    cut: Option<u64>,
    names: ThreadNames,
    slow: Option<report::SlowLog>,
    /// Start of the open interval and of the run (CLOCK_MONOTONIC).
    interval_start_ns: u64,
    attach_ns: u64,
    /// Every pause of the closed intervals (the summary's figures).
    whole: report::Totals,
    /// Records that named a pause the join could not use (no pause record).
    orphans: u64,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding it (never expected) leaves figures that are still counts.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn on_record(&mut self, r: GcRecord) {
        match r.kind {
            kind::PAUSE => {
                let seq = r.seq;
                self.pending.entry(seq).or_default().pause = Some(r);
                // A pause two before this one will get no more records: a thread of it that
                // never resumed (it exited) must not hold it back.
                let stale: Vec<u64> = self
                    .pending
                    .range(..seq.saturating_sub(1))
                    .map(|(k, _)| *k)
                    .collect();
                for k in stale {
                    self.finish(k);
                }
            }
            kind::THREAD => self.pending.entry(r.seq).or_default().threads.push(r),
            _ => return,
        }
        let complete = self
            .pending
            .get(&r.seq)
            .and_then(|p| p.pause.map(|pause| p.threads.len() >= pause.count as usize))
            .unwrap_or(false);
        if complete {
            self.finish(r.seq);
        }
    }

    /// Joins pause `seq` from what arrived of it.
    fn finish(&mut self, seq: u64) {
        let Some(p) = self.pending.remove(&seq) else {
            return;
        };
        let Some(head) = p.pause else {
            self.orphans += p.threads.len() as u64;
            return;
        };
        let pause = report::join(&head, &p.threads, &mut self.names);
        if let Some(slow) = &mut self.slow {
            slow.print(&pause);
        }
        self.done.push(pause);
    }

    /// The pauses that ended before the cut (all of them without one).
    fn take_window(&mut self) -> Vec<Pause> {
        let cut = self.cut.take();
        let (now, later): (Vec<Pause>, Vec<Pause>) = std::mem::take(&mut self.done)
            .into_iter()
            .partition(|p| cut.is_none_or(|c| p.end_ns <= c));
        self.done = later;
        now
    }
}

pub struct Tracer {
    state: Arc<Mutex<State>>,
    drain: Arc<Drain>,
    signals: Signals,
    /// (program, status) of the hooks not chosen, for `check`.
    notes: Vec<(String, String)>,
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const ABOUT: &'static str = "Boehm-GC stop-the-world pauses: count, length, time to stop, \
                                 the thread that answered last and its syscall";
    const LOST_SLOT: Option<u32> = Some(lost::GC);
    const LOADS_AGAINST_BTF: bool = true;
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::gc::FIELDS;

    fn overrides(options: &Options, overrides: &mut Overrides) {
        overrides.ring(RING_MAP, options.ring_bytes.unwrap_or(RING_BYTES));
        overrides.global_u32(
            lavtrace_common::gc::SUSPEND_SIGNAL,
            options.gc_signals.suspend,
        );
        overrides.global_u32(
            lavtrace_common::gc::RESTART_SIGNAL,
            options.gc_signals.restart,
        );
        hooks::overrides(overrides);
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        let (hooks, notes) = hooks::attach(ebpf, pid)?;
        let now = now_ns();
        let state = Arc::new(Mutex::new(State {
            pending: BTreeMap::new(),
            done: Vec::new(),
            cut: None,
            names: ThreadNames::seed(pid),
            slow: options
                .gc_slow
                .map(|d: Duration| report::SlowLog::new(d, options.json)),
            interval_start_ns: now,
            attach_ns: now,
            whole: report::Totals::default(),
            orphans: 0,
        }));
        let sink = state.clone();
        let drain = spawn_drain::<GcRecord, _>(ebpf, RING_MAP, move |r| lock(&sink).on_record(r))
            .context("draining the gc ring")?;
        Ok((
            Tracer {
                state,
                drain: Arc::new(drain),
                signals: options.gc_signals,
                notes,
            },
            hooks,
        ))
    }
}

impl family::Tracer for Tracer {
    fn flush(&self) -> Flush<'_> {
        Box::pin(self.drain.flush())
    }

    fn cut(&mut self, at_ns: u64) {
        lock(&self.state).cut = Some(at_ns);
    }

    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let malformed = self
            .drain
            .stats
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut st = lock(&self.state);
        let section = match window {
            Window::Interval => {
                let end = st.cut.unwrap_or_else(now_ns);
                let pauses = st.take_window();
                let wall = end.saturating_sub(st.interval_start_ns);
                st.interval_start_ns = end;
                let totals = report::Totals::of(&pauses);
                st.whole.merge(&totals, &pauses);
                Section::new(&totals, pauses, wall, self.signals)
            }
            Window::Whole => {
                // The end of the run: a pause whose last thread never resumed is joined from
                // what came, rather than dropped.
                let open: Vec<u64> = st
                    .pending
                    .iter()
                    .filter(|(_, p)| p.pause.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                for k in open {
                    st.finish(k);
                }
                let rest = std::mem::take(&mut st.done);
                let totals = report::Totals::of(&rest);
                st.whole.merge(&totals, &rest);
                let wall = now_ns().saturating_sub(st.attach_ns);
                let log = st.whole.log.clone();
                Section::new(&st.whole.clone(), log, wall, self.signals)
            }
        };
        let orphans = st.orphans;
        Ok(Some(Part {
            section: Box::new(section),
            lost_since_attach: kernel_lost + malformed + orphans,
        }))
    }

    fn check_notes(&self, _in_use: &[Hook]) -> Vec<(String, String)> {
        let mut notes = vec![(
            "(signals)".to_string(),
            format!(
                "{} (lavtrace trace --gc-signals SUSPEND,RESTART to change)",
                self.signals.describe()
            ),
        )];
        notes.extend(self.notes.iter().cloned());
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(Signals::parse("SIGPWR,SIGXCPU"), Ok(Signals::default()));
        assert_eq!(
            Signals::parse("usr1, 12"),
            Ok(Signals {
                suspend: 10,
                restart: 12
            })
        );
        assert!(Signals::parse("SIGPWR").is_err());
        assert!(Signals::parse("SIGPWR,SIGPWR").is_err());
        assert!(Signals::parse("9,SIGXCPU").is_err());
        assert!(Signals::parse("SIGNOPE,1").is_err());
        assert_eq!(signal_name(30), "SIGPWR");
    }
}
