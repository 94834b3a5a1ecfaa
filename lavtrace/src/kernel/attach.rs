//! Attaching one loaded program to one kernel hook, and the `Hook` record of what was
//! attached. Families call these; the kinds of hook a family can choose from live here
//! (tracepoint and raw tracepoint; uprobes are in `uprobe.rs`, with the library they need).

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{Program, TracePoint},
};
use serde::Serialize;
use tracing::debug;

use crate::error::Fatal;

/// One hook of one family, as attached (reported in the `attached` line and by `check`).
#[derive(Debug, Clone, Serialize)]
pub struct Hook {
    pub family: &'static str,
    pub program: &'static str,
    /// How it is attached, e.g. `tracepoint raw_syscalls:sys_enter`.
    pub via: String,
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

/// Unloads `program` if it is loaded, its links with it: an attach that failed half-way must
/// leave nothing behind that would count a call twice or tax the host.
pub fn unload(ebpf: &mut Ebpf, program: &str) {
    let Some(prog) = ebpf.program_mut(program) else {
        return;
    };
    macro_rules! unload_kinds {
        ($($kind:ident),*) => {
            match prog {
                $(Program::$kind(p) if p.fd().is_ok() => p.unload(),)*
                _ => Ok(()),
            }
        };
    }
    // The kinds lavtrace's families attach; aya has one `unload` per program type, no trait.
    let result = unload_kinds!(
        KProbe,
        UProbe,
        TracePoint,
        RawTracePoint,
        BtfTracePoint,
        PerfEvent
    );
    if let Err(e) = result {
        debug!(program, "unload: {e}");
    }
}

/// A verifier rejection keeps the verifier's log: it is the only way to know what to fix.
fn verifier_error(program: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("the kernel rejected program {program}"))
}
