//! Benchmark floors: empty programs on the same hooks as the `syscalls` family (hidden probe
//! `floor`: raw tracepoints; `floor-tracepoint`: the classic raw_syscalls tracepoints), so the
//! benchmarks can tell the cost of being attached at all from the cost of lavtrace's own work.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

#[tracepoint]
pub fn floor_enter(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_exit(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_raw_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_raw_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
