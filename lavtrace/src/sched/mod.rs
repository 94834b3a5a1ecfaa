//! Probe family `sched`: per thread of the target, on-CPU time, run-queue latency, time
//! sleeping and blocked in D, voluntary and involuntary switches. Kept per thread in the
//! kernel (`lavtrace-ebpf/src/sched.rs`), read and differenced here once per interval.

mod report;

use std::{collections::HashMap, sync::OnceLock};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use lavtrace_common::sched::{DIAG_MAP, THREADS_MAP, ThreadSched, diag, state};
use tracing::debug;

pub use report::ThreadRow;

use crate::{
    family::{self, Family, Options, Part, TextOptions, Window},
    kernel::{Hook, Overrides, attach_raw_tracepoint, attach_tracepoint, cut::now_ns},
    threads::ThreadNames,
};

pub const FAMILY: &str = "sched";

/// Which hooks carry the family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HookChoice {
    /// Raw tracepoints where BTF gives the task offsets, else the sched:* tracepoints.
    #[default]
    Auto,
    /// sched:* tracepoints only (covers the fallback in tests).
    Tracepoint,
}

/// The raw programs' (name, raw tracepoint) and the classic ones' (name, sched:event).
const RAW: [(&str, &str); 3] = [
    ("sched_switch_raw", "sched_switch"),
    ("sched_wakeup_raw", "sched_wakeup"),
    ("sched_wakeup_new_raw", "sched_wakeup_new"),
];
const CLASSIC: [&str; 3] = ["sched_switch", "sched_wakeup", "sched_wakeup_new"];

/// `struct task_struct` offsets for the raw programs: (pid, state), or why there are none.
fn task_offsets() -> &'static Result<(u32, u32), String> {
    static OFFSETS: OnceLock<Result<(u32, u32), String>> = OnceLock::new();
    OFFSETS.get_or_init(|| {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("no BTF (/sys/kernel/btf/vmlinux: {e})"))?;
        let found = crate::tcp::btf::member_offsets(
            &data,
            "task_struct",
            &["pid", "tgid", "__state", "state"],
        )
        .map_err(|e| format!("BTF: {e:#}"))?;
        let (Some(pid), Some(tgid)) = (found[0], found[1]) else {
            return Err("struct task_struct has no pid/tgid in BTF".into());
        };
        // One 8-byte read takes both.
        if tgid != pid + 4 {
            return Err(format!(
                "struct task_struct: tgid at {tgid} does not follow pid at {pid}"
            ));
        }
        let state = found[2]
            .or(found[3])
            .ok_or("struct task_struct has no __state or state in BTF")?;
        Ok((pid as u32, state as u32))
    })
}

/// A window of the family: every thread of the target that did anything in it.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub threads: Vec<ThreadRow>,
    /// Events of threads the full kernel table could not hold (since attach).
    pub table_full: u64,
    /// Events whose program the kernel skipped (since attach; see `Tracer::section`).
    pub missed: u64,
}

impl family::Section for Section {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            threads: &'a [ThreadRow],
            table_full: u64,
            missed: u64,
        }
        family::one_key(
            "sched",
            &Json {
                threads: &self.threads,
                table_full: self.table_full,
                missed: self.missed,
            },
        )
    }

    fn pane(&self) -> Option<family::TablePane> {
        Some(report::pane(&self.threads, self.missed))
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        report::write_text(out, &self.threads, text.sort, text.top);
        use std::fmt::Write as _;
        if self.table_full > 0 {
            let _ = writeln!(
                out,
                "KERNEL TABLE FULL: {} events of threads the table could not hold ({} threads)",
                self.table_full,
                lavtrace_common::sched::MAX_THREADS
            );
        }
        if self.missed > 0 {
            let _ = writeln!(
                out,
                "MISSED: {} scheduler events skipped by the kernel (another BPF program or map \
                 operation was running on that CPU); the figures around them are not exact",
                self.missed
            );
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const ABOUT: &'static str = "Per thread: on-CPU time, run-queue latency, sleep and D time, \
                                 context switches (opt-in: runs on every context switch)";
    const DEFAULT: bool = false;
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::sched::FIELDS;

    fn overrides(options: &Options, overrides: &mut Overrides) {
        if options.sched_hooks == HookChoice::Tracepoint {
            return;
        }
        if let Ok((pid, state)) = task_offsets() {
            overrides.global_u32(lavtrace_common::sched::TASK_PID_OFFSET, *pid);
            overrides.global_u32(lavtrace_common::sched::TASK_STATE_OFFSET, *state);
        }
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        Tracer::start(ebpf, pid, options.sched_hooks)
    }
}

pub struct Tracer {
    threads: BpfHashMap<MapData, u32, ThreadSched>,
    diag: PerCpuArray<MapData, u64>,
    names: ThreadNames,
    /// Each thread's figures at the previous reading (the open state's part included).
    last: HashMap<u32, ThreadSched>,
    /// Each thread's figures over every window read: the summary is what the intervals showed.
    whole: HashMap<u32, ThreadSched>,
    /// The last state seen per thread.
    states: HashMap<u32, u32>,
    /// Why the raw set is not in use (for `check`).
    raw_unavailable: Option<String>,
}

impl Tracer {
    fn start(ebpf: &mut Ebpf, pid: u32, hooks: HookChoice) -> Result<(Tracer, Vec<Hook>)> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let mut threads: BpfHashMap<MapData, u32, ThreadSched> =
            BpfHashMap::try_from(take(ebpf, THREADS_MAP)?)?;
        // Seeded before anything is attached: the classic programs know a thread only by its
        // entry. BPF_NOEXIST: a thread the kernel already added keeps its entry.
        seed(&mut threads, pid);
        let raw = match (hooks, task_offsets()) {
            (HookChoice::Tracepoint, _) => Err("--sched-hooks tracepoint".to_string()),
            (HookChoice::Auto, Err(why)) => Err(why.clone()),
            (HookChoice::Auto, Ok(_)) => attach_raw(ebpf).map_err(|e| format!("{e:#}")),
        };
        let (hooks, raw_unavailable) = match raw {
            Ok(hooks) => (hooks, None),
            Err(why) => {
                debug!("sched: not on raw tracepoints ({why}); using sched:* tracepoints");
                let mut hooks = Vec::new();
                for event in CLASSIC {
                    hooks.push(attach_tracepoint(ebpf, FAMILY, event, "sched", event)?);
                }
                (hooks, Some(why))
            }
        };
        let tracer = Tracer {
            threads,
            diag: PerCpuArray::try_from(take(ebpf, DIAG_MAP)?)?,
            names: ThreadNames::seed(pid),
            last: HashMap::new(),
            whole: HashMap::new(),
            states: HashMap::new(),
            raw_unavailable,
        };
        Ok((tracer, hooks))
    }

    fn table_full(&self) -> u64 {
        self.diag
            .get(&diag::TABLE_FULL, 0)
            .map_or(0, |v| v.iter().sum())
    }

    /// Every thread's figures now, the open state's part counted up to the reading; the
    /// entries of exited threads are removed once read (their figures are final).
    fn read(&mut self) -> Result<HashMap<u32, ThreadSched>> {
        let mut cur = HashMap::new();
        let mut exited = Vec::new();
        for entry in self.threads.iter() {
            let Ok((tid, t)) = entry else {
                // An entry removed between the key walk and its lookup (a reused tid): skip it.
                debug!("sched: skipping an entry that changed while read");
                continue;
            };
            let now = now_ns();
            if t.state == state::EXITED {
                exited.push(tid);
            }
            cur.insert(tid, with_open_state(&t, now));
        }
        for tid in exited {
            let _ = self.threads.remove(&tid);
        }
        Ok(cur)
    }

    fn interval(&mut self) -> Result<Vec<ThreadRow>> {
        let cur = self.read()?;
        let mut rows = Vec::new();
        for (tid, c) in &cur {
            let w = match self.last.get(tid) {
                Some(l) => since(c, l),
                None => *c,
            };
            self.states.insert(*tid, c.state);
            let acc = self.whole.entry(*tid).or_default();
            *acc = add(acc, &w);
            if c.state == state::EXITED {
                self.last.remove(tid);
            } else {
                self.last.insert(*tid, *c);
            }
            if active(&w) {
                rows.push(self.row(*tid, &w, c.state));
            }
        }
        report::sort_default(&mut rows);
        Ok(rows)
    }

    fn summary(&mut self) -> Vec<ThreadRow> {
        let whole: Vec<(u32, ThreadSched)> = self
            .whole
            .iter()
            .filter(|(_, w)| active(w))
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut rows: Vec<ThreadRow> = whole
            .into_iter()
            .map(|(tid, w)| {
                let st = self.states.get(&tid).copied().unwrap_or(state::UNKNOWN);
                self.row(tid, &w, st)
            })
            .collect();
        report::sort_default(&mut rows);
        rows
    }

    fn row(&mut self, tid: u32, w: &ThreadSched, st: u32) -> ThreadRow {
        ThreadRow::new(tid, self.names.name(tid).map(|n| n.to_string()), w, st)
    }
}

impl family::Tracer for Tracer {
    /// `kernel_lost`: the runs of this family's programs the kernel skipped (the session reads
    /// them, `kernel::recursion_misses`): a BPF program was already running on that CPU (for
    /// the classic tracepoints, any tracing program or a bpf() map operation of any process,
    /// which holds the same per-cpu guard and can be preempted). Each is a switch or wakeup
    /// not seen, so the figures around it are not exact.
    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let threads = match window {
            Window::Interval => self.interval()?,
            Window::Whole => self.summary(),
        };
        let table_full = self.table_full();
        let missed = kernel_lost;
        Ok(Some(Part {
            section: Box::new(Section {
                threads,
                table_full,
                missed,
            }),
            lost_since_attach: table_full + missed,
        }))
    }

    /// The set not in use: why the raw one is not, or that the classic one is the fallback.
    fn check_notes(&self, _in_use: &[Hook]) -> Vec<(String, String)> {
        match &self.raw_unavailable {
            Some(why) => RAW
                .iter()
                .map(|(p, tp)| {
                    (
                        p.to_string(),
                        format!("unavailable: raw_tracepoint {tp}: {why}"),
                    )
                })
                .collect(),
            None => CLASSIC
                .iter()
                .map(|e| {
                    (
                        e.to_string(),
                        format!("available via tracepoint sched:{e} (not in use: the fallback)"),
                    )
                })
                .collect(),
        }
    }
}

/// Puts an entry for every thread the target has now, so the classic programs know them.
fn seed(threads: &mut BpfHashMap<MapData, u32, ThreadSched>, pid: u32) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for tid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        // BPF_NOEXIST (1): an entry the kernel made meanwhile is newer than ours.
        if let Err(e) = threads.insert(tid, ThreadSched::default(), 1) {
            debug!("sched: not seeding thread {tid}: {e}");
        }
    }
}

/// All three raw programs or none: a half-attached set would count switches without wakeups.
fn attach_raw(ebpf: &mut Ebpf) -> Result<Vec<Hook>> {
    let mut hooks = Vec::new();
    for (program, tp) in RAW {
        match attach_raw_tracepoint(ebpf, FAMILY, program, tp) {
            Ok(h) => hooks.push(h),
            Err(e) => {
                for h in &hooks {
                    if let Some(prog) = ebpf.program_mut(h.program) {
                        let prog: Result<&mut aya::programs::RawTracePoint, _> = prog.try_into();
                        if let Ok(prog) = prog {
                            let _ = prog.unload();
                        }
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(hooks)
}

/// `t` with the time since it entered its current state (up to `now`) added to that
/// state's figure: a thread blocked for a minute shows in every interval of that minute, not
/// only in the one in which it wakes. Waits in the run queue count when they end (they are a
/// histogram of whole waits).
fn with_open_state(t: &ThreadSched, now: u64) -> ThreadSched {
    let mut out = *t;
    let open = now.saturating_sub(t.since_ns);
    match t.state {
        state::ON_CPU => out.on_cpu_ns += open,
        state::SLEEP => out.sleep_ns += open,
        state::BLOCKED => out.blocked_ns += open,
        _ => {}
    }
    out
}

/// What happened between two readings of one thread. A thread whose counters went back is a
/// new thread with a reused tid: all of `cur` is new.
fn since(cur: &ThreadSched, prev: &ThreadSched) -> ThreadSched {
    if cur.voluntary + cur.involuntary < prev.voluntary + prev.involuntary
        || cur.runq_count < prev.runq_count
    {
        return *cur;
    }
    let mut w = ThreadSched {
        since_ns: cur.since_ns,
        state: cur.state,
        unwoken: cur.unwoken.saturating_sub(prev.unwoken),
        on_cpu_ns: cur.on_cpu_ns.saturating_sub(prev.on_cpu_ns),
        sleep_ns: cur.sleep_ns.saturating_sub(prev.sleep_ns),
        blocked_ns: cur.blocked_ns.saturating_sub(prev.blocked_ns),
        voluntary: cur.voluntary - prev.voluntary,
        involuntary: cur.involuntary - prev.involuntary,
        runq_count: cur.runq_count - prev.runq_count,
        runq_total_ns: cur.runq_total_ns.saturating_sub(prev.runq_total_ns),
        runq_max_ns: 0,
        runq_buckets: [0; lavtrace_common::sched::RUNQ_BUCKETS],
    };
    for (i, b) in w.runq_buckets.iter_mut().enumerate() {
        *b = cur.runq_buckets[i].saturating_sub(prev.runq_buckets[i]);
    }
    // As the syscall windows: a new maximum is exact, else bounded by the highest bucket.
    w.runq_max_ns = if cur.runq_max_ns > prev.runq_max_ns {
        cur.runq_max_ns
    } else {
        w.runq_buckets.iter().rposition(|&n| n > 0).map_or(0, |i| {
            crate::syscalls::stats::bucket_upper(i).min(cur.runq_max_ns)
        })
    };
    w
}

/// Two windows of one thread together.
fn add(a: &ThreadSched, b: &ThreadSched) -> ThreadSched {
    let mut out = ThreadSched {
        since_ns: b.since_ns,
        state: b.state,
        unwoken: a.unwoken + b.unwoken,
        on_cpu_ns: a.on_cpu_ns + b.on_cpu_ns,
        sleep_ns: a.sleep_ns + b.sleep_ns,
        blocked_ns: a.blocked_ns + b.blocked_ns,
        voluntary: a.voluntary + b.voluntary,
        involuntary: a.involuntary + b.involuntary,
        runq_count: a.runq_count + b.runq_count,
        runq_total_ns: a.runq_total_ns + b.runq_total_ns,
        runq_max_ns: a.runq_max_ns.max(b.runq_max_ns),
        runq_buckets: a.runq_buckets,
    };
    for (o, x) in out.runq_buckets.iter_mut().zip(b.runq_buckets.iter()) {
        *o += x;
    }
    out
}

/// Whether the thread did anything in the window.
fn active(w: &ThreadSched) -> bool {
    w.on_cpu_ns + w.sleep_ns + w.blocked_ns + w.voluntary + w.involuntary + w.runq_count > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(on_cpu: u64, vol: u64, runq: &[u64]) -> ThreadSched {
        let mut t = ThreadSched {
            on_cpu_ns: on_cpu,
            voluntary: vol,
            ..ThreadSched::default()
        };
        for &r in runq {
            t.runq_count += 1;
            t.runq_total_ns += r;
            t.runq_max_ns = t.runq_max_ns.max(r);
            t.runq_buckets[lavtrace_common::syscalls::latency_bucket(r)] += 1;
        }
        t
    }

    #[test]
    fn windows_subtract_and_add_up() {
        let a = thread(100, 2, &[1000]);
        let b = thread(250, 5, &[1000, 3000, 40]);
        let w = since(&b, &a);
        assert_eq!((w.on_cpu_ns, w.voluntary, w.runq_count), (150, 3, 2));
        assert_eq!(w.runq_max_ns, 3000, "a new maximum is exact");
        assert_eq!(add(&a, &w).runq_buckets, b.runq_buckets);
        // No new maximum: bounded by the top of the window's highest bucket.
        let c = thread(300, 6, &[1000, 3000, 40, 50]);
        assert_eq!(since(&c, &b).runq_max_ns, 63);
    }

    #[test]
    fn a_reused_tid_starts_afresh() {
        let old = thread(100, 9, &[1000, 1000]);
        let new = thread(10, 1, &[500]);
        assert_eq!(since(&new, &old), new);
    }

    #[test]
    fn the_open_state_counts_up_to_the_reading() {
        let t = ThreadSched {
            since_ns: 1_000,
            state: state::BLOCKED,
            blocked_ns: 50,
            ..ThreadSched::default()
        };
        assert_eq!(with_open_state(&t, 1_500).blocked_ns, 550);
        let q = ThreadSched {
            state: state::RUNQ,
            since_ns: 1_000,
            ..ThreadSched::default()
        };
        assert_eq!(with_open_state(&q, 5_000), q);
        // A reading older than the state (clock read before the kernel's) adds nothing.
        assert_eq!(with_open_state(&t, 900).blocked_ns, 50);
    }
}
