//! What tracing costs, measured while it runs: lavtrace's own CPU and memory, and the kernel
//! run time of each of its programs (the cost added to the traced system), from the kernel's
//! BPF statistics. Statistics are switched on with BPF_ENABLE_STATS, which lasts only while
//! lavtrace holds the returned descriptor: however lavtrace ends, the setting is restored.
//!
//! The statistics are host-wide: while they are on, every BPF program on the host reads the
//! clock twice per run (on the project's VM: 232 ns added per syscall by the syscalls family
//! with them, 122 without). So by default they are on a duty cycle (`SAMPLE_ON` of every
//! `SAMPLE_EVERY`): a program's time per run is measured as it is, its runs and run time in
//! a window are the sampled ones scaled by the window over the time the statistics were on
//! in it, and the record says so (`kernel_stats_share`). `--bpf-stats-full` (and
//! `--metrics`, whose counters must not carry estimates) holds them all the time.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use serde::Serialize;
use tracing::debug;

/// How the kernel's run-time statistics are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatsMode {
    /// On `SAMPLE_ON` of every `SAMPLE_EVERY`.
    #[default]
    Sampled,
    /// On for the whole trace.
    Full,
    /// Never switched on (no per-program kernel figures).
    Off,
}

/// The duty cycle of `StatsMode::Sampled`: a tenth of the time, once per default interval.
pub const SAMPLE_ON: Duration = Duration::from_millis(100);
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

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
    /// The share of the window the statistics were on (1: all of it; below 1 the runs and
    /// run times are estimates scaled from that share; None: off, or not on in this window).
    pub kernel_stats_share: Option<f64>,
    /// Run time of all lavtrace programs in the kernel, and share of one CPU (None as above,
    /// or when the statistics were not on in the window).
    pub kernel_ns: u64,
    pub kernel_cpu_pct: Option<f64>,
    pub programs: Vec<ProgramCost>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    cpu: Duration,
    /// How long the statistics had been on by `at`, since the meter started.
    stats_on: Duration,
    programs: BTreeMap<String, (u64, u64)>,
}

/// Who holds the statistics' descriptor.
enum Holder {
    Off,
    Full { _fd: OwnedFd, since: Instant },
    Sampled(Arc<Duty>, Option<std::thread::Thread>),
}

/// The sampler thread's account: time on so far, and since when it is on now.
struct Duty {
    stop: AtomicBool,
    on: Mutex<(Duration, Option<Instant>)>,
}

impl Duty {
    fn on_by(&self, at: Instant) -> Duration {
        let on = self.on.lock().unwrap_or_else(|e| e.into_inner());
        on.0 + on
            .1
            .map_or(Duration::ZERO, |since| at.saturating_duration_since(since))
    }

    /// The sampler: the descriptor is held `SAMPLE_ON`, then closed (the host leaves the
    /// statistics off) until the next period. It parks for each whole phase and is unparked
    /// to stop: two wakeups a second, since every wakeup of a lavtrace thread can preempt
    /// another inside a bpf() map operation, which makes the kernel skip programs on that CPU.
    fn run(&self) {
        let mut period = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let fd = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => fd,
                Err(e) => {
                    debug!("kernel BPF run-time statistics unavailable: {e}");
                    return;
                }
            };
            let since = Instant::now();
            self.lock().1 = Some(since);
            park_until(since + SAMPLE_ON, &self.stop);
            drop(fd);
            {
                let mut on = self.lock();
                on.0 += since.elapsed();
                on.1 = None;
            }
            period += SAMPLE_EVERY;
            park_until(period, &self.stop);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Duration, Option<Instant>)> {
        self.on.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parks this thread until `deadline` or a stop (unparks without a stop are slept through).
fn park_until(deadline: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::park_timeout(left);
    }
}

pub struct Meter {
    holder: Holder,
    first: Sample,
    last: Sample,
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Holder::Sampled(duty, sampler) = &self.holder {
            duty.stop.store(true, Ordering::Relaxed);
            if let Some(t) = sampler {
                t.unpark();
            }
        }
    }
}

impl Meter {
    /// Switches on the kernel's per-program run statistics (BPF_ENABLE_STATS) as `mode`
    /// says. They are global: every BPF program on the host, lavtrace's and everyone else's,
    /// then reads the clock twice per run, for as long as lavtrace holds the descriptor.
    pub fn start(ebpf: &Ebpf, mode: StatsMode) -> Meter {
        let holder = match mode {
            StatsMode::Off => Holder::Off,
            // Tried once here, so a kernel without them says so at once (the sampler would
            // only find out in its thread).
            _ => match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Err(e) => {
                    debug!("kernel BPF run-time statistics unavailable: {e}");
                    Holder::Off
                }
                Ok(fd) if mode == StatsMode::Full => Holder::Full {
                    _fd: fd,
                    since: Instant::now(),
                },
                Ok(fd) => {
                    drop(fd);
                    let duty = Arc::new(Duty {
                        stop: AtomicBool::new(false),
                        on: Mutex::new((Duration::ZERO, None)),
                    });
                    let sampler = duty.clone();
                    match std::thread::Builder::new()
                        .name("bpf-stats".into())
                        .spawn(move || sampler.run())
                    {
                        Ok(handle) => Holder::Sampled(duty, Some(handle.thread().clone())),
                        Err(e) => {
                            debug!("no thread for the statistics' duty cycle: {e}");
                            Holder::Off
                        }
                    }
                }
            },
        };
        let mut meter = Meter {
            holder,
            first: Sample {
                at: Instant::now(),
                cpu: Duration::ZERO,
                stats_on: Duration::ZERO,
                programs: BTreeMap::new(),
            },
            last: Sample {
                at: Instant::now(),
                cpu: Duration::ZERO,
                stats_on: Duration::ZERO,
                programs: BTreeMap::new(),
            },
        };
        meter.first = meter.sample(ebpf);
        meter.last = meter.first.clone();
        meter
    }

    fn sample(&self, ebpf: &Ebpf) -> Sample {
        let mut s = sample(ebpf);
        s.stats_on = match &self.holder {
            Holder::Off => Duration::ZERO,
            Holder::Full { since, .. } => s.at.saturating_duration_since(*since),
            Holder::Sampled(duty, _) => duty.on_by(s.at),
        };
        s
    }

    /// Costs since the previous call.
    pub fn interval(&mut self, ebpf: &Ebpf) -> Overhead {
        let now = self.sample(ebpf);
        let o = self.between(&self.last, &now);
        self.last = now;
        o
    }

    /// Costs since the start.
    pub fn whole(&self, ebpf: &Ebpf) -> Overhead {
        self.between(&self.first, &self.sample(ebpf))
    }

    fn between(&self, a: &Sample, b: &Sample) -> Overhead {
        let window = b.at - a.at;
        let share = |ns: u64| {
            (window >= MIN_RATE_WINDOW)
                .then(|| round2(ns as f64 / window.as_nanos() as f64 * 100.0))
        };
        let cpu = b.cpu.saturating_sub(a.cpu).as_nanos() as u64;
        let kernel_stats = !matches!(self.holder, Holder::Off);
        let on = b.stats_on.saturating_sub(a.stats_on);
        // Full: 1 (the clocks of the two reads differ by microseconds, never more than 1).
        let stats_share =
            (kernel_stats && !window.is_zero() && !on.is_zero()).then(|| match self.holder {
                Holder::Full { .. } => 1.0,
                _ => (on.as_secs_f64() / window.as_secs_f64()).min(1.0),
            });
        let scale = |v: u64| stats_share.map_or(0, |s| (v as f64 / s).round() as u64);
        let programs: Vec<ProgramCost> = b
            .programs
            .iter()
            .map(|(name, &(runs, ns))| {
                let (runs0, ns0) = a.programs.get(name).copied().unwrap_or((0, 0));
                let (runs, ns) = (runs.saturating_sub(runs0), ns.saturating_sub(ns0));
                ProgramCost {
                    name: name.clone(),
                    runs: scale(runs),
                    run_time_ns: scale(ns),
                    ns_per_run: ns.checked_div(runs).unwrap_or(0),
                }
            })
            .collect();
        let kernel_ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
        Overhead {
            lavtrace_cpu_ns: cpu,
            lavtrace_cpu_pct: share(cpu),
            lavtrace_rss_bytes: rss_bytes(),
            kernel_stats,
            kernel_stats_share: stats_share.map(round2),
            kernel_ns,
            kernel_cpu_pct: stats_share.and(share(kernel_ns)),
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
        stats_on: Duration::ZERO,
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
        let sampled = match o.kernel_stats_share {
            Some(s) if s < 1.0 => format!(", sampled {:.0}% of the window", s * 100.0),
            Some(_) => String::new(),
            None => ", statistics not on in this window".into(),
        };
        format!(
            "kernel{} ({}{sampled})",
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

    /// A meter on a duty cycle whose samples the tests make up (no thread, no kernel).
    fn meter() -> Meter {
        let s = Sample {
            at: Instant::now(),
            cpu: Duration::ZERO,
            stats_on: Duration::ZERO,
            programs: BTreeMap::from([("p".to_string(), (0, 0))]),
        };
        Meter {
            holder: Holder::Sampled(
                Arc::new(Duty {
                    stop: AtomicBool::new(true),
                    on: Mutex::new((Duration::ZERO, None)),
                }),
                None,
            ),
            first: s.clone(),
            last: s,
        }
    }

    fn after(m: &Meter, wall: Duration, cpu: Duration, on: Duration, kernel_ns: u64) -> Sample {
        Sample {
            at: m.first.at + wall,
            cpu,
            stats_on: on,
            programs: BTreeMap::from([("p".to_string(), (10, kernel_ns))]),
        }
    }

    #[test]
    fn a_vanishing_window_has_no_shares() {
        let m = meter();
        let ms = Duration::from_millis;
        let o = m.between(&m.first, &after(&m, ms(3), ms(4), ms(3), 0));
        assert_eq!((o.lavtrace_cpu_pct, o.kernel_cpu_pct), (None, None));
        assert_eq!(o.lavtrace_cpu_ns, 4_000_000);
        let line = text(&o);
        assert!(!line.contains('%'), "{line}");
        assert!(line.starts_with("COST: lavtrace "), "{line}");
        let json = serde_json::to_value(&o).unwrap();
        assert!(json["lavtrace_cpu_pct"].is_null() && json["kernel_cpu_pct"].is_null());
    }

    #[test]
    fn a_window_with_the_statistics_on_throughout_has_exact_shares() {
        let m = meter();
        let two = Duration::from_secs(2);
        let b = after(&m, two, Duration::from_millis(50), two, 20_000_000);
        let o = m.between(&m.first, &b);
        assert_eq!(o.lavtrace_cpu_pct, Some(2.5));
        assert_eq!(o.kernel_cpu_pct, Some(1.0));
        assert_eq!(o.kernel_stats_share, Some(1.0));
        assert_eq!(
            text(&Overhead {
                lavtrace_rss_bytes: 0,
                ..o
            }),
            "COST: lavtrace 2.50% CPU, 0B RSS; kernel 1.00% CPU (p 2000000ns×10)"
        );
    }

    /// On a tenth of the window: the time per run as measured, runs and run time scaled up
    /// by ten, and the record says it is sampled.
    #[test]
    fn a_sampled_window_scales_runs_and_time_and_says_so() {
        let m = meter();
        let b = after(
            &m,
            Duration::from_secs(2),
            Duration::from_millis(50),
            Duration::from_millis(200),
            20_000_000,
        );
        let o = m.between(&m.first, &b);
        assert_eq!(o.kernel_stats_share, Some(0.1));
        let p = &o.programs[0];
        assert_eq!(
            (p.runs, p.run_time_ns, p.ns_per_run),
            (100, 200_000_000, 2_000_000)
        );
        assert_eq!(o.kernel_cpu_pct, Some(10.0));
        let line = text(&o);
        assert!(
            line.ends_with("(p 2000000ns×100, sampled 10% of the window)"),
            "{line}"
        );
    }

    /// Not on at all in a window: no kernel figures for it, rather than zeros.
    #[test]
    fn a_window_the_statistics_missed_has_no_kernel_figures() {
        let m = meter();
        let s = Duration::from_secs(1);
        let o = m.between(&m.first, &after(&m, s, s, Duration::ZERO, 0));
        assert_eq!((o.kernel_stats_share, o.kernel_cpu_pct), (None, None));
        assert!(text(&o).contains("statistics not on in this window"));
    }
}
