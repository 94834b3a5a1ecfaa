//! Which hooks feed the storage families (`fsync`, `mmap`): ONE table of the three sets, and the
//! choice for this session.
//!
//! - **kprobes** on the syscall functions (`__x64_sys_fsync`, ...): every call of the target
//!   whatever made it, nothing for any other process or syscall. Absent
//!   where the kernel has no kprobes (this development host).
//! - **uprobes** on the target's glibc (`libc.so.6`), attached for its pid only: nothing for any
//!   other process, a trap (~6 µs) per call of the target. They see only calls made through
//!   libc: a static binary has no `libc.so.6` mapped and gets the tracepoints; a raw
//!   `syscall(2)` or an inline `syscall` instruction of a dynamically linked target goes past
//!   them (nothing in the target's mappings says so: see the README's storage hooks).
//! - **tracepoints** `syscalls:sys_{enter,exit}_*`: every call, ~0.2 µs each for the target,
//!   but attaching any of them puts every thread of the host on the slow syscall path
//!   (TIF_SYSCALL_TRACEPOINT, +120 ns per syscall of a bystander measured here).
//!
//! `--storage-hooks auto` (the default): the tracepoints when the session has a family that
//! pays the host-wide slow path anyway (the `syscalls` family: then they are the cheaper set
//! for the target), else the kprobes where the kernel has them, else the uprobes when the
//! target maps glibc, falling back to the next set when an attach fails; `kprobe`, `uprobe`
//! and `tracepoint` force a set.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::Array};
use lavtrace_common::storage::ufn;
use tracing::{debug, info, warn};

use crate::{
    error::Fatal,
    family::Options,
    kernel::{
        Hook, Overrides, kprobe, tracefs,
        uprobe::{self, Library},
    },
    storage::nr,
};

/// Which set to use (`--storage-hooks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Tracepoints when the syscalls family is on, else kprobes, else uprobes on glibc, else
    /// tracepoints.
    #[default]
    Auto,
    /// kprobes on the syscall functions only (fails where the kernel has none).
    Kprobe,
    /// uprobes on the target's glibc only (fails where it maps none).
    Uprobe,
    /// `syscalls:*` tracepoints only.
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    Kprobe,
    Uprobe,
    Tracepoint,
}

/// The hooks of one owner (a family, or the shared layer) in both sets. Exits come before
/// entries in each list: attached in that order, no entry is ever saved without its exit.
pub struct Table {
    /// (program, `syscalls:` tracepoints).
    pub tracepoints: &'static [(&'static str, &'static [&'static str])],
    pub uprobes: &'static [UprobeSpec],
    /// (program, syscalls: the function is the arch prefix + the name).
    pub kprobes: &'static [(&'static str, &'static [&'static str])],
}

/// One uprobe program and the libc functions it is attached to.
pub struct UprobeSpec {
    pub program: &'static str,
    /// Each function by its names (aliases); at least one must be exported. A program is
    /// attached once per distinct offset: two names at one address would count a call twice.
    pub functions: &'static [&'static [&'static str]],
    /// glibc's internal variants that libc's own code calls instead (fopen, fclose, opendir,
    /// ...): attached where exported (`GLIBC_PRIVATE`), so their fds are known too.
    pub internal: &'static [&'static str],
}

const fn u(
    program: &'static str,
    functions: &'static [&'static [&'static str]],
    internal: &'static [&'static str],
) -> UprobeSpec {
    UprobeSpec {
        program,
        functions,
        internal,
    }
}

const FSYNC_FUNCTIONS: &[&[&str]] = &[
    &["fsync"],
    &["fdatasync"],
    &["syncfs"],
    &["sync"],
    &["sync_file_range"],
    &["msync"],
];

pub const FSYNC: Table = Table {
    tracepoints: &[
        (
            "fsync_exit",
            &[
                "sys_exit_fsync",
                "sys_exit_fdatasync",
                "sys_exit_syncfs",
                "sys_exit_sync",
                "sys_exit_sync_file_range",
                "sys_exit_msync",
            ],
        ),
        ("fsync_enter0", &["sys_enter_sync"]),
        (
            "fsync_enter1",
            &["sys_enter_fsync", "sys_enter_fdatasync", "sys_enter_syncfs"],
        ),
        ("fsync_enter3", &["sys_enter_msync"]),
        ("fsync_enter4", &["sys_enter_sync_file_range"]),
    ],
    uprobes: &[
        u("fsync_uexit", FSYNC_FUNCTIONS, &[]),
        u("fsync_uenter_fsync", &[&["fsync"]], &[]),
        u("fsync_uenter_fdatasync", &[&["fdatasync"]], &[]),
        u("fsync_uenter_syncfs", &[&["syncfs"]], &[]),
        u("fsync_uenter_sync", &[&["sync"]], &[]),
        u("fsync_uenter_sync_file_range", &[&["sync_file_range"]], &[]),
        u("fsync_uenter_msync", &[&["msync"]], &[]),
    ],
    kprobes: &[
        (
            "fsync_kexit",
            &[
                "fsync",
                "fdatasync",
                "syncfs",
                "sync",
                "sync_file_range",
                "msync",
            ],
        ),
        ("fsync_kenter_fsync", &["fsync"]),
        ("fsync_kenter_fdatasync", &["fdatasync"]),
        ("fsync_kenter_syncfs", &["syncfs"]),
        ("fsync_kenter_sync", &["sync"]),
        ("fsync_kenter_sync_file_range", &["sync_file_range"]),
        ("fsync_kenter_msync", &["msync"]),
    ],
};

const BRK: &[&str] = &["brk", "__brk"];
const MADVISE: &[&str] = &["madvise", "__madvise"];

pub const MMAP: Table = Table {
    tracepoints: &[
        ("mmap_exit", &["sys_exit_madvise", "sys_exit_brk"]),
        ("mmap_enter3", &["sys_enter_madvise"]),
        ("mmap_enter1", &["sys_enter_brk"]),
    ],
    // brk: glibc's sbrk (malloc's) calls it at the same address.
    uprobes: &[
        u("mmap_uexit", &[BRK, MADVISE], &[]),
        u("mmap_uenter_brk", &[BRK], &[]),
        u("mmap_uenter_madvise", &[MADVISE], &[]),
    ],
    kprobes: &[
        ("mmap_kexit", &["brk", "madvise"]),
        ("mmap_kenter_brk", &["brk"]),
        ("mmap_kenter_madvise", &["madvise"]),
    ],
};

const MMAP_FN: &[&str] = &["mmap", "mmap64", "__mmap"];
const MUNMAP: &[&str] = &["munmap", "__munmap"];
const MREMAP: &[&str] = &["mremap", "__mremap"];
const OPEN: &[&str] = &["open", "open64", "__open", "__open64"];
const OPEN_INTERNAL: &[&str] = &["__open_nocancel", "__open64_nocancel"];
const OPENAT: &[&str] = &["openat", "openat64", "__openat", "__openat64"];
const OPENAT_INTERNAL: &[&str] = &["__openat_nocancel", "__openat64_nocancel"];
const DUP: &[&str] = &["dup", "__dup"];
const DUP2: &[&str] = &["dup2", "__dup2"];
const DUP3: &[&str] = &["dup3", "__dup3"];
const FCNTL: &[&str] = &["fcntl", "fcntl64", "__fcntl", "__libc_fcntl64"];
const CLOSE: &[&str] = &["close", "__close"];
const CLOSE_INTERNAL: &[&str] = &["__close_nocancel"];

/// Shared by both families: mmap/munmap/mremap (msync attribution) and fd bookkeeping.
pub const SHARED: Table = Table {
    tracepoints: &[
        (
            "storage_map_exit",
            &["sys_exit_mmap", "sys_exit_munmap", "sys_exit_mremap"],
        ),
        ("storage_map_enter6", &["sys_enter_mmap"]),
        ("storage_map_enter2", &["sys_enter_munmap"]),
        ("storage_map_enter5", &["sys_enter_mremap"]),
        ("storage_fd_open_exit", &["sys_exit_openat"]),
        ("storage_fd_enter2", &["sys_enter_openat"]),
        (
            "storage_fd_dup_exit",
            &[
                "sys_exit_dup",
                "sys_exit_dup2",
                "sys_exit_dup3",
                "sys_exit_fcntl",
            ],
        ),
        (
            "storage_fd_enter1",
            &["sys_enter_dup", "sys_enter_dup2", "sys_enter_dup3"],
        ),
        ("storage_fd_fcntl", &["sys_enter_fcntl"]),
        ("storage_fd_close", &["sys_enter_close"]),
    ],
    uprobes: &[
        u("storage_map_uexit", &[MMAP_FN, MUNMAP, MREMAP], &[]),
        u("storage_map_uenter_mmap", &[MMAP_FN], &[]),
        u("storage_map_uenter_munmap", &[MUNMAP], &[]),
        u("storage_map_uenter_mremap", &[MREMAP], &[]),
        u(
            "storage_fd_open_uexit",
            &[OPEN, OPENAT],
            &[
                "__open_nocancel",
                "__open64_nocancel",
                "__openat_nocancel",
                "__openat64_nocancel",
            ],
        ),
        u("storage_fd_uenter_open", &[OPEN], OPEN_INTERNAL),
        u("storage_fd_uenter2", &[OPENAT], OPENAT_INTERNAL),
        u("storage_fd_dup_uexit", &[DUP, DUP2, DUP3, FCNTL], &[]),
        u("storage_fd_uenter2", &[DUP, DUP2, DUP3], &[]),
        u("storage_fd_ufcntl", &[FCNTL], &[]),
        u("storage_fd_uclose", &[CLOSE], CLOSE_INTERNAL),
    ],
    // The tracepoint set's calls, one for one (open(2) is not there either: glibc's open
    // calls openat).
    kprobes: &[
        ("storage_map_kexit", &["mmap", "munmap", "mremap"]),
        ("storage_map_kenter_mmap", &["mmap"]),
        ("storage_map_kenter_munmap", &["munmap"]),
        ("storage_map_kenter_mremap", &["mremap"]),
        ("storage_fd_open_kexit", &["openat"]),
        ("storage_fd_dup_kexit", &["dup", "dup2", "dup3", "fcntl"]),
        ("storage_fd_kenter2", &["openat", "dup", "dup2", "dup3"]),
        ("storage_fd_kfcntl", &["fcntl"]),
        ("storage_fd_kclose", &["close"]),
    ],
};

/// The read-only globals the uprobe and kprobe programs read, set by each storage family
/// before load (the same values from either).
pub fn overrides(overrides: &mut Overrides) {
    overrides.global_u32s(lavtrace_common::storage::FN_NRS, &fn_nrs());
    overrides.global_u32s(
        lavtrace_common::storage::SYSCALL_ARG_OFFSETS,
        &kprobe::SYSCALL_ARG_OFFSETS,
    );
}

/// This architecture's syscall number of each `ufn` (the `STORAGE_FN_NRS` global).
pub fn fn_nrs() -> [u32; ufn::CALLS] {
    let mut nrs = [0; ufn::CALLS];
    for (f, n) in [
        (ufn::FSYNC, nr::FSYNC),
        (ufn::FDATASYNC, nr::FDATASYNC),
        (ufn::SYNCFS, nr::SYNCFS),
        (ufn::SYNC, nr::SYNC),
        (ufn::SYNC_FILE_RANGE, nr::SYNC_FILE_RANGE),
        (ufn::MSYNC, nr::MSYNC),
        (ufn::MADVISE, nr::MADVISE),
        (ufn::BRK, nr::BRK),
        (ufn::MMAP, nr::MMAP),
        (ufn::MUNMAP, nr::MUNMAP),
        (ufn::MREMAP, nr::MREMAP),
    ] {
        nrs[f] = n;
    }
    nrs
}

/// What the target and this kernel offer: the target's glibc, and the kernel's syscall
/// functions for kprobes (each Err: why there is none).
pub struct Caps {
    pub libc: Result<Library, String>,
    pub syscalls: Result<HashSet<String>, String>,
}

/// The sets to try, in order, for `mode` with `caps`. `syscall_slow_path`: another family of
/// the session already puts every thread on the slow syscall path. Err: why the forced set
/// cannot be had.
pub fn select(mode: Mode, syscall_slow_path: bool, caps: &Caps) -> Result<Vec<Set>, String> {
    match mode {
        Mode::Tracepoint => Ok(vec![Set::Tracepoint]),
        Mode::Kprobe => match &caps.syscalls {
            Ok(_) => Ok(vec![Set::Kprobe]),
            Err(why) => Err(format!("--storage-hooks kprobe: {why}")),
        },
        Mode::Uprobe => match &caps.libc {
            Ok(_) => Ok(vec![Set::Uprobe]),
            Err(why) => Err(format!("--storage-hooks uprobe: {why}")),
        },
        Mode::Auto if syscall_slow_path => {
            debug!("storage: tracepoints (the session pays the syscall slow path anyway)");
            Ok(vec![Set::Tracepoint])
        }
        Mode::Auto => {
            let mut sets = Vec::new();
            match &caps.syscalls {
                Ok(_) => sets.push(Set::Kprobe),
                Err(why) => debug!("storage: no kprobes: {why}"),
            }
            match &caps.libc {
                Ok(_) => sets.push(Set::Uprobe),
                Err(why) => info!("storage: no uprobes: {why}"),
            }
            sets.push(Set::Tracepoint);
            Ok(sets)
        }
    }
}

/// Whether auto may take the kprobe set on this kernel. The kernel matrix proves it exact on
/// 6.1 and 6.12; in the one-vCPU 5.10 guest it lost calls (2 of 5 madvise, once an open)
/// with nothing counted as lost, not yet understood. Older kernels get the uprobes
/// (`--storage-hooks kprobe` still forces the kprobes).
pub(crate) fn kprobes_proven_here() -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) >= (6, 1) {
        Ok(())
    } else {
        Err(format!(
            "kernel {}: the kprobe set is taken by auto from 6.1 on (it lost calls on 5.10)",
            release.trim()
        ))
    }
}

/// Attaches `own` and the shared programs for `family` (turning its `sink` on), in the first
/// set of the choice that attaches; a set that fails half-way is unloaded before the next
/// is tried (auto only).
pub fn attach(
    ebpf: &mut Ebpf,
    family: &'static str,
    own: &Table,
    sink: u32,
    pid: u32,
    options: &Options,
) -> Result<Vec<Hook>> {
    let mut sinks: Array<_, u32> = Array::try_from(
        ebpf.map_mut("STORAGE_SINKS")
            .context("map STORAGE_SINKS missing")?,
    )?;
    sinks
        .set(sink, 1, 0)
        .context("enabling the shared storage records")?;
    let mode = options.storage_hooks;
    let looks = |set| matches!(mode, Mode::Auto) || mode == set;
    let tracefs = tracefs::tracefs_dir().unwrap_or(tracefs::TRACEFS_DIRS[0]);
    let caps = Caps {
        libc: if looks(Mode::Uprobe) && !(mode == Mode::Auto && options.syscall_slow_path) {
            Library::of(pid, "libc.so.6")
        } else {
            Err("not looked for".into())
        },
        syscalls: if looks(Mode::Kprobe) {
            kprobe::syscall_functions(tracefs).and_then(|f| {
                if mode == Mode::Auto {
                    kprobes_proven_here().map(|()| f)
                } else {
                    Ok(f)
                }
            })
        } else {
            Err("not looked for".into())
        },
    };
    let sets = select(mode, options.syscall_slow_path, &caps).map_err(Fatal::Unsupported)?;
    let mut last_err = None;
    for set in sets {
        let attempt = match (set, &caps.libc, &caps.syscalls) {
            (Set::Kprobe, _, Ok(syscalls)) => {
                attach_kprobes(ebpf, family, &[own, &SHARED], syscalls)
            }
            (Set::Uprobe, Ok(lib), _) => attach_uprobes(ebpf, family, &[own, &SHARED], lib, pid),
            (Set::Tracepoint, _, _) => attach_tracepoints(ebpf, family, &[own, &SHARED]),
            _ => Err(anyhow::anyhow!("{set:?}: not available")),
        };
        match attempt {
            Ok(hooks) => return Ok(hooks),
            Err(e) if mode == Mode::Auto && set != Set::Tracepoint => {
                warn!("{family}: the {set:?} set failed, trying the next: {e:#}");
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{family}: no hook set to attach")))
}

/// The tracepoint set of `tables`' programs not loaded yet (the other storage family's attach
/// may have loaded the shared ones). On failure, what this call loaded is unloaded again.
pub(crate) fn attach_tracepoints(
    ebpf: &mut Ebpf,
    family: &'static str,
    tables: &[&Table],
) -> Result<Vec<Hook>> {
    let programs = tables.iter().flat_map(|t| t.tracepoints.iter().copied());
    all_or_none(ebpf, programs, |ebpf, program, tps| {
        super::attach(ebpf, family, program, tps)
    })
}

/// The uprobe set of `tables`' programs not loaded yet, for `pid` only; on failure, what this
/// call loaded is unloaded again.
pub(crate) fn attach_uprobes(
    ebpf: &mut Ebpf,
    family: &'static str,
    tables: &[&Table],
    lib: &Library,
    pid: u32,
) -> Result<Vec<Hook>> {
    let programs = tables
        .iter()
        .flat_map(|t| t.uprobes.iter().map(|spec| (spec.program, spec)));
    all_or_none(ebpf, programs, |ebpf, program, spec| {
        places(spec, lib)?
            .into_iter()
            .map(|(name, offset)| {
                uprobe::attach_uprobe(ebpf, family, program, lib, name, offset, pid)
            })
            .collect()
    })
}

/// The kprobe set of `tables`' programs not loaded yet; on failure, what this call loaded is
/// unloaded again.
pub(crate) fn attach_kprobes(
    ebpf: &mut Ebpf,
    family: &'static str,
    tables: &[&Table],
    functions: &HashSet<String>,
) -> Result<Vec<Hook>> {
    let programs = tables.iter().flat_map(|t| t.kprobes.iter().copied());
    all_or_none(ebpf, programs, |ebpf, program, syscalls| {
        if let Some(missing) = syscalls.iter().find(|s| !functions.contains(**s)) {
            return Err(Fatal::Unsupported(format!(
                "no {}{missing} in /proc/kallsyms (program {program})",
                kprobe::SYSCALL_PREFIX
            ))
            .into());
        }
        syscalls
            .iter()
            .map(|syscall| kprobe::attach_syscall(ebpf, family, program, syscall))
            .collect()
    })
}

/// Attaches each of `programs` that is not loaded yet with `attach_one`. When one fails, every
/// program this call loaded is unloaded again before the error returns: a set that failed
/// half-way must leave nothing attached (the next set tried would count a call twice).
fn all_or_none<T>(
    ebpf: &mut Ebpf,
    programs: impl IntoIterator<Item = (&'static str, T)>,
    mut attach_one: impl FnMut(&mut Ebpf, &'static str, T) -> Result<Vec<Hook>>,
) -> Result<Vec<Hook>> {
    let mut hooks = Vec::new();
    let mut loaded: Vec<&'static str> = Vec::new();
    for (program, what) in programs {
        if is_loaded(ebpf, program) && !loaded.contains(&program) {
            continue;
        }
        loaded.push(program);
        match attach_one(ebpf, program, what) {
            Ok(h) => hooks.extend(h),
            Err(e) => {
                for program in loaded {
                    crate::kernel::unload(ebpf, program);
                }
                return Err(e);
            }
        }
    }
    Ok(hooks)
}

fn is_loaded(ebpf: &Ebpf, program: &str) -> bool {
    ebpf.program(program).is_some_and(|p| p.fd().is_ok())
}

/// (symbol, offset) for each distinct offset of `spec`'s functions in `lib`, each named by
/// its first name found. Err: a function `lib` does not export under any of its names.
pub fn places(spec: &UprobeSpec, lib: &Library) -> Result<Vec<(&'static str, u64)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for names in spec.functions {
        let found: Vec<(&'static str, u64)> = names
            .iter()
            .filter_map(|n| lib.offset(n).map(|o| (*n, o)))
            .collect();
        if found.is_empty() {
            return Err(Fatal::Unsupported(format!(
                "{} exports no {} (uprobe program {})",
                lib.path,
                names.join("/"),
                spec.program
            ))
            .into());
        }
        out.extend(found);
    }
    out.extend(
        spec.internal
            .iter()
            .filter_map(|n| lib.offset(n).map(|o| (*n, o))),
    );
    out.retain(|&(_, offset)| seen.insert(offset));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(libc: bool, kprobes: bool) -> Caps {
        Caps {
            libc: if libc {
                Library::of(std::process::id(), "libc.so.6")
            } else {
                Err("pid 1 maps no libc.so.6 (a static binary, or no glibc)".into())
            },
            syscalls: if kprobes {
                Ok(["fsync".to_string()].into())
            } else {
                Err("kprobes are not compiled into this kernel".into())
            },
        }
    }

    fn this_libc() -> Result<Library, String> {
        Library::of(std::process::id(), "libc.so.6")
    }

    #[test]
    fn auto_prefers_kprobes_then_uprobes_where_nobody_pays_the_slow_path() {
        use Set::*;
        let auto = |slow, libc, kp| select(Mode::Auto, slow, &caps(libc, kp)).unwrap();
        assert_eq!(auto(false, true, true), vec![Kprobe, Uprobe, Tracepoint]);
        assert_eq!(auto(false, true, false), vec![Uprobe, Tracepoint]);
        assert_eq!(auto(false, false, true), vec![Kprobe, Tracepoint]);
        assert_eq!(auto(false, false, false), vec![Tracepoint]);
        for (libc, kp) in [(true, true), (false, false)] {
            assert_eq!(auto(true, libc, kp), vec![Tracepoint]);
        }
    }

    #[test]
    fn forced_sets_are_kept_or_fail_with_the_reason() {
        assert_eq!(
            select(Mode::Uprobe, true, &caps(true, false)).unwrap(),
            vec![Set::Uprobe]
        );
        let err = select(Mode::Uprobe, false, &caps(false, true)).unwrap_err();
        assert!(
            err.starts_with("--storage-hooks uprobe: pid 1 maps no libc.so.6"),
            "{err}"
        );
        assert_eq!(
            select(Mode::Kprobe, true, &caps(false, true)).unwrap(),
            vec![Set::Kprobe]
        );
        let err = select(Mode::Kprobe, false, &caps(true, false)).unwrap_err();
        assert!(
            err.starts_with("--storage-hooks kprobe: kprobes are not compiled"),
            "{err}"
        );
        assert_eq!(
            select(Mode::Tracepoint, false, &caps(true, true)).unwrap(),
            vec![Set::Tracepoint]
        );
    }

    /// The kprobe set covers the tracepoint set's syscalls, one for one.
    #[test]
    fn kprobes_and_tracepoints_hook_the_same_syscalls() {
        for table in [&FSYNC, &MMAP, &SHARED] {
            let mut tps: Vec<&str> = table
                .tracepoints
                .iter()
                .flat_map(|(_, t)| t.iter())
                .map(|t| {
                    t.strip_prefix("sys_enter_")
                        .or(t.strip_prefix("sys_exit_"))
                        .unwrap()
                })
                .collect();
            let mut kps: Vec<&str> = table
                .kprobes
                .iter()
                .flat_map(|(_, s)| s.iter().copied())
                .collect();
            for v in [&mut tps, &mut kps] {
                v.sort_unstable();
                v.dedup();
            }
            assert_eq!(tps, kps);
        }
    }

    /// Against this process's glibc: every function is found, no address is attached twice
    /// by one program, and no two entry programs share an address (a call would be saved
    /// twice, the second entry overwriting the first).
    #[test]
    fn every_function_is_in_glibc_once_per_address() {
        let lib = this_libc().unwrap();
        let mut entries = std::collections::HashMap::new();
        for table in [&FSYNC, &MMAP, &SHARED] {
            for spec in table.uprobes {
                let places = places(spec, &lib).unwrap();
                let offsets: HashSet<u64> = places.iter().map(|p| p.1).collect();
                assert_eq!(offsets.len(), places.len(), "{}", spec.program);
                if spec.program.contains("exit") {
                    continue;
                }
                for (name, offset) in places {
                    if let Some(other) = entries.insert(offset, (spec.program, name)) {
                        // storage_fd_uenter2 is listed twice (openat, and dup*).
                        assert_eq!(other.0, spec.program, "{name} and {other:?}");
                        assert_ne!(other.1, name);
                    }
                }
            }
        }
        // The aliases were folded: mmap once, open and its internal variant apart.
        let shared = |p: &str| {
            let spec = SHARED.uprobes.iter().find(|s| s.program == p).unwrap();
            places(spec, &lib).unwrap()
        };
        assert_eq!(shared("storage_map_uenter_mmap").len(), 1);
        let open = shared("storage_fd_uenter_open");
        assert_eq!(open[0].0, "open");
        assert!(open.len() <= 2, "{open:?}");
    }

    #[test]
    fn a_missing_function_names_itself() {
        let lib = this_libc().unwrap();
        let spec = u(
            "fsync_uexit",
            &[&["fsync"], &["no_such_fn", "nor_this"]],
            &[],
        );
        let err = places(&spec, &lib).unwrap_err().to_string();
        assert!(err.contains("exports no no_such_fn/nor_this"), "{err}");
    }

    /// The verifier of this kernel accepts every kprobe program (loaded, not attached: this
    /// host cannot attach kprobes; the guests attach them in tests/fsync.rs and mmap.rs).
    #[test]
    fn this_kernel_verifies_every_kprobe_program() {
        let mut overrides = Overrides::default();
        overrides.global_u32(lavtrace_common::filter::TARGET_TGID, std::process::id());
        super::overrides(&mut overrides);
        let mut ebpf = crate::kernel::load(&overrides).unwrap();
        for table in [&FSYNC, &MMAP, &SHARED] {
            for (program, _) in table.kprobes {
                let prog: &mut aya::programs::KProbe =
                    ebpf.program_mut(program).unwrap().try_into().unwrap();
                if prog.fd().is_err() {
                    prog.load().unwrap_or_else(|e| panic!("{program}: {e:#}"));
                }
            }
        }
    }

    #[test]
    fn every_number_is_set() {
        assert!(fn_nrs().iter().all(|&n| n != 0));
    }
}
