//! `lavtrace check`: can this kernel do the job? Facts about the host, then every hook of
//! every family tried for real (loaded and attached, then detached).

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use lavtrace_common::tcp::state;

use crate::{
    cli::CheckArgs,
    error::Fatal,
    family,
    kernel::{
        Bystanders,
        caps::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN},
        tracefs,
    },
    lavinmq::limits,
    printable::printable,
    session::Session,
    storage::maps,
    target::Target,
    tcp::{procfs, table},
    units,
};

pub fn run(args: &CheckArgs) -> Result<()> {
    // The target first: a wrong --pid/--comm is the operator's first thing to fix (exit 3).
    let target = match (args.pid, args.comm.as_deref()) {
        (Some(pid), _) => Some(Target::from_pid(pid)?),
        (None, Some(comm)) => Some(Target::from_comm(comm)?),
        (None, None) => None,
    };
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
        tracefs::tracefs_dir().map_or_else(
            || "not mounted (lavtrace mounts it at /sys/kernel/tracing)".to_string(),
            |d| format!("mounted at {d}")
        )
    );
    let eff = caps::effective_caps();
    let cap = |n, name: &str| {
        format!(
            "{name}={}",
            if caps::has_cap(eff, n) { "yes" } else { "no" }
        )
    };
    println!(
        "capabilities  {} {} {}",
        cap(CAP_BPF, "CAP_BPF"),
        cap(CAP_PERFMON, "CAP_PERFMON"),
        cap(CAP_SYS_ADMIN, "CAP_SYS_ADMIN")
    );
    let unpriv = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    println!("unprivileged  kernel.unprivileged_bpf_disabled={unpriv}");
    let max_map = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap_or_default();
    println!("max_map_count {}", max_map.trim());
    if let Some(t) = &target {
        println!();
        for line in describe(t) {
            println!("{line}");
        }
    }

    // Trial attach, filtered to ourselves so nothing else is touched.
    let me = Target::myself();
    let mut failed = Vec::new();
    println!();
    for entry in family::visible() {
        let name = entry.name;
        match Session::attach(me.clone(), &[entry]) {
            Ok(session) => {
                for hook in session.hooks() {
                    println!("{name:<9} {:<20} ok via {}", hook.program, hook.via);
                }
                for f in session.families() {
                    for (program, status) in f.tracer.check_notes(session.hooks()) {
                        println!("{name:<9} {program:<20} {status}");
                    }
                }
                // What the operator's other processes pay while this family is attached.
                let cost = Bystanders::of(session.hooks()).family_line(name);
                println!("{name:<9} {:<20} {cost}", "(host cost)");
            }
            Err(e) => {
                if e.chain()
                    .any(|c| matches!(c.downcast_ref::<Fatal>(), Some(Fatal::Permission(_))))
                {
                    return Err(e);
                }
                println!("{name:<9} {:<20} unavailable: {e:#}", "*");
                // An opt-in family (sched) is not a core one: its absence is reported, not fatal.
                if entry.default {
                    failed.push(name);
                }
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

/// The target as /proc shows it: name, threads by name, listening ports, open connections by
/// state, and its mappings against vm.max_map_count.
fn describe(t: &Target) -> Vec<String> {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", t.pid)) {
        for e in dir.flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            *names.entry(comm.trim_end().to_string()).or_default() += 1;
        }
    }
    let threads: Vec<String> = names
        .iter()
        .map(|(n, c)| {
            if *c == 1 {
                n.clone()
            } else {
                format!("{n} ×{c}")
            }
        })
        .collect();
    let sockets = procfs::target_sockets(t.pid);
    let mut listening: Vec<String> = sockets
        .iter()
        .filter(|s| s.state == state::LISTEN)
        .map(|s| match table::service(s.local.port()) {
            Some(svc) => format!("{} ({svc})", s.local),
            None => s.local.to_string(),
        })
        .collect();
    listening.sort();
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.state != state::LISTEN) {
        *by_state.entry(table::state_name(s.state)).or_default() += 1;
    }
    let open: usize = by_state.values().sum();
    let states: Vec<String> = by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mappings = match (maps::live_count(t.pid), maps::max_map_count()) {
        (Some(live), Some(max)) if max > 0 => format!(
            "{live} of vm.max_map_count {max} ({:.1}%)",
            live as f64 * 100.0 / max as f64
        ),
        (Some(live), _) => live.to_string(),
        (None, _) => "unreadable".into(),
    };
    let mut lines = vec![
        format!("target        pid {} ({})", t.pid, printable(&t.comm)),
        format!("threads       {}: {}", t.threads, threads.join(", ")),
        format!(
            "listening     {}{}",
            listening.len(),
            if listening.is_empty() {
                String::new()
            } else {
                format!(": {}", listening.join(", "))
            }
        ),
        format!(
            "connections   {open} open TCP{}",
            if states.is_empty() {
                String::new()
            } else {
                format!(" ({})", states.join(", "))
            }
        ),
        format!("mappings      {mappings}"),
    ];
    if sockets
        .iter()
        .any(|s| s.state == state::LISTEN && s.local.port() == crate::amqp::TLS_PORT)
    {
        lines.push(format!(
            "amqps         {}",
            match crate::amqp::tls::places(t.pid) {
                Ok(p) => p.summary(),
                Err(why) => format!("counted as TLS, not parsed: {why}"),
            }
        ));
    }
    let limits = limits::Watch::new(t.pid).read();
    let l = &limits.limits;
    lines.push(format!(
        "open fds      {}",
        match (l.fds_open, l.fd_limit) {
            (Some(n), Some(max)) => format!(
                "{n} of the open-files limit {max} ({:.1}%)",
                n as f64 * 100.0 / max.max(1) as f64
            ),
            (Some(n), None) => format!("{n} (open-files limit: unlimited)"),
            (None, _) => "unreadable".into(),
        }
    ));
    lines.push(format!(
        "data dir      {}",
        match (&limits.data_dir, l.disk_free_bytes, l.disk_size_bytes) {
            (Some(d), Some(free), Some(size)) => format!(
                "{} ({} on disk): {} free of {}",
                printable(d),
                l.data_dir_bytes.map_or_else(|| "?".into(), units::bytes),
                units::bytes(free),
                units::bytes(size)
            ),
            (Some(d), ..) => format!("{} (disk unreadable)", printable(d)),
            (None, ..) => "not found (no --data-dir, config file or open .lock)".into(),
        }
    ));
    for w in &limits.warnings {
        lines.push(format!("WARNING       {}", limits.warning(*w)));
    }
    lines
}
