//! `lavtrace check`: can this kernel do the job? Facts about the host, then every hook of
//! every family tried for real (loaded and attached, then detached).

use std::path::Path;

use anyhow::Result;

use crate::{cli::Probe, ebpf, error::Fatal, session::Session, target::Target, tcp};

pub fn run() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel        {}", release.trim());
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    println!(
        "BTF           {}",
        if btf {
            "yes (/sys/kernel/btf/vmlinux)"
        } else {
            "no"
        }
    );
    println!(
        "tracefs       {}",
        ebpf::tracefs_dir().map_or_else(
            || "not mounted (lavtrace mounts it at /sys/kernel/tracing)".to_string(),
            |d| format!("mounted at {d}")
        )
    );
    let caps = ebpf::effective_caps();
    let cap = |n, name: &str| {
        format!(
            "{name}={}",
            if ebpf::has_cap(caps, n) { "yes" } else { "no" }
        )
    };
    println!(
        "capabilities  {} {} {}",
        cap(39, "CAP_BPF"),
        cap(38, "CAP_PERFMON"),
        cap(21, "CAP_SYS_ADMIN")
    );
    let unpriv = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    println!("unprivileged  kernel.unprivileged_bpf_disabled={unpriv}");
    let max_map = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap_or_default();
    println!("max_map_count {}", max_map.trim());

    // Trial attach, filtered to ourselves so nothing else is touched.
    let me = Target::from_pid(std::process::id())?;
    let mut failed = Vec::new();
    println!();
    for &probe in Probe::all() {
        match Session::attach(me.clone(), &[probe]) {
            Ok(session) => {
                for hook in session.hooks() {
                    println!(
                        "{:<9} {:<20} ok via {}",
                        probe.name(),
                        hook.program,
                        hook.via
                    );
                }
                // Alternatives not chosen, and why (kprobes missing, symbol inlined...).
                if probe == Probe::Tcp {
                    let caps = tcp::hooks::Caps::probe();
                    for (program, status) in tcp::hooks::not_in_use(session.hooks(), &caps) {
                        println!("{:<9} {program:<20} {status}", probe.name());
                    }
                    match tcp::hooks::verify_kprobe_programs() {
                        Ok(refused) if refused.is_empty() => println!(
                            "{:<9} {:<20} every kprobe program passes this kernel's verifier",
                            probe.name(),
                            "*"
                        ),
                        Ok(refused) => {
                            for (program, why) in refused {
                                println!(
                                    "{:<9} {program:<20} verifier refused: {why}",
                                    probe.name()
                                );
                            }
                        }
                        Err(e) => println!(
                            "{:<9} {:<20} kprobe programs not verified: {e:#}",
                            probe.name(),
                            "*"
                        ),
                    }
                }
            }
            Err(e) => {
                if e.chain()
                    .any(|c| matches!(c.downcast_ref::<Fatal>(), Some(Fatal::Permission(_))))
                {
                    return Err(e);
                }
                println!("{:<9} {:<20} unavailable: {e:#}", probe.name(), "*");
                failed.push(probe.name());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Fatal::Unsupported(format!(
            "probe families unavailable here: {}",
            failed.join(", ")
        ))
        .into())
    }
}
