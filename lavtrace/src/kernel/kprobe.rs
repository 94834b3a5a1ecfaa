//! kprobes on the kernel's syscall functions (`__x64_sys_fsync`, `__arm64_sys_fsync`, ...): whether
//! this kernel has kprobes and those functions, where their arguments are, and the attach.
//! Knows no family: they say which syscalls.
//!
//! Since 4.17 (x86_64, arm64) every syscall is entered through a wrapper
//! `__<arch>_sys_<name>(const struct pt_regs *regs)` that unpacks the caller's registers, so a
//! kprobe on it fires for that syscall only, in any process (the program filters on the
//! target), and other processes' syscalls run as if nothing were attached.

use std::{collections::HashSet, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{KProbe, ProbeKind},
};
use tracing::debug;

use super::Hook;
use crate::error::Fatal;

/// Why kprobes cannot be attached here at all, if they cannot: attaching goes through the
/// kprobe PMU (perf_event_open) or, on older kernels, tracefs' kprobe_events; neither exists
/// without CONFIG_KPROBES (+ CONFIG_KPROBE_EVENTS).
pub fn missing(tracefs: &str) -> Option<String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let events = Path::new(tracefs).join("kprobe_events").exists();
    (!pmu && !events).then(|| {
        format!(
            "kprobes are not compiled into this kernel (no kprobe PMU, no {tracefs}/kprobe_events)"
        )
    })
}

/// The syscall wrapper prefix of this architecture.
#[cfg(target_arch = "x86_64")]
pub const SYSCALL_PREFIX: &str = "__x64_sys_";
#[cfg(target_arch = "aarch64")]
pub const SYSCALL_PREFIX: &str = "__arm64_sys_";

/// Byte offsets in `struct pt_regs` of the six syscall argument registers. Fixed by the
/// architecture's entry code, which builds the struct by pushing the registers in this order
/// (x86_64 arch/x86/entry/calling.h PUSH_REGS: di si dx at 112 104 96, r10 r8 r9 at 56 72 64,
/// unchanged since x86_64 was merged; arm64: `regs[0..5]` at the start), and shared with
/// ptrace's view of a stopped thread (`user_regs_struct` has the same layout on x86_64).
#[cfg(target_arch = "x86_64")]
pub const SYSCALL_ARG_OFFSETS: [u32; 6] = [112, 104, 96, 56, 72, 64];
#[cfg(target_arch = "aarch64")]
pub const SYSCALL_ARG_OFFSETS: [u32; 6] = [0, 8, 16, 24, 32, 40];

/// The syscall functions of `/proc/kallsyms` (names after the prefix), or why there are none
/// to attach to.
pub fn syscall_functions(tracefs: &str) -> Result<HashSet<String>, String> {
    if let Some(why) = missing(tracefs) {
        return Err(why);
    }
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("cannot read /proc/kallsyms: {e}"))?;
    let found: HashSet<String> = kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|name| name.strip_prefix(SYSCALL_PREFIX))
        .map(str::to_string)
        .collect();
    if found.is_empty() {
        return Err(format!(
            "no {SYSCALL_PREFIX}* functions in /proc/kallsyms (a kernel before 4.17, or kallsyms hidden)"
        ));
    }
    Ok(found)
}

/// Loads `program` (a kprobe or kretprobe) unless it is loaded already and attaches it to
/// the syscall function of `syscall`.
pub fn attach_syscall(
    ebpf: &mut Ebpf,
    family: &'static str,
    program: &'static str,
    syscall: &str,
) -> Result<Hook> {
    let prog: &mut KProbe = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a kprobe program"))?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
    }
    let kind = match prog.kind() {
        ProbeKind::Entry => "kprobe",
        ProbeKind::Return => "kretprobe",
    };
    let symbol = format!("{SYSCALL_PREFIX}{syscall}");
    let via = format!("{kind} {symbol}");
    prog.attach(&symbol, 0)
        .map_err(|e| anyhow::Error::new(Fatal::Unsupported(format!("cannot attach {via}: {e}"))))?;
    debug!(program, "attached: {via}");
    Ok(Hook {
        family,
        program,
        via,
    })
}
