//! Probe family `fsync`: every durability call of the target (fsync, fdatasync, syncfs, sync,
//! sync_file_range, msync), timed between its enter and exit tracepoints and sent as one
//! record through `FSYNC_EVENTS` (declared in `storage.rs`, which fills it). The fd and mapping bookkeeping that names the file of each
//! call comes through the same ring (`storage.rs`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::storage::{Owner, enter, exit};

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
