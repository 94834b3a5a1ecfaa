//! Probe family `fsync`: every durability call of the target (fsync, fdatasync, syncfs, sync,
//! sync_file_range, msync), timed between its enter and exit tracepoints and sent as one
//! record through `FSYNC_EVENTS` (declared in `storage.rs`, which fills it), or between a
//! uprobe and a uretprobe on the target's libc function (the `fsync_u*` programs), or a kprobe
//! and a kretprobe on the syscall function (`fsync_k*`). The fd and mapping bookkeeping that names the file of each
//! call comes through the same ring (`storage.rs`).

use aya_ebpf::{
    macros::{kprobe, kretprobe, tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use lavtrace_common::storage::ufn;

use crate::storage::{Owner, enter, exit, kenter, kexit, uenter, uexit};

/// sync: no arguments.
#[tracepoint]
pub fn fsync_enter0(ctx: TracePointContext) -> u32 {
    enter::<0>(&ctx, Owner::Fsync);
    0
}

/// fsync, fdatasync, syncfs: the fd.
#[tracepoint]
pub fn fsync_enter1(ctx: TracePointContext) -> u32 {
    enter::<1>(&ctx, Owner::Fsync);
    0
}

/// msync: start, len, flags.
#[tracepoint]
pub fn fsync_enter3(ctx: TracePointContext) -> u32 {
    enter::<3>(&ctx, Owner::Fsync);
    0
}

/// sync_file_range: fd, offset, nbytes, flags.
#[tracepoint]
pub fn fsync_enter4(ctx: TracePointContext) -> u32 {
    enter::<4>(&ctx, Owner::Fsync);
    0
}

#[tracepoint]
pub fn fsync_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, Owner::Fsync);
    0
}

// The uprobe set: one entry per libc function (the const generic is its `ufn` index).

#[uprobe]
pub fn fsync_uenter_fsync(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::FSYNC }, 1>(&ctx, Owner::Fsync);
    0
}

#[uprobe]
pub fn fsync_uenter_fdatasync(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::FDATASYNC }, 1>(&ctx, Owner::Fsync);
    0
}

#[uprobe]
pub fn fsync_uenter_syncfs(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::SYNCFS }, 1>(&ctx, Owner::Fsync);
    0
}

#[uprobe]
pub fn fsync_uenter_sync(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::SYNC }, 0>(&ctx, Owner::Fsync);
    0
}

#[uprobe]
pub fn fsync_uenter_sync_file_range(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::SYNC_FILE_RANGE }, 4>(&ctx, Owner::Fsync);
    0
}

#[uprobe]
pub fn fsync_uenter_msync(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::MSYNC }, 3>(&ctx, Owner::Fsync);
    0
}

#[uretprobe]
pub fn fsync_uexit(ctx: RetProbeContext) -> u32 {
    uexit(&ctx, Owner::Fsync);
    0
}

// The kprobe set: the same, on the syscall functions (see `storage.rs`).

#[kprobe]
pub fn fsync_kenter_fsync(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::FSYNC }, 1>(&ctx, Owner::Fsync);
    0
}

#[kprobe]
pub fn fsync_kenter_fdatasync(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::FDATASYNC }, 1>(&ctx, Owner::Fsync);
    0
}

#[kprobe]
pub fn fsync_kenter_syncfs(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::SYNCFS }, 1>(&ctx, Owner::Fsync);
    0
}

#[kprobe]
pub fn fsync_kenter_sync(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::SYNC }, 0>(&ctx, Owner::Fsync);
    0
}

#[kprobe]
pub fn fsync_kenter_sync_file_range(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::SYNC_FILE_RANGE }, 4>(&ctx, Owner::Fsync);
    0
}

#[kprobe]
pub fn fsync_kenter_msync(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::MSYNC }, 3>(&ctx, Owner::Fsync);
    0
}

#[kretprobe]
pub fn fsync_kexit(ctx: RetProbeContext) -> u32 {
    kexit(&ctx, Owner::Fsync);
    0
}
