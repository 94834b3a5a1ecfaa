//! Loading the embedded kernel programs and attaching them. Every program and link belongs to
//! the returned `Ebpf` (file descriptors), so when lavtrace exits, however it exits, the kernel
//! detaches everything.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader, programs::TracePoint};
use serde::Serialize;
use tracing::{debug, info};

use lavtrace_common::field::FieldSpec;

use crate::error::Fatal;

/// The object built by build.rs from `lavtrace-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lavtrace"));

/// One hook of one family, as attached (reported in the `attached` line and by `check`).
#[derive(Debug, Clone, Serialize)]
pub struct Hook {
    pub family: &'static str,
    pub program: &'static str,
    /// How it is attached, e.g. `tracepoint raw_syscalls:sys_enter`.
    pub via: String,
}

/// Checks that can fail in ways an operator can fix, before touching the kernel.
pub fn preflight() -> Result<()> {
    check_privileges()?;
    ensure_tracefs()?;
    raise_memlock();
    Ok(())
}

/// Loads the object with the target's tgid baked in as a read-only global, and each ring
/// sized from lavtrace-common (or `ring_bytes`, from --ring-bytes). `per_thread` turns on the
/// syscalls family's per-thread table (also read-only, so the verifier prunes it when off).
/// `fields`: the record-field tables of the families to be attached (family name, table),
/// whose offsets are read from this kernel's tracefs (`crate::fields`); a field missing or of
/// another size fails the load, naming the family.
pub fn load(
    tgid: u32,
    ring_bytes: Option<u32>,
    per_thread: bool,
    fields: &[(&'static str, &'static [FieldSpec])],
) -> Result<Ebpf> {
    let overrides = match tracefs_dir() {
        Some(dir) => crate::fields::from_tracefs(Path::new(dir), fields.iter().copied())
            .map_err(Fatal::Unsupported)?,
        None if fields.is_empty() => crate::fields::Overrides::default(),
        None => return Err(Fatal::Unsupported("tracefs is not mounted".into()).into()),
    };
    let mut loader = EbpfLoader::new();
    loader.override_global(lavtrace_common::filter::TARGET_TGID, &tgid, true);
    let per_thread = u8::from(per_thread);
    loader.override_global(lavtrace_common::syscalls::PER_THREAD, &per_thread, true);
    for (global, offset) in &overrides.offsets {
        loader.override_global(global, offset, true);
    }
    for (global, flag) in &overrides.flags {
        loader.override_global(global, flag, true);
    }
    for (ring, default) in [
        (
            lavtrace_common::fsync::RING,
            lavtrace_common::fsync::RING_BYTES,
        ),
        (
            lavtrace_common::mmap::RING,
            lavtrace_common::mmap::RING_BYTES,
        ),
    ] {
        loader.map_max_entries(ring, ring_bytes.unwrap_or(default));
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { ref io_error, .. })
            if io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            anyhow::Error::new(Fatal::Permission(format!(
                "the kernel refused to create BPF maps ({io_error}); run as root"
            )))
        }
        other => anyhow::Error::new(other).context("loading the eBPF object"),
    })?;
    // Kernel-side diagnostics (rare: a full table); absent if no program logs.
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => spawn_logger(logger),
        Err(e) => debug!("no kernel-side log channel: {e}"),
    }
    Ok(ebpf)
}

fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Loads program `program` and attaches it to tracepoint `category:name`.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    family: &'static str,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<Hook> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a tracepoint program"))?;
    prog.load().map_err(|e| verifier_error(program, e))?;
    prog.attach(category, name).map_err(|e| {
        anyhow::Error::new(Fatal::Unsupported(format!(
            "cannot attach {program} to tracepoint {category}:{name}: {e}"
        )))
    })?;
    debug!(program, "attached to tracepoint {category}:{name}");
    Ok(Hook {
        family,
        program,
        via: format!("tracepoint {category}:{name}"),
    })
}

/// Loads program `program` and attaches it to raw tracepoint `name` (no record is built for
/// it: the program reads the tracepoint's arguments directly, the cheapest hook there is).
pub fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    family: &'static str,
    program: &'static str,
    name: &str,
) -> Result<Hook> {
    let prog: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a raw tracepoint program"))?;
    prog.load().map_err(|e| verifier_error(program, e))?;
    prog.attach(name).map_err(|e| {
        anyhow::Error::new(Fatal::Unsupported(format!(
            "cannot attach {program} to raw tracepoint {name}: {e}"
        )))
    })?;
    debug!(program, "attached to raw tracepoint {name}");
    Ok(Hook {
        family,
        program,
        via: format!("raw_tracepoint {name}"),
    })
}

/// A verifier rejection keeps the verifier's log: it is the only way to know what to fix.
fn verifier_error(program: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("the kernel rejected program {program}"))
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability set of this process.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

fn check_privileges() -> Result<()> {
    let caps = effective_caps();
    let ok = has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON));
    if ok {
        Ok(())
    } else {
        Err(Fatal::Permission(
            "lavtrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load eBPF programs"
                .into(),
        )
        .into())
    }
}

pub const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

pub fn tracefs_dir() -> Option<&'static str> {
    TRACEFS_DIRS
        .into_iter()
        .find(|d| Path::new(d).join("events").is_dir())
}

/// aya resolves tracepoint ids through tracefs; mount it where it is missing, as perf does.
fn ensure_tracefs() -> Result<()> {
    if tracefs_dir().is_some() {
        return Ok(());
    }
    let target = TRACEFS_DIRS[0];
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a constant");
    let (src, dst, fstype) = (c("nodev"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && tracefs_dir().is_some() {
        info!("mounted tracefs at {target}");
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(Fatal::Unsupported(format!(
        "tracefs is not mounted and mounting it failed ({err}); run: mount -t tracefs nodev {target}"
    ))
    .into())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use the memory cgroup
/// and may not let us raise it at all, which is then harmless.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain struct argument.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
