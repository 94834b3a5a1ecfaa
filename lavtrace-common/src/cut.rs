//! The interval cut: the one instant at which an interval ends, shared by every family that
//! places calls in intervals in the kernel (the syscalls family's counters, the durability
//! calls the fsync family sends and counts into the syscall table).
//!
//! Userspace writes the next cut `T` into [`MAP`] a little *before* `T` ([`LEAD_NS`]): a call
//! is placed by its return time `t` (CLOCK_MONOTONIC, `bpf_ktime_get_ns`), taken before the
//! program reads the cut, so a program that read the old cut took its `t` before the write,
//! hence before `T`, and both cuts place it alike. The counters come in two halves; interval
//! `k` goes to half `k & 1`, kept in the cut's lowest bit (1 ns of `T` is not worth a second
//! word, which could not be written together with the first).

/// Name of the one-entry `u64` array holding the current cut.
pub const MAP: &str = "CUT_NS";

/// How far ahead of the cut userspace writes it: far more than a map update takes.
pub const LEAD_NS: u64 = 1_000_000;

/// How long after the cut userspace waits before it reads: calls that returned before the cut
/// finish their program (a few µs) and commit their records well within it.
pub const SETTLE_NS: u64 = 2_000_000;

/// The half (0 or 1) of a call that returned at `t` under `cut`.
#[inline(always)]
pub fn half(t: u64, cut: u64) -> u32 {
    let current = (cut & 1) as u32;
    if t <= cut { current } else { current ^ 1 }
}

/// The map value for the cut ending interval `seq` at `t` (its half in the lowest bit).
pub fn encode(t: u64, seq: u64) -> u64 {
    (t & !1) | (seq & 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_goes_to_the_interval_in_which_it_returned() {
        let t1 = encode(1_000, 1);
        // Interval 1 (half 1) up to its cut, interval 2 (half 0) after it.
        assert_eq!(half(999, t1), 1);
        assert_eq!(half(t1, t1), 1);
        assert_eq!(half(t1 + 1, t1), 0);
        // Before the first cut is written (0): everything is interval 1.
        assert_eq!(half(5, 0), 1);
        let t2 = encode(2_000, 2);
        assert_eq!(half(1_500, t2), 0);
        assert_eq!(half(2_001, t2), 1);
    }
}
