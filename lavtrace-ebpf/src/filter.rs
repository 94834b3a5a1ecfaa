//! The target filter every program starts with.

/// Set by userspace at load time (see `lavtrace_common::filter::TARGET_TGID`).
#[unsafe(no_mangle)]
static FILTER_TARGET_TGID: u32 = 0;

/// The target's tgid, for tasks that are not current (a task pointer's `tgid`).
#[inline(always)]
pub fn target_tgid() -> u32 {
    // SAFETY: a plain read of a global; volatile so the compiler cannot fold the 0 it sees
    // at build time (userspace rewrites the value before the program is loaded).
    unsafe { core::ptr::read_volatile(&FILTER_TARGET_TGID) }
}

/// The current task's (tgid, tid) if it belongs to the target, else `None`.
#[inline(always)]
pub fn current_target_task() -> Option<(u32, u32)> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == target_tgid() {
        Some((tgid, pid_tgid as u32))
    } else {
        None
    }
}
