//! What tracing costs, measured while it runs: lavtrace's own CPU and memory, and the kernel
//! run time of each of its programs (the cost added to the traced system), from the kernel's
//! BPF statistics. Statistics are switched on with BPF_ENABLE_STATS, which lasts only while
//! lavtrace holds the returned descriptor: however lavtrace ends, the setting is restored.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use aya::Ebpf;
use serde::Serialize;
use tracing::debug;

#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_run: u64,
}

/// Costs over one window.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// lavtrace's own CPU time (user + system) and share of one CPU.
    pub lavtrace_cpu_ns: u64,
    pub lavtrace_cpu_pct: f64,
    pub lavtrace_rss_bytes: u64,
    /// Whether the kernel counted program run time (false: kernel too old or refused).
    pub kernel_stats: bool,
    /// Run time of all lavtrace programs in the kernel, and share of one CPU.
    pub kernel_ns: u64,
    pub kernel_cpu_pct: f64,
    pub programs: Vec<ProgramCost>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    cpu: Duration,
    programs: BTreeMap<String, (u64, u64)>,
}

pub struct Meter {
    _stats: Option<OwnedFd>,
    first: Sample,
    last: Sample,
}

impl Meter {
    pub fn start(ebpf: &Ebpf) -> Meter {
        let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                debug!("kernel BPF run-time statistics unavailable: {e}");
                None
            }
        };
        let first = sample(ebpf);
        Meter {
            _stats: stats,
            last: first.clone(),
            first,
        }
    }

    /// Costs since the previous call.
    pub fn interval(&mut self, ebpf: &Ebpf) -> Overhead {
        let now = sample(ebpf);
        let o = self.between(&self.last, &now);
        self.last = now;
        o
    }

    /// Costs since the start.
    pub fn whole(&self, ebpf: &Ebpf) -> Overhead {
        self.between(&self.first, &sample(ebpf))
    }

    fn between(&self, a: &Sample, b: &Sample) -> Overhead {
        let wall = (b.at - a.at).as_nanos().max(1) as f64;
        let cpu = b.cpu.saturating_sub(a.cpu).as_nanos() as u64;
        let programs: Vec<ProgramCost> = b
            .programs
            .iter()
            .map(|(name, &(runs, ns))| {
                let (runs0, ns0) = a.programs.get(name).copied().unwrap_or((0, 0));
                let (runs, ns) = (runs.saturating_sub(runs0), ns.saturating_sub(ns0));
                ProgramCost {
                    name: name.clone(),
                    runs,
                    run_time_ns: ns,
                    ns_per_run: ns.checked_div(runs).unwrap_or(0),
                }
            })
            .collect();
        let kernel_ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
        Overhead {
            lavtrace_cpu_ns: cpu,
            lavtrace_cpu_pct: round2(cpu as f64 / wall * 100.0),
            lavtrace_rss_bytes: rss_bytes(),
            kernel_stats: self._stats.is_some(),
            kernel_ns,
            kernel_cpu_pct: round2(kernel_ns as f64 / wall * 100.0),
            programs,
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn sample(ebpf: &Ebpf) -> Sample {
    let programs = ebpf
        .programs()
        .filter_map(|(name, prog)| {
            let info = prog.info().ok()?;
            Some((
                name.to_string(),
                (info.run_count(), info.run_time().as_nanos() as u64),
            ))
        })
        .collect();
    Sample {
        at: Instant::now(),
        cpu: self_cpu(),
        programs,
    }
}

fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// One line for text output.
pub fn text(o: &Overhead) -> String {
    let kernel = if o.kernel_stats {
        let per: Vec<String> = o
            .programs
            .iter()
            .filter(|p| p.runs > 0)
            .map(|p| format!("{} {}ns×{}", p.name, p.ns_per_run, p.runs))
            .collect();
        format!(
            "kernel {:.2}% CPU ({})",
            o.kernel_cpu_pct,
            if per.is_empty() {
                "no runs".into()
            } else {
                per.join(", ")
            }
        )
    } else {
        "kernel run time not available".into()
    };
    format!(
        "COST: lavtrace {:.2}% CPU, {} RSS; {kernel}",
        o.lavtrace_cpu_pct,
        crate::units::bytes(o.lavtrace_rss_bytes)
    )
}
