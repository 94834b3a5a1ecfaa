//! Probe family `syscalls`: per-syscall counts, errors and latency, aggregated in the kernel.

use crate::field::FieldSpec;

/// Syscall numbers tracked; x86_64 and aarch64 numbers all sit below this.
pub const MAX_SYSCALLS: u32 = 512;
/// Slots of the per-syscall counters: two halves (`lavtrace_common::cut`), `half *
/// MAX_SYSCALLS + nr`.
pub const STATS_SLOTS: u32 = 2 * MAX_SYSCALLS;
/// Symbol of the read-only `[u32; COUNTED_ELSEWHERE_LEN]` global listing the syscalls whose
/// counters another family's exit program keeps (unused slots `u32::MAX`): the fsync family
/// times the durability calls and counts them into this family's table in the same program
/// that sends their records, so both tables place each call in the same interval.
pub const COUNTED_ELSEWHERE: &str = "SYSCALLS_COUNTED_ELSEWHERE";
pub const COUNTED_ELSEWHERE_LEN: usize = 8;
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

/// Distinct (thread, syscall) pairs of the optional per-thread table (`--per-thread`).
pub const MAX_THREAD_KEYS: u32 = 16_384;
/// Symbol of the `u8` read-only global that turns the per-thread table on (1) or off (0); with
/// it off the verifier prunes the per-thread code from the hot path.
pub const PER_THREAD: &str = "SYSCALLS_PER_THREAD";
/// Symbol of the `u32` read-only global holding this architecture's `exit` syscall number: a
/// thread's last call, which never returns, so its entry timestamp is dropped at entry.
pub const EXIT_NR: &str = "SYSCALLS_EXIT_NR";

/// The raw_syscalls record fields of the classic-tracepoint program pair (the raw tracepoint
/// pair reads no record).
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::new("SYSCALLS_ID_OFFSET", "raw_syscalls", "sys_enter", "id", 8),
    FieldSpec::new("SYSCALLS_RET_OFFSET", "raw_syscalls", "sys_exit", "ret", 8),
];

/// Key of the per-cpu per-thread table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ThreadKey {
    pub tid: u32,
    pub nr: u32,
}

/// One thread's figures for one syscall (no histogram: the per-syscall table has it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// The per-thread table's value: one `ThreadStats` per half (`crate::cut`).
pub type ThreadHalves = [ThreadStats; 2];

/// Indexes of the per-cpu diagnostic counters of this family.
pub mod diag {
    /// A thread's entry timestamp could not be stored (the thread table was full).
    pub const START_TABLE_FULL: u32 = 0;
    /// A (syscall, errno) pair could not be stored (the errno table was full).
    pub const ERRNO_TABLE_FULL: u32 = 1;
    /// A (thread, syscall) pair could not be stored (the per-thread table was full).
    pub const THREAD_TABLE_FULL: u32 = 2;
    pub const LEN: u32 = 3;
}

/// Value of `SYSCALLS_START` (tid → the syscall it is in). The number is kept from the entry
/// because the raw `sys_exit` tracepoint passes only the return value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStart {
    /// Entry time (ns); 0 once consumed, so an exit never pairs with a stale entry.
    pub ts: u64,
    pub nr: u64,
}

/// The calls-in-progress map: the sampled mode empties it while detached, so that an exit
/// seen after the next attach never pairs with an entry from before.
pub const START_MAP: &str = "SYSCALLS_START";

crate::pod!(SyscallStats, ErrnoKey, ThreadKey, ThreadStats, SyscallStart);

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
        assert_eq!(core::mem::size_of::<ThreadKey>(), 8);
        assert_eq!(core::mem::size_of::<ThreadStats>(), 32);
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
