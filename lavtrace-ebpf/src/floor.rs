//! Benchmark floor (hidden probe `floor`): empty programs on the same tracepoints as the
//! `syscalls` family, so the benchmarks can tell the cost of being attached at all from the
//! cost of lavtrace's own work.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn floor_enter(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_exit(_ctx: TracePointContext) -> u32 {
    0
}
