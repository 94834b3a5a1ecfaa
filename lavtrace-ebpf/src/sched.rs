//! Probe family `sched`: where each thread of the target spends its time (on a CPU, runnable
//! in the run queue, sleeping, blocked in D) and how it leaves the CPU.
//!
//! sched_switch runs for every context switch of every process on the host, so the filter
//! comes first and is cheap. Two program sets do the same work: on the raw tracepoints
//! `sched_switch`, `sched_wakeup`, `sched_wakeup_new` (no record is built; the programs get
//! task pointers and read `pid`/`tgid` at offsets userspace took from BTF, so the filter is a
//! compare of the tgid, no map lookup), and where those cannot attach on the classic
//! `sched:*` tracepoints, whose records carry only a tid: there the thread table itself is
//! the filter (one hash lookup per switch-in and wakeup on the host), seeded by userspace
//! from /proc and grown by the target's own sched_wakeup_new.
//!
//! Nothing is sent to userspace per event: one hash entry per thread holds its state and
//! cumulative figures; userspace reads the table once per interval.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};
use lavtrace_common::{
    sched::{MAX_THREADS, SwitchOut, ThreadSched, classify_raw, classify_reported, diag, state},
    syscalls::latency_bucket,
};

use crate::{
    field,
    filter::{current_target_task, target_tgid},
};

/// tid → its state and figures.
#[map]
static SCHED_THREADS: HashMap<u32, ThreadSched> = HashMap::with_max_entries(MAX_THREADS, 0);

#[map]
static SCHED_DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(diag::LEN, 0);

/// Byte offsets in `struct task_struct` (`lavtrace_common::sched::TASK_*_OFFSET`), set from
/// BTF at load; the raw programs are attached only after they are.
#[unsafe(no_mangle)]
static SCHED_TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static SCHED_TASK_STATE_OFFSET: u32 = 0;

field::offsets!(
    /// `pid_t prev_pid` of sched:sched_switch.
    SCHED_PREV_PID_OFFSET,
    /// `long prev_state` of sched:sched_switch.
    SCHED_PREV_STATE_OFFSET,
    /// `pid_t next_pid` of sched:sched_switch.
    SCHED_NEXT_PID_OFFSET,
    /// `pid_t pid` of sched:sched_wakeup and sched:sched_wakeup_new.
    SCHED_WAKEUP_PID_OFFSET,
);

#[inline(always)]
fn global(g: &'static u32) -> u32 {
    // SAFETY: a plain read of a global; volatile so the build-time placeholder is not folded.
    unsafe { core::ptr::read_volatile(g) }
}

/// (tid, tgid) of the task at `task`, read in one copy (`tgid` follows `pid`, checked at load).
#[inline(always)]
fn task_ids(task: *const u8) -> Option<(u32, u32)> {
    let at = task.wrapping_add(global(&SCHED_TASK_PID_OFFSET) as usize);
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one only fails.
    let ids = unsafe { bpf_probe_read_kernel(at as *const [u32; 2]) }.ok()?;
    Some((ids[0], ids[1]))
}

/// A task pointer argument's tid if the task is the target's.
#[inline(always)]
fn target_tid(task: *const u8) -> Option<u32> {
    let (tid, tgid) = task_ids(task)?;
    (tgid == target_tgid()).then_some(tid)
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...): prev
    // is current. prev_state is an argument only from 5.18, so it is read from the task.
    let now = now();
    if let Some((_, tid)) = current_target_task() {
        let preempt: u64 = ctx.arg(0);
        let prev: *const u8 = ctx.arg(1);
        let at = prev.wrapping_add(global(&SCHED_TASK_STATE_OFFSET) as usize);
        // SAFETY: as in `task_ids`.
        let task_state = unsafe { bpf_probe_read_kernel(at as *const u32) }.unwrap_or(0);
        switch_out(tid, now, classify_raw(preempt != 0, task_state));
    }
    let next: *const u8 = ctx.arg(2);
    if let Some(tid) = target_tid(next) {
        switch_in(tid, now, true);
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p); runs in the waker's context.
    let p: *const u8 = ctx.arg(0);
    if let Some(tid) = target_tid(p) {
        wakeup(tid, now(), false);
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    if let Some(tid) = target_tid(p) {
        wakeup(tid, now(), true);
    }
    0
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let now = now();
    if let Some((_, tid)) = current_target_task() {
        let prev_pid: u32 = field::read(&ctx, &SCHED_PREV_PID_OFFSET);
        // Current is prev; a mismatch would be a record of another switch (never seen).
        if prev_pid == tid {
            let prev_state: u64 = field::read(&ctx, &SCHED_PREV_STATE_OFFSET);
            switch_out(tid, now, classify_reported(prev_state));
        }
    }
    let next: u32 = field::read(&ctx, &SCHED_NEXT_PID_OFFSET);
    // The record has no tgid: the thread table is the filter (never insert here, or every
    // thread of the host would be added).
    if next != 0 {
        switch_in(next, now, false);
    }
    0
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let tid: u32 = field::read(&ctx, &SCHED_WAKEUP_PID_OFFSET);
    if tid != 0 {
        wakeup(tid, now(), false);
    }
    0
}

#[tracepoint]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    // The record has no tgid, but a new task is woken by its creator: a thread the target
    // creates is woken in the target's context (so is a child process it forks, which is then
    // counted as one of its threads: the record cannot tell them apart).
    if current_target_task().is_some() {
        let tid: u32 = field::read(&ctx, &SCHED_WAKEUP_PID_OFFSET);
        if tid != 0 {
            wakeup(tid, now(), true);
        }
    }
    0
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The entry of `tid`, added (in state UNKNOWN) when it is missing.
#[inline(always)]
fn entry(tid: u32) -> Option<*mut ThreadSched> {
    if let Some(t) = SCHED_THREADS.get_ptr_mut(tid) {
        return Some(t);
    }
    if SCHED_THREADS
        .insert(tid, ThreadSched::default(), 0)
        .is_err()
    {
        bump_diag(diag::TABLE_FULL);
        return None;
    }
    SCHED_THREADS.get_ptr_mut(tid)
}

/// The end of the thread's current state at `now`, added to the figure it belongs to.
#[inline(always)]
fn close_state(t: &mut ThreadSched, now: u64) {
    if t.state == state::UNKNOWN || t.state == state::EXITED {
        return;
    }
    let spent = now.saturating_sub(t.since_ns);
    match t.state {
        state::ON_CPU => t.on_cpu_ns += spent,
        state::SLEEP => t.sleep_ns += spent,
        state::BLOCKED => t.blocked_ns += spent,
        state::RUNQ => {
            t.runq_count += 1;
            t.runq_total_ns += spent;
            if spent > t.runq_max_ns {
                t.runq_max_ns = spent;
            }
            if let Some(b) = t.runq_buckets.get_mut(latency_bucket(spent)) {
                *b += 1;
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn switch_out(tid: u32, now: u64, how: SwitchOut) {
    let Some(t) = entry(tid) else {
        return;
    };
    // SAFETY: the map's value slot for this key, valid for this program run; the thread's
    // switches and wakeups are serialised by its run-queue lock.
    let t = unsafe { &mut *t };
    close_state(t, now);
    t.state = match how {
        SwitchOut::Runnable => {
            t.involuntary += 1;
            state::RUNQ
        }
        SwitchOut::Sleep => {
            t.voluntary += 1;
            state::SLEEP
        }
        SwitchOut::Blocked => {
            t.voluntary += 1;
            state::BLOCKED
        }
        SwitchOut::Exited => state::EXITED,
    };
    t.since_ns = now;
}

/// `add`: the raw programs know the task is the target's; the classic one only looks up.
#[inline(always)]
fn switch_in(tid: u32, now: u64, add: bool) {
    let t = match add {
        true => entry(tid),
        false => SCHED_THREADS.get_ptr_mut(tid),
    };
    let Some(t) = t else {
        return;
    };
    // SAFETY: as in `switch_out`.
    let t = unsafe { &mut *t };
    if t.state == state::EXITED {
        return;
    }
    // A wait in the run queue ends here (recorded); a sleep whose wakeup was not seen too,
    // and is counted as such.
    if t.state == state::SLEEP || t.state == state::BLOCKED {
        t.unwoken += 1;
    }
    close_state(t, now);
    t.state = state::ON_CPU;
    t.since_ns = now;
}

/// `new`: sched_wakeup_new, a thread's first wakeup (its entry is started afresh: a reused
/// tid must not continue a dead thread's figures).
#[inline(always)]
fn wakeup(tid: u32, now: u64, new: bool) {
    if new {
        let fresh = ThreadSched {
            since_ns: now,
            state: state::RUNQ,
            ..ThreadSched::default()
        };
        if SCHED_THREADS.insert(tid, fresh, 0).is_err() {
            bump_diag(diag::TABLE_FULL);
        }
        return;
    }
    let Some(t) = SCHED_THREADS.get_ptr_mut(tid) else {
        return; // the classic programs' filter: not a thread of the target
    };
    // SAFETY: as in `switch_out`.
    let t = unsafe { &mut *t };
    match t.state {
        // Woken while still on a CPU or in the run queue (before it slept): nothing changes.
        state::ON_CPU | state::RUNQ | state::EXITED => {}
        _ => {
            close_state(t, now);
            t.state = state::RUNQ;
            t.since_ns = now;
        }
    }
}

#[inline(always)]
fn bump_diag(index: u32) {
    if let Some(counter) = SCHED_DIAG.get_ptr_mut(index) {
        // SAFETY: this CPU's slot.
        unsafe { *counter += 1 };
    }
}
