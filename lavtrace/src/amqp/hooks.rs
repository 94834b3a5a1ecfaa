//! Which hooks feed the `amqp` family: the socket data calls (read, write, readv, writev,
//! recvfrom, sendto, recvmsg, sendmsg; recv/send in libc; recvmmsg and sendmmsg, counted as
//! unsynced), accept/accept4 on its AMQP
//! listeners and close, in the two sets of the storage families' table shape
//! (`storage::hooks::Table`), chosen by the same rule:
//!
//! - **kprobes** on `__<arch>_sys_*`: every call of the target however made, nothing for any
//!   other process (their entry programs return at the tgid test).
//! - **uprobes** on the target's glibc, for its pid only: nothing for other processes; calls
//!   that bypass libc (a raw `syscall`, a static binary) are not seen.
//!
//! - **tracepoints** `syscalls:sys_{enter,exit}_*`: only when the session pays the syscall
//!   slow path anyway (the syscalls family): they then add one program run per data call to
//!   other processes, against a trap per call for the target with uprobes. On their own they
//!   would put every thread of the host on the slow syscall path, so auto never takes them
//!   then.
//!
//! Where no set can be had, the family says so in its section and in `check` (never
//! silent), and traces nothing.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{Program, ProgramError, ProgramFd},
};
use lavtrace_common::amqp::{WALK_PROGRAM, WALK_PROGRAM_TP, WALK_PROGRAMS, WALK_PROGRAMS_TP};
use tracing::{info, warn};

use crate::{
    error::Fatal,
    kernel::{Hook, kprobe, tracefs, uprobe::Library},
    storage::{
        self,
        hooks::{Table, UprobeSpec},
    },
};

const READ: &[&str] = &["read", "__read", "__libc_read"];
const WRITE: &[&str] = &["write", "__write", "__libc_write"];
const READV: &[&str] = &["readv", "__readv"];
const WRITEV: &[&str] = &["writev", "__writev"];
const RECV: &[&str] = &["recv", "__recv", "__libc_recv"];
const RECVFROM: &[&str] = &["recvfrom", "__recvfrom", "__libc_recvfrom"];
const SEND: &[&str] = &["send", "__send", "__libc_send"];
const SENDTO: &[&str] = &["sendto", "__sendto", "__libc_sendto"];
const RECVMSG: &[&str] = &["recvmsg", "__recvmsg", "__libc_recvmsg"];
const SENDMSG: &[&str] = &["sendmsg", "__sendmsg", "__libc_sendmsg"];
const RECVMMSG: &[&str] = &["recvmmsg", "__recvmmsg"];
const SENDMMSG: &[&str] = &["sendmmsg", "__sendmmsg"];
const ACCEPT: &[&str] = &["accept", "__libc_accept"];
const ACCEPT4: &[&str] = &["accept4", "__libc_accept4"];
const CLOSE: &[&str] = &["close", "__close"];

const fn u(program: &'static str, functions: &'static [&'static [&'static str]]) -> UprobeSpec {
    UprobeSpec {
        program,
        functions,
        internal: &[],
    }
}

/// Exits before entries: attached in that order, no entry is saved without its exit.
pub const TABLE: Table = Table {
    tracepoints: &[
        (
            "amqp_texit",
            &[
                "sys_exit_read",
                "sys_exit_write",
                "sys_exit_readv",
                "sys_exit_writev",
                "sys_exit_recvfrom",
                "sys_exit_sendto",
                "sys_exit_recvmsg",
                "sys_exit_sendmsg",
                "sys_exit_recvmmsg",
                "sys_exit_sendmmsg",
                "sys_exit_accept",
                "sys_exit_accept4",
            ],
        ),
        (
            "amqp_tenter_read",
            &["sys_enter_read", "sys_enter_recvfrom"],
        ),
        (
            "amqp_tenter_write",
            &["sys_enter_write", "sys_enter_sendto"],
        ),
        ("amqp_tenter_readv", &["sys_enter_readv"]),
        ("amqp_tenter_writev", &["sys_enter_writev"]),
        ("amqp_tenter_recvmsg", &["sys_enter_recvmsg"]),
        ("amqp_tenter_sendmsg", &["sys_enter_sendmsg"]),
        ("amqp_tenter_recvmmsg", &["sys_enter_recvmmsg"]),
        ("amqp_tenter_sendmmsg", &["sys_enter_sendmmsg"]),
        (
            "amqp_tenter_accept",
            &["sys_enter_accept", "sys_enter_accept4"],
        ),
        ("amqp_tclose", &["sys_enter_close"]),
    ],
    uprobes: &[
        u(
            "amqp_uexit",
            &[
                READ, WRITE, READV, WRITEV, RECV, RECVFROM, SEND, SENDTO, RECVMSG, SENDMSG,
                RECVMMSG, SENDMMSG,
            ],
        ),
        u("amqp_uexit_accept", &[ACCEPT, ACCEPT4]),
        u("amqp_uenter_read", &[READ, RECV, RECVFROM]),
        u("amqp_uenter_write", &[WRITE, SEND, SENDTO]),
        u("amqp_uenter_readv", &[READV]),
        u("amqp_uenter_writev", &[WRITEV]),
        u("amqp_uenter_recvmsg", &[RECVMSG]),
        u("amqp_uenter_sendmsg", &[SENDMSG]),
        u("amqp_uenter_recvmmsg", &[RECVMMSG]),
        u("amqp_uenter_sendmmsg", &[SENDMMSG]),
        u("amqp_uenter_accept", &[ACCEPT, ACCEPT4]),
        u("amqp_uclose", &[CLOSE]),
    ],
    kprobes: &[
        (
            "amqp_kexit",
            &[
                "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
                "recvmmsg", "sendmmsg", "accept", "accept4",
            ],
        ),
        ("amqp_kenter_read", &["read", "recvfrom"]),
        ("amqp_kenter_write", &["write", "sendto"]),
        ("amqp_kenter_readv", &["readv"]),
        ("amqp_kenter_writev", &["writev"]),
        ("amqp_kenter_recvmsg", &["recvmsg"]),
        ("amqp_kenter_sendmsg", &["sendmsg"]),
        ("amqp_kenter_recvmmsg", &["recvmmsg"]),
        ("amqp_kenter_sendmmsg", &["sendmmsg"]),
        ("amqp_kenter_accept", &["accept", "accept4"]),
        ("amqp_kclose", &["close"]),
    ],
};

/// Which set (`--amqp-hooks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The tracepoints when the session pays the syscall slow path anyway (the syscalls
    /// family is on); else kprobes where the kernel has them, else uprobes on the target's
    /// glibc.
    #[default]
    Auto,
    Kprobe,
    Uprobe,
    Tracepoint,
}

/// The walk is tail-called by every exit program: loaded and in the slot of each program
/// type's array before any attach.
fn install_walks(ebpf: &mut Ebpf) -> Result<()> {
    for (program, array) in [
        (WALK_PROGRAM, WALK_PROGRAMS),
        (WALK_PROGRAM_TP, WALK_PROGRAMS_TP),
    ] {
        let fd = walk_fd(ebpf, program)?;
        let mut progs = ProgramArray::try_from(
            ebpf.map_mut(array)
                .with_context(|| format!("map {array} missing"))?,
        )?;
        progs.set(0, &fd, 0).context("installing the frame walk")?;
    }
    Ok(())
}

/// `program` loaded (once), and its fd.
fn walk_fd(ebpf: &mut Ebpf, program: &str) -> Result<ProgramFd> {
    let prog = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing"))?;
    let loaded = |r: Result<(), ProgramError>| {
        r.with_context(|| format!("the kernel rejected program {program}"))
    };
    // aya has one `load` per program type, no trait: one arm per type of walk.
    let fd = match prog {
        Program::KProbe(p) => {
            if p.fd().is_err() {
                loaded(p.load())?;
            }
            p.fd()?
        }
        Program::TracePoint(p) => {
            if p.fd().is_err() {
                loaded(p.load())?;
            }
            p.fd()?
        }
        _ => anyhow::bail!("program {program} is of an unexpected type"),
    };
    Ok(fd.try_clone()?)
}

/// Attaches the first set of `mode` that attaches. `syscall_slow_path`: another family of the
/// session already puts every thread on the slow syscall path, so the tracepoints cost the
/// host nothing more (and a target-only hook would cost the target more: a uprobe traps).
/// Ok(Err(why)): no set could be had (auto only: the family then traces nothing and says
/// why).
pub fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    mode: Mode,
    syscall_slow_path: bool,
) -> Result<Result<Vec<Hook>, String>> {
    install_walks(ebpf)?;
    let tracefs = tracefs::tracefs_dir().unwrap_or(tracefs::TRACEFS_DIRS[0]);
    let tables = &[&TABLE];
    let mut why = Vec::new();
    if mode == Mode::Tracepoint || (mode == Mode::Auto && syscall_slow_path) {
        match storage::hooks::attach_tracepoints(ebpf, super::FAMILY, tables) {
            Ok(hooks) => return Ok(Ok(hooks)),
            Err(e) if mode == Mode::Auto => {
                warn!("amqp: the tracepoint set failed, trying the others: {e:#}");
                why.push(format!("tracepoints: {e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
    if matches!(mode, Mode::Auto | Mode::Kprobe) {
        // Auto takes kprobes from 6.1 on only, as the storage families do: in the 5.10
        // guest the kretprobes of blocking reads missed every inbound transfer of the target
        // (frames_in 0, nothing counted as lost; the outbound ones were exact).
        let functions = kprobe::syscall_functions(tracefs).and_then(|f| {
            if mode == Mode::Auto {
                storage::hooks::kprobes_proven_here().map(|()| f)
            } else {
                Ok(f)
            }
        });
        match functions {
            Ok(functions) => {
                match storage::hooks::attach_kprobes(ebpf, super::FAMILY, tables, &functions) {
                    Ok(hooks) => return Ok(Ok(hooks)),
                    Err(e) if mode == Mode::Auto => {
                        warn!("amqp: the kprobe set failed, trying uprobes: {e:#}");
                        why.push(format!("kprobes: {e:#}"));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) if mode == Mode::Kprobe => {
                return Err(Fatal::Unsupported(format!("--amqp-hooks kprobe: {e}")).into());
            }
            Err(e) => why.push(format!("no kprobes: {e}")),
        }
    }
    if matches!(mode, Mode::Auto | Mode::Uprobe) {
        match Library::of(pid, "libc.so.6") {
            Ok(lib) => {
                match storage::hooks::attach_uprobes(ebpf, super::FAMILY, tables, &lib, pid) {
                    Ok(hooks) => return Ok(Ok(hooks)),
                    Err(e) if mode == Mode::Auto => why.push(format!("uprobes: {e:#}")),
                    Err(e) => return Err(e),
                }
            }
            Err(e) if mode == Mode::Uprobe => {
                return Err(Fatal::Unsupported(format!("--amqp-hooks uprobe: {e}")).into());
            }
            Err(e) => why.push(format!("no uprobes: {e}")),
        }
    }
    let why = why.join("; ");
    info!("amqp: not traced: {why}");
    Ok(Err(why))
}

/// `kprobe`, `uprobe`, `tracepoint`, or `none`.
pub fn set_kind(hooks: &[Hook]) -> &'static str {
    match hooks.first().map(|h| h.via.as_str()) {
        Some(v) if v.starts_with('k') => "kprobe",
        Some(v) if v.starts_with('u') => "uprobe",
        Some(_) => "tracepoint",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use aya::programs::{KProbe, TracePoint, UProbe};

    use super::*;
    use crate::storage::hooks::places;

    /// Every libc function of the uprobe set is in this process's glibc, each address once
    /// per program.
    #[test]
    fn every_function_is_in_glibc() {
        let lib = Library::of(std::process::id(), "libc.so.6").unwrap();
        for spec in TABLE.uprobes {
            let p = places(spec, &lib).unwrap();
            let offsets: HashSet<u64> = p.iter().map(|p| p.1).collect();
            assert_eq!(offsets.len(), p.len(), "{}", spec.program);
        }
    }

    /// The kernel verifier accepts every program of the family (loaded, not attached).
    #[test]
    fn this_kernel_verifies_every_program() {
        let mut overrides = crate::kernel::Overrides::default();
        overrides.global_u32(lavtrace_common::filter::TARGET_TGID, std::process::id());
        overrides.global_u32s(
            lavtrace_common::storage::SYSCALL_ARG_OFFSETS,
            &kprobe::SYSCALL_ARG_OFFSETS,
        );
        overrides.fields(super::super::FAMILY, lavtrace_common::storage::FIELDS);
        let mut ebpf = crate::kernel::load(&overrides).unwrap();
        install_walks(&mut ebpf).unwrap();
        for (program, _) in TABLE.kprobes {
            let prog: &mut KProbe = ebpf.program_mut(program).unwrap().try_into().unwrap();
            prog.load().unwrap_or_else(|e| panic!("{program}: {e:#}"));
        }
        for spec in TABLE.uprobes {
            let prog: &mut UProbe = ebpf.program_mut(spec.program).unwrap().try_into().unwrap();
            prog.load()
                .unwrap_or_else(|e| panic!("{}: {e:#}", spec.program));
        }
        let ssl = lavtrace_common::amqp::SSL_ENTRY_PROGRAMS.map(|(_, p)| p);
        for program in ssl
            .into_iter()
            .chain([lavtrace_common::amqp::SSL_RETURN_PROGRAM])
        {
            let prog: &mut UProbe = ebpf.program_mut(program).unwrap().try_into().unwrap();
            prog.load().unwrap_or_else(|e| panic!("{program}: {e:#}"));
        }
        for (program, _) in TABLE.tracepoints {
            let prog: &mut TracePoint = ebpf.program_mut(program).unwrap().try_into().unwrap();
            prog.load().unwrap_or_else(|e| panic!("{program}: {e:#}"));
        }
    }
}
