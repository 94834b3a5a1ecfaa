//! Probe family `syscalls`: every syscall of the target, counted and timed in the kernel
//! (`lavtrace-ebpf/src/syscalls.rs`), read and differenced here once per interval.

mod report;
pub mod sample;
pub mod stats;
pub mod threads;

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use lavtrace_common::syscalls::{
    ErrnoKey, MAX_ERRNO_KEYS, MAX_SYSCALLS, MAX_THREAD_KEYS, MAX_THREADS, SyscallStats, diag,
};

pub(crate) use report::histogram;
pub use report::{ErrnoCount, SyscallRow, sort_rows, write_text};

use tracing::debug;

use crate::{
    family::{self, Family, Options, Part, TextOptions, Window},
    kernel::{Hook, Overrides, attach_raw_tracepoint, attach_tracepoint},
};

pub const FAMILY: &str = "syscalls";

/// Which hooks carry the family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HookChoice {
    /// Raw tracepoints sys_enter/sys_exit, else raw_syscalls:sys_enter/sys_exit.
    #[default]
    Auto,
    /// raw_syscalls:sys_enter/sys_exit only (covers the fallback in tests).
    Tracepoint,
}

/// A window of the family: every syscall, and (`--per-thread`) every thread.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub rows: Vec<SyscallRow>,
    pub threads: Option<Vec<threads::ThreadRow>>,
    /// Calls a full kernel table could not hold, in the window.
    pub table_full: TableFull,
    /// `--syscalls-sample`: the rows are estimates, scaled from this share of the window.
    pub sampled: Option<sample::Sampled>,
}

/// Calls that a full kernel table could not hold: shown (JSON `table_full`, a text line)
/// whenever one is non-zero, so a full table never passes for calls that did not happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableFull {
    /// Calls left untimed and uncounted: the table of calls in progress was full
    /// (`MAX_THREADS` threads inside a syscall at once).
    pub calls_in_progress: u64,
    /// Calls counted in `syscalls` but missing from `threads`: the per-thread table was full
    /// (`MAX_THREAD_KEYS` (thread, syscall) pairs).
    pub threads: u64,
    /// Failing calls counted whose errno is missing from `top_errno`: the errno table was full.
    pub errnos: u64,
}

impl TableFull {
    fn any(&self) -> bool {
        *self != TableFull::default()
    }

    fn since(&self, prev: &TableFull) -> TableFull {
        TableFull {
            calls_in_progress: self
                .calls_in_progress
                .saturating_sub(prev.calls_in_progress),
            threads: self.threads.saturating_sub(prev.threads),
            errnos: self.errnos.saturating_sub(prev.errnos),
        }
    }

    fn write_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut parts = Vec::new();
        if self.calls_in_progress > 0 {
            parts.push(format!(
                "{} calls untimed (calls in progress, {MAX_THREADS} threads)",
                self.calls_in_progress
            ));
        }
        if self.threads > 0 {
            parts.push(format!(
                "{} calls missing from the thread table ({MAX_THREAD_KEYS} thread/syscall pairs)",
                self.threads
            ));
        }
        if self.errnos > 0 {
            parts.push(format!(
                "{} errnos not kept ({MAX_ERRNO_KEYS} syscall/errno pairs)",
                self.errnos
            ));
        }
        let _ = writeln!(out, "KERNEL TABLE FULL: {}", parts.join(", "));
    }
}

impl family::Section for Section {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        let mut keys = family::one_key("syscalls", &self.rows)?;
        if let Some(threads) = &self.threads {
            keys.extend(family::one_key("threads", threads)?);
        }
        if self.table_full.any() {
            keys.extend(family::one_key("table_full", &self.table_full)?);
        }
        if let Some(sampled) = &self.sampled {
            keys.extend(family::one_key("syscalls_sampled", sampled)?);
        }
        Ok(keys)
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        write_text(out, &self.rows, text.sort, text.top);
        if let Some(s) = &self.sampled {
            use std::fmt::Write as _;
            let _ = writeln!(
                out,
                "SAMPLED: the syscall hooks were attached {}ms of every {}ms ({:.1} % of this window): \
                 counts and times above are estimates, scaled ×{:.2}; latencies are of the calls seen",
                s.on_ms,
                s.every_ms,
                s.attached_share * 100.0,
                s.scale
            );
        }
        if let Some(rows) = &self.threads {
            threads::write_text(out, rows, text.sort, text.top);
        }
        if self.table_full.any() {
            self.table_full.write_text(out);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const SYSCALL_SLOW_PATH: bool = true;
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::syscalls::FIELDS;
    const ABOUT: &'static str = "Every syscall: count, errors, latency (in-kernel aggregation)";

    /// The per-thread table is a read-only global, so the verifier prunes it when off.
    fn overrides(options: &Options, overrides: &mut Overrides) {
        overrides.global_u8(
            lavtrace_common::syscalls::PER_THREAD,
            u8::from(options.per_thread),
        );
        overrides.global_u32(lavtrace_common::syscalls::EXIT_NR, libc::SYS_exit as u32);
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        Tracer::start(
            ebpf,
            options.per_thread,
            pid,
            options.syscalls_hooks,
            options.syscalls_sample,
        )
    }
}

impl family::Tracer for Tracer {
    fn cut(&mut self, at_ns: u64) {
        let half = lavtrace_common::cut::half(at_ns, at_ns);
        self.closing = Some(half);
        if let Some(t) = self.threads.as_mut() {
            t.cut(half);
        }
    }

    /// Its losses are the syscalls it could not time or (--per-thread) place in the thread
    /// table; it has no ring.
    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let (rows, table_full) = match window {
            Window::Interval => {
                let halves = match self.closing.take() {
                    Some(h) => vec![h],
                    None => vec![0, 1],
                };
                (self.interval(&halves)?, self.full_window(&halves))
            }
            Window::Whole => (self.summary(), self.full_whole()),
        };
        let threads = self.threads(window == Window::Whole)?;
        let sampling = self.sampler.as_ref().map(|s| (s.attached_ns(), s.duty()));
        let (rows, sampled) = match sampling {
            Some((attached, duty)) => {
                let (window_ns, attached_ns) = self.sampled_window(attached, window);
                let (rows, sampled) = sample::scale(rows, window_ns, attached_ns, duty);
                (rows, Some(sampled))
            }
            None => (rows, None),
        };
        // Lost: syscalls left untimed, (--per-thread) syscalls missing from the thread table,
        // as of the last cut, and program runs the kernel skipped (the session turns it into
        // the window's figure).
        let whole = self.full_whole();
        let untimed = whole.calls_in_progress + whole.threads;
        Ok(Some(Part {
            section: Box::new(Section {
                rows,
                threads,
                table_full,
                sampled,
            }),
            lost_since_attach: untimed + kernel_lost,
        }))
    }
}

/// Cumulative kernel counters, merged across CPUs: each half's as of its last reading, and
/// the errno counts (one set for both halves) as of the last interval.
#[derive(Clone, Default)]
struct Snapshot {
    per_nr: Vec<SyscallStats>,
    errnos: HashMap<ErrnoKey, u64>,
}

impl Snapshot {
    fn zero() -> Snapshot {
        Snapshot {
            per_nr: vec![SyscallStats::default(); MAX_SYSCALLS as usize],
            errnos: HashMap::new(),
        }
    }
}

pub struct Tracer {
    stats: PerCpuArray<MapData, SyscallStats>,
    errnos: PerCpuHashMap<MapData, ErrnoKey, u64>,
    diag: PerCpuArray<MapData, u64>,
    /// Each half of the counters (`lavtrace_common::cut`) as last read.
    halves: [Vec<SyscallStats>; 2],
    errnos_last: HashMap<ErrnoKey, u64>,
    /// The half the pending cut closes (`Tracer::cut`).
    closing: Option<u32>,
    /// Each half of the kernel's table-full counters as last read.
    full_last: [TableFull; 2],
    /// `--per-thread` only.
    threads: Option<threads::Threads>,
    /// `--syscalls-sample` only.
    sampler: Option<sample::Sampler>,
    /// When the family attached, when the last interval ended, and the sampler's attached
    /// time then: each window's share.
    attached_at: std::time::Instant,
    last_window: (std::time::Instant, u64),
}

impl Tracer {
    /// `per_thread`: the object was loaded with the per-thread table on (`Family::overrides`);
    /// `pid` names its threads.
    fn start(
        ebpf: &mut Ebpf,
        per_thread: bool,
        pid: u32,
        hooks: HookChoice,
        sample: Option<sample::Duty>,
    ) -> Result<(Tracer, Vec<Hook>)> {
        let (sampler, hooks) = match sample {
            Some(duty) => {
                let sampler = sample::Sampler::start(ebpf, duty)?;
                let via = |tp: &str| {
                    format!(
                        "raw tracepoint {tp} (sampled {}ms of every {}ms)",
                        duty.on.as_millis(),
                        duty.every.as_millis()
                    )
                };
                let hooks = vec![
                    Hook {
                        family: FAMILY,
                        program: "syscalls_exit_raw",
                        via: via("sys_exit"),
                    },
                    Hook {
                        family: FAMILY,
                        program: "syscalls_enter_raw",
                        via: via("sys_enter"),
                    },
                ];
                (Some(sampler), hooks)
            }
            None => (None, Self::attach_exact(ebpf, hooks)?),
        };
        Self::with_maps(ebpf, per_thread, pid, sampler, hooks)
    }

    fn attach_exact(ebpf: &mut Ebpf, hooks: HookChoice) -> Result<Vec<Hook>> {
        let raw = match hooks {
            HookChoice::Auto => attach_raw(ebpf),
            HookChoice::Tracepoint => Err(anyhow::anyhow!("--syscalls-hooks tracepoint")),
        };
        let hooks = match raw {
            Ok(hooks) => hooks,
            Err(e) => {
                debug!("not on raw tracepoints ({e:#}); using raw_syscalls tracepoints");
                vec![
                    attach_tracepoint(ebpf, FAMILY, "syscalls_exit", "raw_syscalls", "sys_exit")?,
                    attach_tracepoint(ebpf, FAMILY, "syscalls_enter", "raw_syscalls", "sys_enter")?,
                ]
            }
        };
        Ok(hooks)
    }

    fn with_maps(
        ebpf: &mut Ebpf,
        per_thread: bool,
        pid: u32,
        sampler: Option<sample::Sampler>,
        hooks: Vec<Hook>,
    ) -> Result<(Tracer, Vec<Hook>)> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let zero = vec![SyscallStats::default(); MAX_SYSCALLS as usize];
        let tracer = Tracer {
            stats: PerCpuArray::try_from(take(ebpf, "SYSCALLS_STATS")?)?,
            errnos: PerCpuHashMap::try_from(take(ebpf, "SYSCALLS_ERRNOS")?)?,
            diag: PerCpuArray::try_from(take(ebpf, "SYSCALLS_DIAG")?)?,
            halves: [zero.clone(), zero],
            errnos_last: HashMap::new(),
            closing: None,
            full_last: [TableFull::default(); 2],
            threads: match per_thread {
                true => Some(threads::Threads::new(
                    PerCpuHashMap::try_from(take(ebpf, "SYSCALLS_THREADS")?)?,
                    pid,
                )),
                false => None,
            },
            sampler,
            attached_at: std::time::Instant::now(),
            last_window: (std::time::Instant::now(), 0),
        };
        Ok((tracer, hooks))
    }

    /// (window length, hooks attached in it), in ns; an interval moves the window on.
    fn sampled_window(&mut self, attached: u64, window: Window) -> (u64, u64) {
        let now = std::time::Instant::now();
        match window {
            Window::Whole => (
                now.duration_since(self.attached_at).as_nanos() as u64,
                attached,
            ),
            Window::Interval => {
                let (since, attached_then) =
                    std::mem::replace(&mut self.last_window, (now, attached));
                (
                    now.duration_since(since).as_nanos() as u64,
                    attached.saturating_sub(attached_then),
                )
            }
        }
    }

    fn read_errnos(&self) -> Result<HashMap<ErrnoKey, u64>> {
        let mut errnos = HashMap::new();
        for entry in self.errnos.iter() {
            let (key, counts) = entry.context("reading syscall errno counts")?;
            if returns_error_codes(key.nr) {
                errnos.insert(key, counts.iter().sum());
            }
        }
        Ok(errnos)
    }

    /// One half of the per-syscall counters, merged across CPUs.
    fn read_half(&self, half: u32) -> Result<Vec<SyscallStats>> {
        let mut per_nr = Vec::with_capacity(MAX_SYSCALLS as usize);
        for nr in 0..MAX_SYSCALLS {
            let slots = self
                .stats
                .get(&(half * MAX_SYSCALLS + nr), 0)
                .with_context(|| format!("reading syscall stats for {nr}"))?;
            let mut merged = stats::merge_cpus(slots.iter());
            if !returns_error_codes(nr) {
                merged.errors = 0;
            }
            per_nr.push(merged);
        }
        Ok(per_nr)
    }

    /// One half of the kernel's table-full counters.
    fn read_full(&self, half: u32) -> TableFull {
        let get = |i: u32| {
            self.diag
                .get(&(half * diag::LEN + i), 0)
                .map_or(0, |v| v.iter().sum::<u64>())
        };
        TableFull {
            calls_in_progress: get(diag::START_TABLE_FULL),
            threads: get(diag::THREAD_TABLE_FULL),
            errnos: get(diag::ERRNO_TABLE_FULL),
        }
    }

    /// The table-full counts of the window closing `halves`.
    fn full_window(&mut self, halves: &[u32]) -> TableFull {
        let mut w = TableFull::default();
        for &h in halves {
            let cur = self.read_full(h);
            let d = cur.since(&self.full_last[h as usize]);
            w.calls_in_progress += d.calls_in_progress;
            w.threads += d.threads;
            w.errnos += d.errnos;
            self.full_last[h as usize] = cur;
        }
        w
    }

    /// Every closed interval's table-full counts.
    fn full_whole(&self) -> TableFull {
        let [a, b] = &self.full_last;
        TableFull {
            calls_in_progress: a.calls_in_progress + b.calls_in_progress,
            threads: a.threads + b.threads,
            errnos: a.errnos + b.errnos,
        }
    }

    /// Rows for the window closing `halves` (the one the last cut closed; without a cut, both:
    /// everything since the previous call).
    fn interval(&mut self, halves: &[u32]) -> Result<Vec<SyscallRow>> {
        // Errnos first: the kernel bumps them right after `errors`, so reading them first keeps
        // a syscall's errno counts from running ahead of its error count.
        let errnos = self.read_errnos()?;
        let mut window = Snapshot::zero();
        for &h in halves {
            let cur = self.read_half(h)?;
            let last = &mut self.halves[h as usize];
            for (nr, w) in window.per_nr.iter_mut().enumerate() {
                *w = stats::merge_cpus([&*w, &stats::window(&cur[nr], &last[nr])]);
            }
            *last = cur;
        }
        window.errnos = errnos;
        let prev = Snapshot {
            per_nr: Vec::new(),
            errnos: std::mem::take(&mut self.errnos_last),
        };
        let rows = rows(&window, &prev);
        self.errnos_last = window.errnos;
        Ok(rows)
    }

    /// `--per-thread`: threads since the previous call, or (`whole`) since attach.
    fn threads(&mut self, whole: bool) -> Result<Option<Vec<threads::ThreadRow>>> {
        self.threads.as_mut().map(|t| t.rows(whole)).transpose()
    }

    /// Rows for the whole run: the sum of the intervals read (the session closes a last one
    /// before it asks), so the summary is exactly what the intervals showed.
    fn summary(&self) -> Vec<SyscallRow> {
        let whole = Snapshot {
            per_nr: self.halves[0]
                .iter()
                .zip(self.halves[1].iter())
                .map(|(a, b)| stats::merge_cpus([a, b]))
                .collect(),
            errnos: self.errnos_last.clone(),
        };
        rows(&whole, &Snapshot::default())
    }
}

/// Whether a return in -4095..-1 from syscall `nr` is an error. The kernel counts every such
/// return as one (it cannot tell), so readers drop the counts of the exceptions: the
/// sigreturns return the interrupted syscall's value (often -EINTR or -ERESTARTSYS when a
/// handler interrupted a wait). Numbers of the host's syscall table, which is the target's.
pub(crate) fn returns_error_codes(nr: u32) -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "arm"))]
    if i64::from(nr) == libc::SYS_sigreturn {
        return false;
    }
    i64::from(nr) != libc::SYS_rt_sigreturn
}

/// Rows of a window: `window.per_nr` holds the window's own counts; the errno counts are
/// cumulative, `prev` the reading at the window's start.
fn rows(window: &Snapshot, prev: &Snapshot) -> Vec<SyscallRow> {
    let mut out: Vec<SyscallRow> = window
        .per_nr
        .iter()
        .enumerate()
        .filter(|(_, w)| w.count > 0)
        .map(|(nr, w)| SyscallRow::new(nr as u32, w, top_errno(nr as u32, window, prev)))
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
    out
}

fn top_errno(nr: u32, cur: &Snapshot, prev: &Snapshot) -> Option<ErrnoCount> {
    cur.errnos
        .iter()
        .filter(|(k, _)| k.nr == nr)
        .map(|(k, &n)| {
            (
                k.errno,
                n.saturating_sub(prev.errnos.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|&(_, n)| n > 0)
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(errno, count)| ErrnoCount::new(errno, count))
}

/// The cheaper pair, on the raw `sys_enter`/`sys_exit` tracepoints (4.17+). Both or neither:
/// an exit program left attached alone would never count anything, but the classic pair
/// attached next to it must not see a half-attached raw pair either.
fn attach_raw(ebpf: &mut Ebpf) -> Result<Vec<Hook>> {
    let exit = attach_raw_tracepoint(ebpf, FAMILY, "syscalls_exit_raw", "sys_exit")?;
    match attach_raw_tracepoint(ebpf, FAMILY, "syscalls_enter_raw", "sys_enter") {
        Ok(enter) => Ok(vec![exit, enter]),
        Err(e) => {
            if let Some(prog) = ebpf.program_mut("syscalls_exit_raw") {
                let prog: Result<&mut aya::programs::RawTracePoint, _> = prog.try_into();
                if let Ok(prog) = prog {
                    let _ = prog.unload();
                }
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_the_window_with_the_top_errno_of_the_window() {
        let close = libc::SYS_close as u32;
        let prev = Snapshot {
            per_nr: Vec::new(),
            errnos: [(
                ErrnoKey {
                    nr: close,
                    errno: 9,
                },
                2,
            )]
            .into(),
        };
        let mut window = Snapshot::zero();
        window.per_nr[close as usize].count = 5;
        window.per_nr[close as usize].errors = 3;
        window.errnos = [
            (
                ErrnoKey {
                    nr: close,
                    errno: 9,
                },
                3,
            ),
            (
                ErrnoKey {
                    nr: close,
                    errno: 4,
                },
                2,
            ),
        ]
        .into();
        let rows = rows(&window, &prev);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "close");
        assert_eq!(rows[0].count, 5);
        assert_eq!(rows[0].errors, 3);
        let top = rows[0].top_errno.as_ref().unwrap();
        // EINTR went 0 → 2 in this window, EBADF only 2 → 3.
        assert_eq!((top.name.as_str(), top.count), ("EINTR", 2));
    }
}
