//! Probe family `mmap`: the target's mapping churn. mmap, munmap and mremap are shared with
//! the fsync family (`storage.rs`, `map_*` programs); madvise and brk are this family's own.
//! One record per completed call through `MMAP_EVENTS`.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
};
use lavtrace_common::mmap::RING_BYTES;

use crate::storage::{Owner, enter, exit};

/// Sized at load time by userspace (`lavtrace_common::mmap::RING_BYTES` or `--ring-bytes`).
#[map]
pub static MMAP_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// brk: the requested break.
#[tracepoint]
pub fn mmap_enter1(ctx: TracePointContext) -> u32 {
    enter::<1>(&ctx, Owner::Mmap);
    0
}

/// madvise: start, len, advice.
#[tracepoint]
pub fn mmap_enter3(ctx: TracePointContext) -> u32 {
    enter::<3>(&ctx, Owner::Mmap);
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, Owner::Mmap);
    0
}
