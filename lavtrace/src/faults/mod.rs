//! Probe family `faults`: the target's page faults per mapped file (segment, ack file, heap,
//! stacks...), and the dirty-page throttling and writeback waits of its threads.
//!
//! The kernel counts faults per page (`lavtrace-ebpf/src/faults.rs`); nothing is sent per
//! fault. Here the pages are resolved once per interval against the target's mappings as
//! /proc/PID/maps lists them then (the same `storage::maps` model the mmap family keeps),
//! and added up per file. A page whose mapping went away before the interval's reading is
//! counted under `[unmapped]`.

mod pages;
mod report;
pub mod writeback;

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use lavtrace_common::faults::{DIAG_MAP, PAGES_MAP, PageFaults, diag};
use tracing::debug;

pub use report::{FaultsSection, FileRow};

use crate::{
    family::{self, Family, Options, Part, TextOptions, Window},
    kernel::{Hook, attach_tracepoint},
    storage::naming::Namer,
};

pub const FAMILY: &str = "faults";

/// What the attached hooks can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// The error code's write bit (exceptions tracepoints).
    pub writes: bool,
    /// The kernel's major accounting (perf major-faults).
    pub major: bool,
    /// Time in handle_mm_fault (kprobes, `--fault-time`).
    pub time: bool,
}

impl family::Section for FaultsSection {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        family::one_key("faults", self)
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        report::write_text(out, self, text.top);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const ABOUT: &'static str = "Page faults per mapped file (major, write), dirty throttling and \
                                 writeback waits (opt-in: its tracepoints run on every page fault \
                                 and every dirtied page of the host)";
    const DEFAULT: bool = false;
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::faults::FIELDS;

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        Tracer::start(ebpf, pid, options.fault_time)
    }
}

pub struct Tracer {
    pid: u32,
    pages: pages::Pages,
    writeback: writeback::Writeback,
    diag: PerCpuArray<MapData, u64>,
    namer: Namer,
    known: Known,
    /// The kernel's own counters of the process (/proc/PID/stat minflt, majflt) at the
    /// previous reading, and at attach.
    proc_last: Option<(u64, u64)>,
    /// Summed over the windows read; None until one reading succeeded.
    proc_whole: Option<(u64, u64)>,
    /// Per file, every window read (the summary is what the intervals showed).
    whole: BTreeMap<String, pages::Counts>,
    /// inode → path of the target's open files, as last seen (a file written with write(2)
    /// and closed before the reading keeps its name).
    fd_inodes: HashMap<u64, String>,
    /// Resident pages per path at the last reading (/proc/PID/smaps).
    resident: HashMap<String, u64>,
    /// (program, status) lines for `check`.
    notes: Vec<(String, String)>,
}

/// The tracepoints of the fault exceptions (x86): (program, event).
const EXCEPTIONS: [(&str, &str); 2] = [
    ("faults_user", "page_fault_user"),
    ("faults_kernel", "page_fault_kernel"),
];

impl Tracer {
    fn start(ebpf: &mut Ebpf, pid: u32, fault_time: bool) -> Result<(Tracer, Vec<Hook>)> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let pages_map = take(ebpf, PAGES_MAP)?;
        // A descriptor of its own for the batch reads aya does not offer.
        let pages_fd = match &pages_map {
            aya::maps::Map::HashMap(data) => {
                use std::os::fd::AsFd as _;
                data.fd().as_fd().try_clone_to_owned().ok()
            }
            _ => None,
        };
        let pages: BpfHashMap<MapData, u64, PageFaults> = BpfHashMap::try_from(pages_map)?;
        let mut hooks = Vec::new();
        let mut notes = Vec::new();
        let mut known = Known::default();

        // Every fault exception: the tracepoints where the architecture has them.
        let mut exceptions = Vec::new();
        for (program, event) in EXCEPTIONS {
            match attach_tracepoint(ebpf, FAMILY, program, "exceptions", event) {
                Ok(h) => exceptions.push(h),
                Err(e) => {
                    notes.push((
                        program.to_string(),
                        format!(
                            "unavailable: tracepoint exceptions:{event}: {e:#}; fallback: perf \
                             page-faults per thread (no write bit: write_faults null)"
                        ),
                    ));
                    exceptions.clear();
                    break;
                }
            }
        }
        let tids = threads(pid);
        if exceptions.is_empty() {
            // A half-attached pair would count some faults twice (perf and tracepoint).
            unload_tracepoint(ebpf, "faults_user");
            let h = attach_perf(ebpf, "faults_perf_any", SoftwareEvent::PageFaults, "page-faults", pid, &tids)
                .context("counting the target's page faults (neither exceptions:page_fault_user nor a perf page-faults event)")?;
            hooks.push(h);
        } else {
            known.writes = true;
            for h in &exceptions {
                notes.push((
                    h.program.to_string(),
                    "fallback: perf page-faults per thread (every accounted fault, no write bit; \
                     throttled above perf_event_max_sample_rate)"
                        .to_string(),
                ));
            }
            hooks.extend(exceptions);
        }
        match attach_perf(
            ebpf,
            "faults_perf_major",
            SoftwareEvent::PageFaultsMaj,
            "major-faults",
            pid,
            &tids,
        ) {
            Ok(h) => {
                known.major = true;
                notes.push((
                    h.program.to_string(),
                    "fallback: none (faults reported as major/minor unknown: null)".to_string(),
                ));
                hooks.push(h);
            }
            Err(e) => notes.push((
                "faults_perf_major".to_string(),
                format!("unavailable: {e:#}; faults are reported as major/minor unknown (null)"),
            )),
        }
        match fault_time.then(|| attach_fault_time(ebpf)) {
            Some(Ok(h)) => {
                known.time = true;
                hooks.extend(h);
            }
            Some(Err(why)) => notes.push((
                "faults_mm_enter".to_string(),
                format!("unavailable: {why}; fault_time_ns null"),
            )),
            None => notes.push((
                "faults_mm_enter".to_string(),
                "not in use (--fault-time: kprobe and kretprobe on handle_mm_fault, run by \
                 every page fault on the host)"
                    .to_string(),
            )),
        }
        let (writeback, wb_hooks, wb_notes) = writeback::Writeback::attach(ebpf)?;
        hooks.extend(wb_hooks);
        notes.extend(wb_notes);
        let tracer = Tracer {
            pid,
            pages: pages::Pages::new(pages, pages_fd, pid),
            writeback,
            diag: PerCpuArray::try_from(take(ebpf, DIAG_MAP)?)?,
            namer: Namer::seed(pid),
            known,
            proc_last: proc_faults(pid),
            proc_whole: None,
            whole: BTreeMap::new(),
            resident: HashMap::new(),
            fd_inodes: HashMap::new(),
            notes,
        };
        Ok((tracer, hooks))
    }

    fn diag(&self, index: u32) -> u64 {
        self.diag.get(&index, 0).map_or(0, |v| v.iter().sum())
    }

    /// The kernel's own fault counters of the process since the previous reading (None
    /// once the process is gone).
    fn proc_window(&mut self) -> Option<(u64, u64)> {
        let now = proc_faults(self.pid)?;
        let last = self.proc_last.replace(now).unwrap_or(now);
        let w = (now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        let whole = self.proc_whole.get_or_insert((0, 0));
        whole.0 += w.0;
        whole.1 += w.1;
        Some(w)
    }
}

impl family::Tracer for Tracer {
    fn section(&mut self, window: Window, _kernel_lost: u64) -> Result<Option<Part>> {
        let (files, kernel_counted) = match window {
            Window::Interval => {
                let by_file = self.pages.read();
                for (path, c) in &by_file {
                    self.whole.entry(path.clone()).or_default().add(c);
                }
                (by_file, self.proc_window())
            }
            Window::Whole => (self.whole.clone(), self.proc_whole),
        };
        // Read while the target lives (an interval with faults): the summary, after it
        // exited, shows the last figures seen.
        if window == Window::Interval && !files.is_empty() {
            let now = resident_pages(self.pid);
            if !now.is_empty() {
                self.resident = now;
            }
        }
        let resident = &self.resident;
        let rows = files
            .into_iter()
            .map(|(path, c)| report::row(&mut self.namer, path, &c, self.known, resident))
            .collect();
        let table_full =
            self.diag(diag::PAGES_FULL) + self.diag(diag::INODES_FULL) + self.diag(diag::BDIS_FULL);
        let section = FaultsSection {
            files: report::sorted(rows),
            kernel_counted: kernel_counted
                .map(|(minor, major)| report::KernelCounted { minor, major }),
            writeback: self
                .writeback
                .section(window, &self.pages.inode_paths(&mut self.fd_inodes)),
            table_full,
        };
        Ok(Some(Part {
            section: Box::new(section),
            lost_since_attach: table_full,
        }))
    }

    fn check_notes(&self, _in_use: &[Hook]) -> Vec<(String, String)> {
        self.notes.clone()
    }
}

/// kprobe and kretprobe on handle_mm_fault, both or neither (an entry without its return
/// would fill the in-flight table).
fn attach_fault_time(ebpf: &mut Ebpf) -> Result<Vec<Hook>, String> {
    if let Some(why) =
        crate::kernel::tracefs::tracefs_dir().and_then(crate::kernel::kprobe::missing)
    {
        return Err(why);
    }
    let mut hooks = Vec::new();
    for (program, kind) in [
        ("faults_mm_enter", "kprobe"),
        ("faults_mm_exit", "kretprobe"),
    ] {
        let attached = (|| -> Result<()> {
            let prog: &mut aya::programs::KProbe = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel rejected program {program}"))?;
            prog.attach("handle_mm_fault", 0)
                .with_context(|| format!("{kind} handle_mm_fault"))?;
            Ok(())
        })();
        if let Err(e) = attached {
            crate::kernel::unload(ebpf, "faults_mm_enter");
            crate::kernel::unload(ebpf, "faults_mm_exit");
            return Err(format!("{e:#}"));
        }
        hooks.push(Hook {
            family: FAMILY,
            program,
            via: format!("{kind} handle_mm_fault"),
        });
    }
    Ok(hooks)
}

/// Unloads a tracepoint program a failed or half-done attach left loaded.
fn unload_tracepoint(ebpf: &mut Ebpf, program: &str) {
    let Some(prog) = ebpf.program_mut(program) else {
        return;
    };
    let Ok(prog): Result<&mut aya::programs::TracePoint, _> = prog.try_into() else {
        return;
    };
    if prog.fd().is_ok()
        && let Err(e) = prog.unload()
    {
        debug!(program, "unload: {e}");
    }
}

/// The target's threads now.
fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![pid];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// One sampling software event per thread of the target (period 1: the program runs for
/// each), inherited by the threads each creates, all feeding `program`.
fn attach_perf(
    ebpf: &mut Ebpf,
    program: &'static str,
    event: SoftwareEvent,
    event_name: &str,
    pid: u32,
    tids: &[u32],
) -> Result<Hook> {
    let prog: &mut PerfEvent = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a perf_event program"))?;
    prog.load()
        .with_context(|| format!("the kernel rejected program {program}"))?;
    let mut attached = 0;
    for &tid in tids {
        match prog.attach(
            PerfEventConfig::Software(event),
            PerfEventScope::OneProcess {
                pid: tid,
                cpu: None,
            },
            SamplePolicy::Period(1),
            true,
        ) {
            Ok(_) => attached += 1,
            // A thread that exited since the listing.
            Err(e) => debug!("faults: perf {event_name} on thread {tid}: {e}"),
        }
    }
    if attached == 0 {
        anyhow::bail!("perf_event_open software:{event_name} failed for every thread of {pid}");
    }
    Ok(Hook {
        family: FAMILY,
        program,
        via: format!(
            "perf_event software:{event_name} (pid {pid}, {attached} thread{}, inherited)",
            if attached == 1 { "" } else { "s" }
        ),
    })
}

/// minflt and majflt of /proc/PID/stat (fields 10 and 12), the kernel's own accounting for
/// the whole process (its exited threads included).
fn proc_faults(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the comm's closing parenthesis: state is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 3.. → index 0 is field 3; minflt is 10, majflt 12.
    Some((f.get(7)?.parse().ok()?, f.get(9)?.parse().ok()?))
}

/// Resident pages per mapped path, from /proc/PID/smaps (read when an interval had faults).
fn resident_pages(pid: u32) -> HashMap<String, u64> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return HashMap::new();
    };
    parse_smaps(&text)
}

fn parse_smaps(text: &str) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            let kb: u64 = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            if let Some(p) = &current {
                *out.entry(p.clone()).or_default() += kb / 4;
            }
        } else if line.split_whitespace().next().is_some_and(|r| {
            r.contains('-') && r.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }) {
            current = Some(pages::maps_name(line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rss_is_summed_per_path() {
        let text = "7f00-7f10 rw-s 00000000 08:01 12 /d/msgs.0000000001\nSize: 64 kB\nRss: 16 kB\n\
                    7f10-7f20 rw-p 00000000 00:00 0 \nRss: 8 kB\n\
                    7f20-7f30 rw-s 00010000 08:01 12 /d/msgs.0000000001\nRss: 4 kB\n";
        let r = parse_smaps(text);
        assert_eq!(r.get("/d/msgs.0000000001"), Some(&5));
        assert_eq!(r.get("[anonymous]"), Some(&2));
    }
}
