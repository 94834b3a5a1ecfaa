//! The `faults` section: its JSON rows and its text table.

use std::{collections::HashMap, fmt::Write as _};

use serde::Serialize;

use super::{Known, pages::Counts, writeback::WritebackSection};
use crate::storage::{
    lavinmq::Kind,
    naming::{Namer, QueueRef},
};

/// One mapped file (or anonymous region) over one window.
#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    /// The path the target mapped, or `[heap]`, `[stack]`, `[anonymous]`, `[unmapped]` (the
    /// mapping was gone when the interval was read).
    pub path: String,
    /// `segment`, `ack file`, `file`, `heap`, `stack`, `anonymous`, ... .
    pub kind: String,
    /// The name an operator knows it by (`vhost:…/queue:…/msgs.0000000001`).
    pub display: String,
    /// Its queue, for a file in a LavinMQ queue dir.
    pub queue: Option<QueueRef>,
    pub faults: u64,
    /// Faults the kernel accounted as major / not as major; null where no hook tells.
    pub major: Option<u64>,
    pub minor: Option<u64>,
    /// Faults on a write access; null where the hook has no error code (perf fallback).
    pub write_faults: Option<u64>,
    /// Distinct pages that faulted.
    pub pages_faulted: u64,
    /// Time the kernel spent in handle_mm_fault for them (`--fault-time`, kprobes); null
    /// without.
    pub fault_time_ns: Option<u64>,
    /// Pages of the mapping resident (/proc/PID/smaps Rss) at the last interval with faults.
    pub resident_pages: Option<u64>,
}

/// The kernel's own fault counters of the whole process (/proc/PID/stat) over the window:
/// ground truth for the per-file figures (a fault that raised SIGSEGV is in `faults` only).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelCounted {
    pub minor: u64,
    pub major: u64,
}

/// The JSON `faults` object and the text table.
#[derive(Debug, Clone, Serialize)]
pub struct FaultsSection {
    pub files: Vec<FileRow>,
    /// Null once the process is gone (its /proc entry with it).
    pub kernel_counted: Option<KernelCounted>,
    pub writeback: WritebackSection,
    /// Events the full kernel tables could not hold, since attach.
    pub table_full: u64,
}

pub fn row(
    namer: &mut Namer,
    path: String,
    c: &Counts,
    known: Known,
    resident: &HashMap<String, u64>,
) -> FileRow {
    let (kind, display, queue) = if path.starts_with('[') {
        let k = path
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        (k, path.clone(), None)
    } else {
        let p: std::sync::Arc<str> = std::sync::Arc::from(path.as_str());
        let kind = match namer.kind(&p) {
            Kind::Anonymous => "anonymous",
            k => k.name(),
        };
        let naming = namer.name(&p);
        (
            kind.to_string(),
            naming.display.clone(),
            naming.queue.clone(),
        )
    };
    FileRow {
        resident_pages: resident.get(&path).copied(),
        path,
        kind,
        display,
        queue,
        faults: c.faults,
        major: known.major.then_some(c.major),
        minor: known.major.then_some(c.faults.saturating_sub(c.major)),
        write_faults: known.writes.then_some(c.writes),
        pages_faulted: c.pages,
        fault_time_ns: known.time.then_some(c.time_ns),
    }
}

/// Most faults first.
pub fn sorted(mut rows: Vec<FileRow>) -> Vec<FileRow> {
    rows.sort_by(|a, b| b.faults.cmp(&a.faults).then(a.path.cmp(&b.path)));
    rows
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

pub fn write_text(out: &mut String, s: &FaultsSection, top: usize) {
    let unknown = s.files.iter().any(|f| f.major.is_none());
    let _ = writeln!(
        out,
        "PAGE FAULTS per mapping{}",
        if unknown {
            " (major/minor unknown on this kernel)"
        } else {
            ""
        }
    );
    if s.files.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let timed = s.files.iter().any(|f| f.fault_time_ns.is_some());
        let _ = writeln!(
            out,
            "  {:>9} {:>8} {:>9} {:>8} {:>8} {:>9}{}  {:<10} FILE",
            "FAULTS",
            "MAJOR",
            "MINOR",
            "WRITE",
            "PAGES",
            "RESIDENT",
            if timed { "      TIME" } else { "" },
            "KIND"
        );
        for f in s.files.iter().take(top.max(1)) {
            let time = match f.fault_time_ns {
                Some(ns) if timed => format!(" {:>9}", crate::units::ns(ns)),
                _ if timed => format!(" {:>9}", "-"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:>9} {:>8} {:>9} {:>8} {:>8} {:>9}{time}  {:<10} {}",
                f.faults,
                opt(f.major),
                opt(f.minor),
                opt(f.write_faults),
                f.pages_faulted,
                opt(f.resident_pages),
                f.kind,
                f.display
            );
        }
        if s.files.len() > top.max(1) {
            let _ = writeln!(out, "  ... {} more", s.files.len() - top.max(1));
        }
    }
    if let Some(k) = s.kernel_counted {
        let _ = writeln!(
            out,
            "  the kernel's counters of the process: {} minor, {} major",
            k.minor, k.major
        );
    }
    let wb = &s.writeback;
    for t in &wb.throttle {
        let _ = writeln!(
            out,
            "DIRTY THROTTLING bdi {}: {} balance_dirty_pages, {} paused, {} ms in total, max {} ms",
            t.bdi, t.count, t.paused, t.pause_ms, t.max_pause_ms
        );
    }
    for (title, rows) in [
        ("STABLE-PAGE WAITS", &wb.stable_page_waits),
        ("FOLIOS DIRTIED", &wb.dirtied),
    ] {
        let Some(rows) = rows else { continue };
        for r in rows.iter().take(top.max(1)) {
            let _ = writeln!(
                out,
                "{title}: {} on {}",
                r.count,
                r.path.as_deref().map_or_else(
                    || format!("inode {}", r.ino),
                    crate::storage::lavinmq::display
                )
            );
        }
    }
    if let Some(g) = wb.global {
        let _ = writeln!(
            out,
            "GLOBAL DIRTY: {} pages dirty, {} under writeback (background {}, limit {})",
            g.nr_dirty, g.nr_writeback, g.background_thresh, g.dirty_thresh
        );
    }
    if s.table_full > 0 {
        let _ = writeln!(
            out,
            "KERNEL TABLE FULL: {} faults or writeback events not counted (page table holds {} pages)",
            s.table_full,
            lavtrace_common::faults::MAX_PAGES
        );
    }
}
