//! Probe family `syscalls`: per-syscall counts, errors and latency, aggregated in the kernel.

/// Syscall numbers tracked; x86_64 and aarch64 numbers all sit below this.
pub const MAX_SYSCALLS: u32 = 512;
/// Threads of the target that can be inside a syscall at once (entry timestamps).
pub const MAX_THREADS: u32 = 16_384;
/// Distinct (syscall, errno) pairs remembered.
pub const MAX_ERRNO_KEYS: u32 = 4_096;
/// Log2 latency buckets: bucket `i` holds durations in `[2^i, 2^(i+1))` ns (bucket 0 also
/// holds 0 ns); the last bucket is open-ended (≥ 2^31 ns ≈ 2.1 s).
pub const LATENCY_BUCKETS: usize = 32;

/// Per-syscall statistics, one slot per CPU per syscall number (a per-cpu array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStats {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

/// Key of the per-cpu (syscall, errno) error counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrnoKey {
    pub nr: u32,
    /// Positive errno (EAGAIN = 11).
    pub errno: u32,
}

/// Indexes of the per-cpu diagnostic counters of this family.
pub mod diag {
    /// A thread's entry timestamp could not be stored (the thread table was full).
    pub const START_TABLE_FULL: u32 = 0;
    /// A (syscall, errno) pair could not be stored (the errno table was full).
    pub const ERRNO_TABLE_FULL: u32 = 1;
    pub const LEN: u32 = 2;
}

crate::pod!(SyscallStats, ErrnoKey);

/// Bucket index of a duration, the same in the kernel and in tests.
#[inline(always)]
pub const fn latency_bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let b = (63 - ns.leading_zeros()) as usize;
    if b >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(
            core::mem::size_of::<SyscallStats>(),
            8 * (4 + LATENCY_BUCKETS)
        );
        assert_eq!(core::mem::size_of::<ErrnoKey>(), 8);
    }

    #[test]
    fn buckets_are_log2() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 1);
        assert_eq!(latency_bucket(1024), 10);
        assert_eq!(latency_bucket(2047), 10);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }
}
