//! Probe family `sched`: per thread of the target, where its time goes (on a CPU, waiting in
//! the run queue, sleeping, blocked on I/O) and how it leaves the CPU, kept in the kernel.

use crate::field::FieldSpec;

/// Threads of the target the kernel table holds at once. A thread's entry is removed by
/// userspace once it has read the thread's exit, so this bounds live threads, not churn.
pub const MAX_THREADS: u32 = 8_192;
/// Log2 buckets of the run-queue latency, as the syscalls family's (`latency_bucket`).
pub const RUNQ_BUCKETS: usize = crate::syscalls::LATENCY_BUCKETS;

/// Name of the tid → `ThreadSched` hash.
pub const THREADS_MAP: &str = "SCHED_THREADS";
/// Name of the per-cpu `u64` array of the family's diagnostic counters (`diag`).
pub const DIAG_MAP: &str = "SCHED_DIAG";

/// Where a thread is now (`ThreadSched::state`).
pub mod state {
    /// Seeded by userspace or first seen mid-way: no start time to count from.
    pub const UNKNOWN: u32 = 0;
    pub const ON_CPU: u32 = 1;
    /// Runnable, not running: woken, or preempted.
    pub const RUNQ: u32 = 2;
    /// Off the CPU in an interruptible sleep (S), or any other non-D wait.
    pub const SLEEP: u32 = 3;
    /// Off the CPU in TASK_UNINTERRUPTIBLE (D): I/O, mostly.
    pub const BLOCKED: u32 = 4;
    /// Switched out for the last time; userspace removes the entry once it has read it.
    pub const EXITED: u32 = 5;
}

/// One thread's cumulative figures, and the state it is in since `since_ns`. Written only
/// under the scheduler's run-queue lock of the thread (switches and wakeups of one thread are
/// serialised by it), so a plain hash, not a per-cpu one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSched {
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) at which `state` began.
    pub since_ns: u64,
    pub state: u32,
    /// Switch-ins of the thread while it was recorded as waiting (sleep or D): its wakeup was
    /// not seen, so that run-queue wait is missing and counted into the sleep instead.
    pub unwoken: u32,
    pub on_cpu_ns: u64,
    pub sleep_ns: u64,
    pub blocked_ns: u64,
    /// Switched out while not runnable (it waited for something).
    pub voluntary: u64,
    /// Switched out while still runnable (preempted, or yielded).
    pub involuntary: u64,
    /// Run-queue waits that ended in a switch-in: count, sum, max and log2 buckets.
    pub runq_count: u64,
    pub runq_total_ns: u64,
    pub runq_max_ns: u64,
    pub runq_buckets: [u64; RUNQ_BUCKETS],
}

/// Indexes of the per-cpu diagnostic counters.
pub mod diag {
    /// A thread could not be added: the table was full (its figures are missing).
    pub const TABLE_FULL: u32 = 0;
    pub const LEN: u32 = 1;
}

crate::pod!(ThreadSched);

/// Symbols of the `u32` read-only globals holding byte offsets in `struct task_struct`, read
/// from the kernel's BTF at load by the raw-tracepoint programs (which get task pointers, not
/// a record). `TASK_PID` is the offset of `pid`; `tgid` must follow it (checked at load) so
/// both come in one read.
pub const TASK_PID_OFFSET: &str = "SCHED_TASK_PID_OFFSET";
/// Offset of `__state` (5.14+) or `state` (its low 32 bits on little-endian).
pub const TASK_STATE_OFFSET: &str = "SCHED_TASK_STATE_OFFSET";

/// Bits of a task's `__state` (include/linux/sched.h), as the raw programs read it.
pub mod task {
    pub const RUNNING: u32 = 0;
    pub const UNINTERRUPTIBLE: u32 = 0x2;
    /// TASK_DEAD: the switch-out of a thread that has exited.
    pub const DEAD: u32 = 0x80;
    /// TASK_NOLOAD: with UNINTERRUPTIBLE, TASK_IDLE (an idle kernel thread), not I/O.
    pub const NOLOAD: u32 = 0x400;
}

/// Bits of the classic tracepoint's `prev_state` (the reported state: 1 << index).
pub mod reported {
    pub const UNINTERRUPTIBLE: u64 = 0x2;
    /// EXIT_DEAD, EXIT_ZOMBIE: the last switch-out of an exited thread.
    pub const EXITED: u64 = 0x10 | 0x20;
    /// TASK_REPORT_MAX: preempted ("R+"), whatever state it was in.
    pub const PREEMPTED: u64 = 0x100;
    /// Every reported state bit below the preemption flag (0: TASK_RUNNING).
    pub const STATES: u64 = 0xff;
}

/// The record fields of the classic-tracepoint programs (the raw ones read no record).
/// sched_wakeup and sched_wakeup_new share a class, so one global serves both.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::new(
        "SCHED_PREV_PID_OFFSET",
        "sched",
        "sched_switch",
        "prev_pid",
        4,
    ),
    FieldSpec::new(
        "SCHED_PREV_STATE_OFFSET",
        "sched",
        "sched_switch",
        "prev_state",
        8,
    ),
    FieldSpec::new(
        "SCHED_NEXT_PID_OFFSET",
        "sched",
        "sched_switch",
        "next_pid",
        4,
    ),
    FieldSpec::new("SCHED_WAKEUP_PID_OFFSET", "sched", "sched_wakeup", "pid", 4),
    FieldSpec::new(
        "SCHED_WAKEUP_PID_OFFSET",
        "sched",
        "sched_wakeup_new",
        "pid",
        4,
    ),
];

/// What a switch-out says about the thread leaving the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchOut {
    /// Still runnable: preempted (involuntary).
    Runnable,
    /// Waiting, interruptibly or otherwise (voluntary).
    Sleep,
    /// Waiting in D (voluntary).
    Blocked,
    /// Its last switch-out: not a switch at all.
    Exited,
}

/// Classifies a raw tracepoint's switch-out: `preempt` (its first argument) and the task's
/// `__state` read at the tracepoint (after __schedule has put a task with a pending signal
/// back to TASK_RUNNING, so that case reads runnable, as it is).
#[inline(always)]
pub const fn classify_raw(preempt: bool, task_state: u32) -> SwitchOut {
    if task_state & task::DEAD != 0 {
        SwitchOut::Exited
    } else if preempt || task_state == task::RUNNING {
        SwitchOut::Runnable
    } else if task_state & task::UNINTERRUPTIBLE != 0 && task_state & task::NOLOAD == 0 {
        SwitchOut::Blocked
    } else {
        SwitchOut::Sleep
    }
}

/// Classifies a classic tracepoint's `prev_state`.
#[inline(always)]
pub const fn classify_reported(prev_state: u64) -> SwitchOut {
    if prev_state & reported::PREEMPTED != 0 || prev_state & reported::STATES == 0 {
        SwitchOut::Runnable
    } else if prev_state & reported::EXITED != 0 {
        SwitchOut::Exited
    } else if prev_state & reported::UNINTERRUPTIBLE != 0 {
        SwitchOut::Blocked
    } else {
        SwitchOut::Sleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        // since, state + unwoken, eight counters, the buckets.
        assert_eq!(
            core::mem::size_of::<ThreadSched>(),
            8 + 8 + 8 * 8 + 8 * RUNQ_BUCKETS
        );
        assert_eq!(core::mem::align_of::<ThreadSched>(), 8);
    }

    #[test]
    fn switch_outs_are_classified_alike_by_both_hooks() {
        assert_eq!(classify_raw(true, 1), SwitchOut::Runnable);
        assert_eq!(classify_raw(false, 0), SwitchOut::Runnable);
        assert_eq!(classify_raw(false, 1), SwitchOut::Sleep);
        assert_eq!(classify_raw(false, 2), SwitchOut::Blocked);
        // TASK_KILLABLE (WAKEKILL | UNINTERRUPTIBLE) is D; TASK_IDLE is not I/O.
        assert_eq!(classify_raw(false, 0x102), SwitchOut::Blocked);
        assert_eq!(classify_raw(false, 0x402), SwitchOut::Sleep);
        assert_eq!(classify_raw(false, 0x80), SwitchOut::Exited);
        assert_eq!(classify_reported(0), SwitchOut::Runnable);
        assert_eq!(classify_reported(0x100), SwitchOut::Runnable);
        assert_eq!(classify_reported(0x101), SwitchOut::Runnable);
        assert_eq!(classify_reported(1), SwitchOut::Sleep);
        assert_eq!(classify_reported(2), SwitchOut::Blocked);
        assert_eq!(classify_reported(0x80), SwitchOut::Sleep);
        assert_eq!(classify_reported(0x10), SwitchOut::Exited);
        assert_eq!(classify_reported(0x20), SwitchOut::Exited);
    }
}
