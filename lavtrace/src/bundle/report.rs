//! report.md: the LavinMQ troubleshooting guide's issue template, filled in with what lavtrace
//! knows; what only a person knows is left under headings marked as theirs to write.

use std::fmt::Write as _;

use super::{Bundle, summary::TraceSummary};
use crate::units;

/// Marks a section only the reporter can write.
pub const FOR_YOU: &str = "_(to be written by the reporter)_";

pub fn markdown(b: &Bundle) -> String {
    let mut o = String::new();
    let t = &b.trace;
    let _ = writeln!(o, "# LavinMQ issue report\n");
    let _ = writeln!(
        o,
        "Collected by `lavtrace bundle` from process {} (`{}`) at {} (Unix time), traced for {}.\n",
        b.pid,
        b.comm,
        b.taken_at,
        units::ns(t.duration_ms.saturating_mul(1_000_000))
    );
    let _ = writeln!(o, "## Summary\n\n{FOR_YOU}\n");
    let _ = writeln!(o, "## Environment\n");
    let _ = writeln!(o, "- Version: {}", b.env.version_line());
    let _ = writeln!(o, "- Binary: `{}`", b.env.exe);
    let _ = writeln!(o, "- OS: {}", b.env.os_release);
    let _ = writeln!(o, "- Kernel: `{}`", b.env.uname);
    let _ = writeln!(
        o,
        "- Config: {}\n",
        match &b.config {
            Ok(c) => format!(
                "`{}` (in config/, {} secret values redacted)",
                c.path, c.redacted
            ),
            Err(e) => e.clone(),
        }
    );
    let _ = writeln!(o, "## Reproduction Steps\n\n{FOR_YOU}\n");
    let _ = writeln!(o, "## Expected Behavior\n\n{FOR_YOU}\n");
    let _ = writeln!(o, "## Actual Behavior\n\n{FOR_YOU}\n");
    let _ = writeln!(o, "## Logs and Diagnostics\n");
    let _ = writeln!(o, "### Server-state dump (usr1.txt)\n");
    if b.usr1.notes.is_empty() {
        let _ = writeln!(
            o,
            "SIGUSR1 sent; {} bytes written to stdout/stderr in the dump window.",
            b.usr1.text.len()
        );
    }
    for n in &b.usr1.notes {
        let _ = writeln!(o, "- {n}");
    }
    let _ = writeln!(o, "\n### Resources (resources.txt)\n");
    let r = &b.resources;
    let l = &r.limits;
    let of = |used: Option<u64>, limit: Option<u64>| match (used, limit) {
        (Some(u), Some(l)) if l > 0 => format!("{u} of {l} ({}%)", u * 100 / l),
        (Some(u), _) => format!("{u} (no limit)"),
        _ => "unknown".into(),
    };
    let _ = writeln!(o, "- Open files: {}", of(l.fds_open, l.fd_limit));
    let _ = writeln!(o, "- Mappings: {}", of(l.mappings, l.max_map_count));
    let _ = writeln!(
        o,
        "- Memory: VmRSS {} kB, VmSize {} kB",
        r.vm_rss_kib.map_or("?".into(), |v| v.to_string()),
        r.vm_size_kib.map_or("?".into(), |v| v.to_string())
    );
    let _ = writeln!(
        o,
        "- Data dir: {}{}",
        r.data_dir.as_deref().unwrap_or("not found"),
        match (l.disk_free_bytes, l.disk_size_bytes) {
            (Some(f), Some(s)) => format!(", {} free of {}", units::bytes(f), units::bytes(s)),
            _ => String::new(),
        }
    );
    let established = r
        .connections_by_state
        .get("ESTABLISHED")
        .copied()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "- TCP: {} listening, {established} established",
        r.listening.len()
    );
    for w in l.warnings() {
        let _ = writeln!(o, "- **Warning**: {w:?} near its limit");
    }
    let _ = writeln!(o, "\n### Trace (trace.txt, trace.json, report.html)\n");
    trace_section(&mut o, t);
    if let Some(e) = &b.trace_error {
        let _ = writeln!(o, "- The trace did not complete: {e}");
    }
    let _ = writeln!(o, "\n### Logs (logs.txt)\n");
    match &b.journal {
        Ok(j) => {
            let _ = writeln!(o, "- {} journal lines", j.lines().count());
        }
        Err(e) => {
            let _ = writeln!(o, "- {e}");
        }
    }
    let _ = writeln!(o, "\n## Stack Trace\n");
    if b.stack_traces.is_empty() {
        let _ = writeln!(
            o,
            "No \"Unhandled exception\" in the logs collected.\n\n{FOR_YOU}"
        );
    } else {
        for st in &b.stack_traces {
            let _ = writeln!(o, "```\n{st}\n```");
        }
    }
    o
}

fn trace_section(o: &mut String, t: &TraceSummary) {
    let _ = writeln!(o, "- Events lost in the kernel: {}", t.lost_events);
    let total: u64 = t.syscalls.iter().map(|s| s.count).sum();
    let _ = writeln!(o, "- Syscalls: {total}");
    if !t.syscalls.is_empty() {
        let _ = writeln!(
            o,
            "\n| syscall | count | errors | p99 | max |\n|---|---|---|---|---|"
        );
        for s in t.syscalls.iter().take(10) {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                s.name,
                s.count,
                s.errors,
                units::ns(s.p99_ns),
                units::ns(s.max_ns)
            );
        }
        let _ = writeln!(o);
    }
    for d in &t.durability {
        let _ = writeln!(
            o,
            "- `{}`: {} calls, p99 {}, max {}",
            d.label,
            d.count,
            units::ns(d.p99_ns),
            units::ns(d.max_ns)
        );
    }
}
