//! Probe family `gc`: Boehm-GC stop-the-world pauses of the target, reconstructed in the
//! kernel from the signals the collector sends (suspend, then restart) and the threads'
//! answers. Userspace gets one record per pause and one per stopped thread.

use crate::field::FieldSpec;

/// Threads the kernel table holds (an entry per thread signalled, reused by its next pause;
/// least recently used entries go first when it is full).
pub const MAX_THREADS: u32 = 8_192;

/// bdwgc's Linux defaults (`SIG_SUSPEND`, `SIG_THR_RESTART`): SIGPWR and SIGXCPU.
pub const DEFAULT_SUSPEND_SIGNAL: u32 = 30;
pub const DEFAULT_RESTART_SIGNAL: u32 = 24;

pub const THREADS_MAP: &str = "GC_THREADS";
pub const STATE_MAP: &str = "GC_STATE";
pub const RING_MAP: &str = "GC_EVENTS";
/// Ring size: a record per pause and per stopped thread, thousands a second at most.
pub const RING_BYTES: u32 = 256 * 1024;

/// Read-only globals set at load.
pub const SUSPEND_SIGNAL: &str = "GC_SUSPEND_SIGNAL";
pub const RESTART_SIGNAL: &str = "GC_RESTART_SIGNAL";
/// Byte offsets from BTF for the tp_btf program: `task_struct.tgid`, `task_struct.__state`
/// (or `state`), `pt_regs.orig_ax`.
pub const TASK_TGID_OFFSET: &str = "GC_TASK_TGID_OFFSET";
pub const TASK_STATE_OFFSET: &str = "GC_TASK_STATE_OFFSET";
pub const REGS_ORIG_AX_OFFSET: &str = "GC_REGS_ORIG_AX_OFFSET";

/// `ThreadGc::syscall` / `GcRecord::syscall` when there is no syscall number.
pub mod syscall {
    /// The hook set cannot read the thread's registers (no tp_btf / bpf_task_pt_regs).
    pub const UNKNOWN: i32 = -2;
    /// The thread was runnable (running, or woken by the signal itself): not held in a
    /// syscall, whatever its registers last said.
    pub const RUNNABLE: i32 = -3;
    /// Blocked in the kernel, but not in a syscall (a page fault: orig_ax is -1).
    pub const NOT_A_SYSCALL: i32 = -1;
}

/// The pause in progress, written only by the collecting thread (its signal_generate runs):
/// one writer, so no atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcState {
    /// Sequence number of the current (or last) pause; 0 before the first.
    pub seq: u64,
    /// CLOCK_MONOTONIC of its first suspend signal.
    pub begin_ns: u64,
    pub collector_tid: u32,
    /// Threads sent the suspend signal (resends not counted again).
    pub signalled: u32,
    /// Suspend signals sent again to a thread of the same pause (bdwgc's GC_retry_signals).
    pub resends: u32,
    /// Restart signals sent in this pause; the first closes the suspend phase.
    pub restarts: u32,
}

/// One thread's part in the pause `seq`: written by the collector (when it signals it) and
/// then only by the thread itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadGc {
    pub seq: u64,
    /// When the suspend signal was sent to it.
    pub sent_ns: u64,
    /// When it took the suspend signal (its handler starts).
    pub answered_ns: u64,
    /// When its handler entered sigsuspend (0: no hook for it, or not seen).
    pub parked_ns: u64,
    /// Its syscall when the suspend signal came (a number, or a `syscall::*` value).
    pub syscall: i32,
    /// 1 once its record is sent (a resent restart signal sends nothing more).
    pub done: u32,
}

pub mod kind {
    /// The suspend phase is over (first restart signal): `GcRecord` as a pause.
    pub const PAUSE: u32 = 1;
    /// A stopped thread resumed (took the restart signal): `GcRecord` as a thread.
    pub const THREAD: u32 = 2;
}

/// One record of the ring. As a PAUSE: `tid` is the collector, `t0` the first suspend,
/// `t3` the first restart signal, `count` the threads signalled, `resends`. As a THREAD:
/// `t0` sent, `t1` answered, `t2` parked, `t3` resumed, `syscall`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcRecord {
    pub seq: u64,
    pub kind: u32,
    pub tid: u32,
    pub t0: u64,
    pub t1: u64,
    pub t2: u64,
    pub t3: u64,
    pub count: u32,
    pub resends: u32,
    pub syscall: i32,
    pub _pad: u32,
}

crate::pod!(GcState, ThreadGc, GcRecord);

/// Record fields of the classic-tracepoint programs. signal_generate: `sig`, `pid` (the
/// signalled thread), `result`; signal_deliver: `sig`.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::new("GC_GEN_SIG_OFFSET", "signal", "signal_generate", "sig", 4),
    FieldSpec::new("GC_GEN_PID_OFFSET", "signal", "signal_generate", "pid", 4),
    FieldSpec::new(
        "GC_DELIVER_SIG_OFFSET",
        "signal",
        "signal_deliver",
        "sig",
        4,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<GcState>(), 8 + 8 + 4 * 4);
        assert_eq!(core::mem::size_of::<ThreadGc>(), 8 * 4 + 4 + 4);
        assert_eq!(core::mem::size_of::<GcRecord>(), 8 + 4 + 4 + 8 * 4 + 4 * 4);
    }
}
