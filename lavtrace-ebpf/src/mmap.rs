//! Probe family `mmap`: the target's mapping churn. mmap, munmap and mremap are shared with
//! the fsync family (`storage.rs`, `storage_map_*` programs); madvise and brk are this family's own.
//! One record per completed call through `MMAP_EVENTS`.

use aya_ebpf::{
    macros::{kprobe, kretprobe, tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use lavtrace_common::storage::ufn;

use crate::storage::{Owner, enter, exit, kenter, kexit, uenter, uexit};

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

// The uprobe set (see `storage.rs`).

#[uprobe]
pub fn mmap_uenter_brk(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::BRK }, 1>(&ctx, Owner::Mmap);
    0
}

#[uprobe]
pub fn mmap_uenter_madvise(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::MADVISE }, 3>(&ctx, Owner::Mmap);
    0
}

#[uretprobe]
pub fn mmap_uexit(ctx: RetProbeContext) -> u32 {
    uexit(&ctx, Owner::Mmap);
    0
}

// The kprobe set: the same, on the syscall functions (see `storage.rs`).

#[kprobe]
pub fn mmap_kenter_brk(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::BRK }, 1>(&ctx, Owner::Mmap);
    0
}

#[kprobe]
pub fn mmap_kenter_madvise(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::MADVISE }, 3>(&ctx, Owner::Mmap);
    0
}

#[kretprobe]
pub fn mmap_kexit(ctx: RetProbeContext) -> u32 {
    kexit(&ctx, Owner::Mmap);
    0
}
