//! Benchmarks only: empty programs on the hooks the syscalls family uses, to measure the cost
//! floor of a hook (`lavtrace-ebpf/src/floor.rs`). Hidden from `--help` and `check`; they
//! report nothing.

use anyhow::Result;
use aya::Ebpf;

use crate::{
    family::{Family, Options, Part, Tracer, Window},
    kernel::{self, Hook},
};

const FAMILY: &str = "floor";

/// `--probes floor`: the raw tracepoints sys_enter/sys_exit.
pub struct Raw;

/// `--probes floor-tracepoint`: the classic raw_syscalls tracepoints.
pub struct Tracepoint;

impl Family for Raw {
    const NAME: &'static str = "floor";
    const ABOUT: &'static str = "Benchmarks only: empty programs on the raw tracepoints the syscalls family uses (the cost floor)";
    const HIDDEN: bool = true;
    const SYSCALL_SLOW_PATH: bool = true;

    fn attach(ebpf: &mut Ebpf, _pid: u32, _options: &Options) -> Result<(Self, Vec<Hook>)> {
        let hooks = [
            ("floor_raw_exit", "sys_exit"),
            ("floor_raw_enter", "sys_enter"),
        ]
        .into_iter()
        .map(|(program, name)| kernel::attach_raw_tracepoint(ebpf, FAMILY, program, name))
        .collect::<Result<_>>()?;
        Ok((Raw, hooks))
    }
}

impl Family for Tracepoint {
    const NAME: &'static str = "floor-tracepoint";
    const ABOUT: &'static str =
        "Benchmarks only: empty programs on the classic raw_syscalls tracepoints";
    const HIDDEN: bool = true;
    const SYSCALL_SLOW_PATH: bool = true;

    fn attach(ebpf: &mut Ebpf, _pid: u32, _options: &Options) -> Result<(Self, Vec<Hook>)> {
        let hooks = [("floor_exit", "sys_exit"), ("floor_enter", "sys_enter")]
            .into_iter()
            .map(|(program, name)| {
                kernel::attach_tracepoint(ebpf, FAMILY, program, "raw_syscalls", name)
            })
            .collect::<Result<_>>()?;
        Ok((Tracepoint, hooks))
    }
}

impl Tracer for Raw {
    fn section(&mut self, _window: Window, _kernel_lost: u64) -> Result<Option<Part>> {
        Ok(None)
    }
}

impl Tracer for Tracepoint {
    fn section(&mut self, _window: Window, _kernel_lost: u64) -> Result<Option<Part>> {
        Ok(None)
    }
}
