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

/// Windows shorter than this get no CPU shares: CPU time is accounted in scheduler ticks
/// (4 ms at HZ=250), so over a few milliseconds (the last, partial interval when the duration
/// ends on a tick) one tick of flushing read as "99.93 % CPU".
pub const MIN_RATE_WINDOW: Duration = Duration::from_millis(100);

/// Costs over one window.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// lavtrace's own CPU time (user + system) and share of one CPU (None, JSON null: the
    /// window is shorter than `MIN_RATE_WINDOW`).
    pub lavtrace_cpu_ns: u64,
    pub lavtrace_cpu_pct: Option<f64>,
    pub lavtrace_rss_bytes: u64,
    /// Whether the kernel counted program run time (false: kernel too old or refused).
    pub kernel_stats: bool,
    /// Run time of all lavtrace programs in the kernel, and share of one CPU (None as above).
    pub kernel_ns: u64,
    pub kernel_cpu_pct: Option<f64>,
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
    /// `kernel_stats`: switch on the kernel's per-program run statistics (BPF_ENABLE_STATS).
    /// They are global: every BPF program on the host, lavtrace's and everyone else's, then
    /// reads the clock twice per run, for as long as lavtrace holds the descriptor.
    pub fn start(ebpf: &Ebpf, kernel_stats: bool) -> Meter {
        let stats = if kernel_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    debug!("kernel BPF run-time statistics unavailable: {e}");
                    None
                }
            }
        } else {
            None
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
        let window = b.at - a.at;
        let share = |ns: u64| {
            (window >= MIN_RATE_WINDOW)
                .then(|| round2(ns as f64 / window.as_nanos() as f64 * 100.0))
        };
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
            lavtrace_cpu_pct: share(cpu),
            lavtrace_rss_bytes: rss_bytes(),
            kernel_stats: self._stats.is_some(),
            kernel_ns,
            kernel_cpu_pct: share(kernel_ns),
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

/// One line for text output; shares are left out of a window too short for them.
pub fn text(o: &Overhead) -> String {
    let pct = |p: Option<f64>| p.map(|p| format!(" {p:.2}% CPU")).unwrap_or_default();
    let kernel = if o.kernel_stats {
        let per: Vec<String> = o
            .programs
            .iter()
            .filter(|p| p.runs > 0)
            .map(|p| format!("{} {}ns×{}", p.name, p.ns_per_run, p.runs))
            .collect();
        format!(
            "kernel{} ({})",
            pct(o.kernel_cpu_pct),
            if per.is_empty() {
                "no runs".into()
            } else {
                per.join(", ")
            }
        )
    } else {
        "kernel run time not available".into()
    };
    let own = match o.lavtrace_cpu_pct {
        Some(_) => format!("{},", pct(o.lavtrace_cpu_pct)),
        None => String::new(),
    };
    format!(
        "COST: lavtrace{own} {} RSS; {kernel}",
        crate::units::bytes(o.lavtrace_rss_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> Meter {
        let s = Sample {
            at: Instant::now(),
            cpu: Duration::ZERO,
            programs: BTreeMap::from([("p".to_string(), (0, 0))]),
        };
        Meter {
            _stats: None,
            first: s.clone(),
            last: s,
        }
    }

    fn after(m: &Meter, wall: Duration, cpu: Duration, kernel_ns: u64) -> Sample {
        Sample {
            at: m.first.at + wall,
            cpu,
            programs: BTreeMap::from([("p".to_string(), (10, kernel_ns))]),
        }
    }

    #[test]
    fn a_vanishing_window_has_no_shares() {
        let m = meter();
        let o = m.between(
            &m.first,
            &after(&m, Duration::from_millis(3), Duration::from_millis(4), 0),
        );
        assert_eq!((o.lavtrace_cpu_pct, o.kernel_cpu_pct), (None, None));
        assert_eq!(o.lavtrace_cpu_ns, 4_000_000);
        let line = text(&o);
        assert!(!line.contains('%'), "{line}");
        assert!(line.starts_with("COST: lavtrace "), "{line}");
        let json = serde_json::to_value(&o).unwrap();
        assert!(json["lavtrace_cpu_pct"].is_null() && json["kernel_cpu_pct"].is_null());
    }

    #[test]
    fn a_full_window_has_exact_shares() {
        let m = meter();
        let b = after(
            &m,
            Duration::from_secs(2),
            Duration::from_millis(50),
            20_000_000,
        );
        let o = m.between(&m.first, &b);
        assert_eq!(o.lavtrace_cpu_pct, Some(2.5));
        assert_eq!(o.kernel_cpu_pct, Some(1.0));
        assert_eq!(
            text(&Overhead {
                kernel_stats: true,
                lavtrace_rss_bytes: 0,
                ..o
            }),
            "COST: lavtrace 2.50% CPU, 0B RSS; kernel 1.00% CPU (p 2000000ns×10)"
        );
    }
}
