//! Which hooks feed the `amqp` family: the socket data calls (read, write, readv, writev,
//! recvfrom, sendto, recvmsg, sendmsg; recv/send in libc), accept/accept4 on its AMQP
//! listeners and close, in the two sets of the storage families' table shape
//! (`storage::hooks::Table`), chosen by the same rule:
//!
//! - **kprobes** on `__<arch>_sys_*`: every call of the target however made, nothing for any
//!   other process (their entry programs return at the tgid test).
//! - **uprobes** on the target's glibc, for its pid only: nothing for other processes; calls
//!   that bypass libc (a raw `syscall`, a static binary) are not seen.
//!
//! No syscall tracepoint set: it would put every thread of the host on the slow syscall path
//! for a family in the default set. Where neither set can be had, the family says so in its
//! section and in `check` (never silent), and traces nothing.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::ProgramArray, programs::KProbe};
use lavtrace_common::amqp::{WALK_PROGRAM, WALK_PROGRAMS};
use tracing::{info, warn};

use crate::{
    kernel::{
        Hook, kprobe, tracefs,
        uprobe::{self, Library},
    },
    storage::hooks::{Table, UprobeSpec, places},
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
    tracepoints: &[],
    uprobes: &[
        u(
            "amqp_uexit",
            &[
                READ, WRITE, READV, WRITEV, RECV, RECVFROM, SEND, SENDTO, RECVMSG, SENDMSG,
            ],
        ),
        u("amqp_uexit_accept", &[ACCEPT, ACCEPT4]),
        u("amqp_uenter_read", &[READ, RECV, RECVFROM]),
        u("amqp_uenter_write", &[WRITE, SEND, SENDTO]),
        u("amqp_uenter_readv", &[READV]),
        u("amqp_uenter_writev", &[WRITEV]),
        u("amqp_uenter_recvmsg", &[RECVMSG]),
        u("amqp_uenter_sendmsg", &[SENDMSG]),
        u("amqp_uenter_accept", &[ACCEPT, ACCEPT4]),
        u("amqp_uclose", &[CLOSE]),
    ],
    kprobes: &[
        (
            "amqp_kexit",
            &[
                "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
                "accept", "accept4",
            ],
        ),
        ("amqp_kenter_read", &["read", "recvfrom"]),
        ("amqp_kenter_write", &["write", "sendto"]),
        ("amqp_kenter_readv", &["readv"]),
        ("amqp_kenter_writev", &["writev"]),
        ("amqp_kenter_recvmsg", &["recvmsg"]),
        ("amqp_kenter_sendmsg", &["sendmsg"]),
        ("amqp_kenter_accept", &["accept", "accept4"]),
        ("amqp_kclose", &["close"]),
    ],
};

/// Which set (`--amqp-hooks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// kprobes where the kernel has them, else uprobes on the target's glibc.
    #[default]
    Auto,
    Kprobe,
    Uprobe,
}

/// The walk is tail-called by every exit program: loaded and in its slot before any attach.
fn install_walk(ebpf: &mut Ebpf) -> Result<()> {
    let prog: &mut KProbe = ebpf
        .program_mut(WALK_PROGRAM)
        .context("program amqp_walk missing")?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .context("the kernel rejected program amqp_walk")?;
    }
    let fd = prog.fd()?.try_clone()?;
    let mut progs = ProgramArray::try_from(
        ebpf.map_mut(WALK_PROGRAMS)
            .context("map AMQP_WALK_PROGS missing")?,
    )?;
    progs.set(0, &fd, 0).context("installing the frame walk")?;
    Ok(())
}

/// Attaches the first set of `mode` that attaches. Ok(Err(why)): no set could be had (auto
/// only: the family then traces nothing and says why).
pub fn attach(ebpf: &mut Ebpf, pid: u32, mode: Mode) -> Result<Result<Vec<Hook>, String>> {
    install_walk(ebpf)?;
    let tracefs = tracefs::tracefs_dir().unwrap_or(tracefs::TRACEFS_DIRS[0]);
    let mut why = Vec::new();
    if matches!(mode, Mode::Auto | Mode::Kprobe) {
        // Auto takes kprobes from 6.1 on only, as the storage families do: in the 5.10
        // guest the kretprobes of blocking reads missed every inbound transfer of the target
        // (frames_in 0, nothing counted as lost; the outbound ones were exact).
        let functions = kprobe::syscall_functions(tracefs).and_then(|f| {
            if mode == Mode::Auto {
                crate::storage::hooks::kprobes_proven_here().map(|()| f)
            } else {
                Ok(f)
            }
        });
        match functions {
            Ok(functions) => match attach_kprobes(ebpf, &functions) {
                Ok(hooks) => return Ok(Ok(hooks)),
                Err(e) if mode == Mode::Auto => {
                    warn!("amqp: the kprobe set failed, trying uprobes: {e:#}");
                    why.push(format!("kprobes: {e:#}"));
                }
                Err(e) => return Err(e),
            },
            Err(e) if mode == Mode::Kprobe => {
                return Err(
                    crate::error::Fatal::Unsupported(format!("--amqp-hooks kprobe: {e}")).into(),
                );
            }
            Err(e) => why.push(format!("no kprobes: {e}")),
        }
    }
    if matches!(mode, Mode::Auto | Mode::Uprobe) {
        match Library::of(pid, "libc.so.6") {
            Ok(lib) => match attach_uprobes(ebpf, &lib, pid) {
                Ok(hooks) => return Ok(Ok(hooks)),
                Err(e) if mode == Mode::Auto => why.push(format!("uprobes: {e:#}")),
                Err(e) => return Err(e),
            },
            Err(e) if mode == Mode::Uprobe => {
                return Err(
                    crate::error::Fatal::Unsupported(format!("--amqp-hooks uprobe: {e}")).into(),
                );
            }
            Err(e) => why.push(format!("no uprobes: {e}")),
        }
    }
    let why = why.join("; ");
    info!("amqp: not traced: {why}");
    Ok(Err(why))
}

fn attach_kprobes(ebpf: &mut Ebpf, functions: &HashSet<String>) -> Result<Vec<Hook>> {
    let mut hooks = Vec::new();
    let result = (|| -> Result<()> {
        for (program, syscalls) in TABLE.kprobes {
            if let Some(missing) = syscalls.iter().find(|s| !functions.contains(**s)) {
                anyhow::bail!("no {}{missing} in /proc/kallsyms", kprobe::SYSCALL_PREFIX);
            }
            for syscall in *syscalls {
                hooks.push(kprobe::attach_syscall(
                    ebpf,
                    super::FAMILY,
                    program,
                    syscall,
                )?);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(hooks),
        Err(e) => {
            for (program, _) in TABLE.kprobes {
                crate::kernel::unload(ebpf, program);
            }
            Err(e)
        }
    }
}

fn attach_uprobes(ebpf: &mut Ebpf, lib: &Library, pid: u32) -> Result<Vec<Hook>> {
    let mut hooks = Vec::new();
    let result = (|| -> Result<()> {
        for spec in TABLE.uprobes {
            for (name, offset) in places(spec, lib)? {
                hooks.push(uprobe::attach_uprobe(
                    ebpf,
                    super::FAMILY,
                    spec.program,
                    lib,
                    name,
                    offset,
                    pid,
                )?);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(hooks),
        Err(e) => {
            for spec in TABLE.uprobes {
                crate::kernel::unload(ebpf, spec.program);
            }
            Err(e)
        }
    }
}

/// `kprobe`, `uprobe`, or `none`.
pub fn set_kind(hooks: &[Hook]) -> &'static str {
    match hooks.first().map(|h| h.via.as_str()) {
        Some(v) if v.starts_with('k') => "kprobe",
        Some(_) => "uprobe",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut ebpf = crate::kernel::load(&overrides).unwrap();
        install_walk(&mut ebpf).unwrap();
        for (program, _) in TABLE.kprobes {
            let prog: &mut KProbe = ebpf.program_mut(program).unwrap().try_into().unwrap();
            prog.load().unwrap_or_else(|e| panic!("{program}: {e:#}"));
        }
        for spec in TABLE.uprobes {
            let prog: &mut aya::programs::UProbe =
                ebpf.program_mut(spec.program).unwrap().try_into().unwrap();
            prog.load()
                .unwrap_or_else(|e| panic!("{}: {e:#}", spec.program));
        }
    }
}
