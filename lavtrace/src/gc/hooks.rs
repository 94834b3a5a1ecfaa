//! The gc family's hooks, best first:
//! - signal_generate: tp_btf, whose task argument gives the signalled thread's registers
//!   (`bpf_task_pt_regs`, 5.15+) and so its syscall; else the classic tracepoint (no syscall).
//! - signal_deliver: the classic tracepoint (runs in the thread taking the signal).
//! - the handler's sigsuspend: a kprobe on the syscall function where the kernel has kprobes
//!   (its callers anywhere pay a filter, and rt_sigsuspend is rare), else a uprobe on the
//!   target's libc `sigsuspend` for its pid only (exact for bdwgc, which calls it there).
//!   Without either, a thread counts as stopped when it takes the suspend signal.
//!
//! None is a syscall tracepoint: the host's syscalls keep their fast path.

use std::sync::OnceLock;

use anyhow::Result;
use aya::{Ebpf, programs::BtfTracePoint};
use tracing::debug;

use super::FAMILY;
use crate::kernel::{
    Hook, Overrides, attach_tracepoint, kprobe,
    tracefs::tracefs_dir,
    uprobe::{Library, attach_uprobe},
};

/// (task_struct.tgid, task_struct.__state, pt_regs.orig_ax) from BTF, or why not.
fn offsets() -> &'static Result<(u32, u32, u32), String> {
    static OFFSETS: OnceLock<Result<(u32, u32, u32), String>> = OnceLock::new();
    OFFSETS.get_or_init(|| {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("no BTF (/sys/kernel/btf/vmlinux: {e})"))?;
        let task = crate::tcp::btf::member_offsets(
            &data,
            "task_struct",
            &["pid", "tgid", "__state", "state"],
        )
        .map_err(|e| format!("BTF: {e:#}"))?;
        let (Some(pid), Some(tgid)) = (task[0], task[1]) else {
            return Err("struct task_struct has no pid/tgid in BTF".into());
        };
        // The program takes both in one read ending at tgid.
        if tgid != pid + 4 {
            return Err(format!(
                "struct task_struct: tgid at {tgid} does not follow pid at {pid}"
            ));
        }
        let state = task[2]
            .or(task[3])
            .ok_or("struct task_struct has no __state or state in BTF")?;
        let regs = crate::tcp::btf::member_offsets(&data, "pt_regs", &["orig_ax"])
            .map_err(|e| format!("BTF: {e:#}"))?;
        let orig_ax = regs[0].ok_or("struct pt_regs has no orig_ax (not x86_64)")?;
        Ok((tgid as u32, state as u32, orig_ax as u32))
    })
}

pub fn overrides(overrides: &mut Overrides) {
    if let Ok((tgid, state, orig_ax)) = offsets() {
        overrides.global_u32(lavtrace_common::gc::TASK_TGID_OFFSET, *tgid);
        overrides.global_u32(lavtrace_common::gc::TASK_STATE_OFFSET, *state);
        overrides.global_u32(lavtrace_common::gc::REGS_ORIG_AX_OFFSET, *orig_ax);
    }
}

/// (program, status) lines for `check`: the hooks not in use, and why.
pub type Notes = Vec<(String, String)>;

/// Attaches the family; returns its hooks and the notes on those not used.
pub fn attach(ebpf: &mut Ebpf, pid: u32) -> Result<(Vec<Hook>, Notes)> {
    let mut hooks = Vec::new();
    let mut notes = Vec::new();
    match attach_btf(ebpf) {
        Ok(h) => {
            hooks.push(h);
            notes.push((
                "gc_signal_generate".to_string(),
                "available via tracepoint signal:signal_generate (not in use: the fallback, \
                 without the laggard's syscall)"
                    .to_string(),
            ));
        }
        Err(why) => {
            debug!("gc: signal_generate not on tp_btf ({why}); using the tracepoint");
            hooks.push(attach_tracepoint(
                ebpf,
                FAMILY,
                "gc_signal_generate",
                "signal",
                "signal_generate",
            )?);
            notes.push((
                "gc_signal_generate_btf".to_string(),
                format!("unavailable: tp_btf signal_generate: {why}; laggards' syscalls unknown"),
            ));
        }
    }
    hooks.push(attach_tracepoint(
        ebpf,
        FAMILY,
        "gc_signal_deliver",
        "signal",
        "signal_deliver",
    )?);
    let tracefs = tracefs_dir().unwrap_or("/sys/kernel/tracing");
    let kprobe = match kprobe::syscall_functions(tracefs) {
        Ok(found) if found.contains("rt_sigsuspend") => {
            kprobe::attach_syscall(ebpf, FAMILY, "gc_sigsuspend_kprobe", "rt_sigsuspend")
                .map_err(|e| format!("{e:#}"))
        }
        Ok(_) => Err(format!("no {}rt_sigsuspend", kprobe::SYSCALL_PREFIX)),
        Err(why) => Err(why),
    };
    match kprobe {
        Ok(h) => {
            hooks.push(h);
            notes.push((
                "gc_sigsuspend_uprobe".to_string(),
                "available via uprobe on libc sigsuspend (not in use: the fallback)".to_string(),
            ));
        }
        Err(kwhy) => {
            crate::kernel::unload(ebpf, "gc_sigsuspend_kprobe");
            notes.push((
                "gc_sigsuspend_kprobe".to_string(),
                format!("unavailable: {kwhy}"),
            ));
            match attach_libc_uprobe(ebpf, pid) {
                Ok(h) => hooks.push(h),
                Err(why) => {
                    crate::kernel::unload(ebpf, "gc_sigsuspend_uprobe");
                    notes.push((
                        "gc_sigsuspend_uprobe".to_string(),
                        format!(
                            "unavailable: {why}; a thread counts as stopped when it takes the \
                             suspend signal"
                        ),
                    ));
                }
            }
        }
    }
    Ok((hooks, notes))
}

fn attach_btf(ebpf: &mut Ebpf) -> Result<Hook, String> {
    offsets().as_ref().map_err(Clone::clone)?;
    let btf = crate::kernel::btf::vmlinux().ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
    let program = "gc_signal_generate_btf";
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or("program missing from the eBPF object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    // Refused where the kernel cannot run it: before 5.15 there is no bpf_task_pt_regs, and
    // 5.10's verifier already stops at the tracepoint's first argument ("arg#0 type is not a
    // struct"); the classic tracepoint then carries signal_generate.
    prog.load("signal_generate", &btf)
        .map_err(|e| format!("the kernel rejected it: {e}"))?;
    if let Err(e) = prog.attach() {
        let _ = prog.unload();
        return Err(format!("cannot attach: {e}"));
    }
    Ok(Hook {
        family: FAMILY,
        program,
        via: "tp_btf signal_generate".to_string(),
    })
}

fn attach_libc_uprobe(ebpf: &mut Ebpf, pid: u32) -> Result<Hook, String> {
    let lib = Library::of(pid, "libc.so.6")?;
    let offset = lib
        .offset("sigsuspend")
        .ok_or_else(|| format!("{} exports no sigsuspend", lib.path))?;
    attach_uprobe(
        ebpf,
        FAMILY,
        "gc_sigsuspend_uprobe",
        &lib,
        "sigsuspend",
        offset,
        pid,
    )
    .map_err(|e| format!("{e:#}"))
}
