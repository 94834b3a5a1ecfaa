//! The interval cut (`lavtrace_common::cut`): which half of a family's counters a call that
//! returns now belongs to. Shared by `syscalls.rs` and `storage.rs`.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::Array};

/// The current cut, written by userspace each interval; 0 (before the first) places
/// everything in interval 1.
#[map]
static CUT_NS: Array<u64> = Array::with_max_entries(1, 0);

/// The half of a call returning at `now`. `now` must have been taken before this call reads
/// the cut (see `lavtrace_common::cut`).
#[inline(always)]
pub fn half(now: u64) -> u32 {
    let cut = CUT_NS.get(0).copied().unwrap_or(0);
    lavtrace_common::cut::half(now, cut)
}

/// The time now, for `half`.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
