//! One tracing run: load and attach the asked-for families, report every interval, and finish
//! with a summary when the duration ends, a signal arrives or the target exits.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use lavtrace_common::{field::FieldSpec, ring::lost};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cli::{Format, Probe, ReportArgs},
    ebpf::{self, Hook},
    fsync, metrics, mmap,
    output::{End, Output, Sections},
    overhead::Meter,
    ringbuf::LostCounters,
    syscalls,
    target::{ExitWatch, Target},
    tcp,
    tui::{Action, Tui},
};

/// Per-family options of an attach (defaults: what `lavtrace check` tries).
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    pub tcp_hooks: tcp::hooks::Mode,
    /// fsync family: print calls slower than this as they happen.
    pub slow: Option<Duration>,
    /// Slow calls as JSON records rather than text lines.
    pub json: bool,
    /// Ring size override (tests use a tiny ring to force losses).
    pub ring_bytes: Option<u32>,
    /// `--per-thread`.
    pub per_thread: bool,
    pub syscalls_hooks: crate::cli::SyscallHooks,
}

impl From<&ReportArgs> for AttachOptions {
    fn from(args: &ReportArgs) -> Self {
        AttachOptions {
            tcp_hooks: args.tcp_hooks,
            slow: args.slow,
            json: args.format == Format::Json,
            ring_bytes: args.ring_bytes,
            per_thread: args.per_thread,
            syscalls_hooks: args.syscalls_hooks,
        }
    }
}

pub struct Session {
    // Owns every program and link: dropping it detaches everything.
    ebpf: Ebpf,
    meter: Meter,
    target: Target,
    probes: Vec<Probe>,
    hooks: Vec<Hook>,
    /// Per-family counts of events the kernel could not put in a ring.
    lost: LostCounters,
    syscalls: Option<syscalls::Tracer>,
    tcp: Option<tcp::Tracer>,
    fsync: Option<fsync::Tracer>,
    mmap: Option<mmap::Tracer>,
    /// `--metrics`: fed every interval.
    metrics: Option<metrics::Exporter>,
}

/// The tracepoint record fields `probe`'s programs read (checked against tracefs at load).
fn record_fields(probe: Probe) -> Option<(&'static str, &'static [FieldSpec])> {
    let table = match probe {
        Probe::Syscalls => lavtrace_common::syscalls::FIELDS,
        Probe::Fsync | Probe::Mmap => lavtrace_common::storage::FIELDS,
        Probe::Tcp => lavtrace_common::tcp::FIELDS,
        Probe::Floor | Probe::FloorTracepoint => return None,
    };
    Some((probe.name(), table))
}

#[derive(Clone, Copy)]
enum Window {
    Interval,
    Whole,
}

impl Session {
    /// Loads the programs for `probes`, filtered to `target`, and attaches them.
    pub fn attach(target: Target, probes: &[Probe]) -> Result<Session> {
        Session::attach_opts(target, probes, &AttachOptions::default())
    }

    /// `attach`, with the options of a report (--probes, --tcp-hooks, --slow, --ring-bytes).
    pub fn attach_with(target: Target, args: &ReportArgs) -> Result<Session> {
        Session::attach_opts(target, &args.probes, &args.into())
    }

    fn attach_opts(target: Target, probes: &[Probe], options: &AttachOptions) -> Result<Session> {
        ebpf::preflight()?;
        let mut probes = probes.to_vec();
        probes.sort_unstable();
        probes.dedup();
        let fields: Vec<_> = probes.iter().filter_map(|p| record_fields(*p)).collect();
        let mut ebpf = ebpf::load(target.pid, options.ring_bytes, options.per_thread, &fields)?;
        let lost = LostCounters::take(&mut ebpf)?;
        let mut hooks = Vec::new();
        let mut syscalls = None;
        let mut tcp = None;
        let (mut fsync, mut mmap) = (None, None);
        let mut slow = options
            .slow
            .map(|d| fsync::slow::SlowLog::new(d, options.json, target.pid));
        for probe in &probes {
            match probe {
                Probe::Syscalls => {
                    let (tracer, h) = syscalls::Tracer::attach(
                        &mut ebpf,
                        options.per_thread,
                        target.pid,
                        options.syscalls_hooks,
                    )
                    .context("attaching the syscalls family")?;
                    syscalls = Some(tracer);
                    hooks.extend(h);
                }
                Probe::FloorTracepoint => {
                    for (program, name) in
                        [("floor_exit", "sys_exit"), ("floor_enter", "sys_enter")]
                    {
                        hooks.push(ebpf::attach_tracepoint(
                            &mut ebpf,
                            "floor",
                            program,
                            "raw_syscalls",
                            name,
                        )?);
                    }
                }
                Probe::Floor => {
                    for (program, name) in [
                        ("floor_raw_exit", "sys_exit"),
                        ("floor_raw_enter", "sys_enter"),
                    ] {
                        hooks.push(ebpf::attach_raw_tracepoint(
                            &mut ebpf, "floor", program, name,
                        )?);
                    }
                }
                Probe::Tcp => {
                    let (tracer, h) = tcp::Tracer::attach(&mut ebpf, target.pid, options.tcp_hooks)
                        .context("attaching the tcp family")?;
                    tcp = Some(tracer);
                    hooks.extend(h);
                }
                Probe::Fsync => {
                    let (tracer, h) = fsync::Tracer::attach(
                        &mut ebpf,
                        target.pid,
                        slow.take(),
                        options.per_thread,
                    )
                    .context("attaching the fsync family")?;
                    fsync = Some(tracer);
                    hooks.extend(h);
                }
                Probe::Mmap => {
                    let (tracer, h) =
                        mmap::Tracer::attach(&mut ebpf, target.pid, options.per_thread)
                            .context("attaching the mmap family")?;
                    mmap = Some(tracer);
                    hooks.extend(h);
                }
            }
        }
        info!(pid = target.pid, hooks = hooks.len(), "attached");
        Ok(Session {
            meter: Meter::start(&ebpf),
            ebpf,
            target,
            probes,
            hooks,
            lost,
            syscalls,
            tcp,
            fsync,
            mmap,
            metrics: None,
        })
    }

    /// Feeds every interval's sections to the `--metrics` endpoint, if there is one.
    pub fn export_to(mut self, metrics: Option<&metrics::Exporter>) -> Session {
        self.metrics = metrics.cloned();
        self
    }

    fn export(&self, sections: &Sections) {
        if let Some(m) = &self.metrics {
            m.observe(&self.target, sections);
        }
    }

    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// Waits until every event already in the kernel's rings has been aggregated.
    async fn flush(&mut self) {
        if let Some(t) = &self.fsync {
            t.flush().await;
        }
        if let Some(t) = &self.mmap {
            t.flush().await;
        }
        if let Some(t) = &self.tcp {
            t.flush().await;
        }
    }

    fn sections(&mut self, window: Window) -> Result<Sections> {
        let mut s = Sections {
            overhead: Some(match window {
                Window::Interval => self.meter.interval(&self.ebpf),
                Window::Whole => self.meter.whole(&self.ebpf),
            }),
            ..Sections::default()
        };
        if let Some(t) = self.syscalls.as_mut() {
            let (rows, untimed) = match window {
                Window::Interval => t.interval()?,
                Window::Whole => t.summary()?,
            };
            s.syscalls = Some(rows);
            s.threads = t.threads(matches!(window, Window::Whole))?;
            s.lost_events.insert(syscalls::FAMILY, untimed);
        }
        let whole = matches!(window, Window::Whole);
        if let Some(t) = self.fsync.as_mut() {
            let (rows, lost) = t.section(whole, self.lost.get(lost::FSYNC));
            s.fsync = Some(rows);
            s.lost_events.insert(fsync::FAMILY, lost);
        }
        if let Some(t) = self.mmap.as_mut() {
            let (section, lost) = t.section(whole, self.lost.get(lost::MMAP));
            s.mmap = Some(section);
            s.lost_events.insert(mmap::FAMILY, lost);
        }
        if let Some(t) = self.tcp.as_mut() {
            let kernel_lost = self.lost.get(lost::TCP);
            let (section, lost) = t.section(matches!(window, Window::Whole), kernel_lost)?;
            s.tcp = Some(section);
            s.lost_events.insert(tcp::FAMILY, lost);
        }
        Ok(s)
    }

    /// Reports until the end, then prints the summary. Returns why it ended.
    pub async fn run(mut self, args: &ReportArgs, mut exit: ExitWatch) -> Result<End> {
        // Handlers first: a signal sent as soon as `attached` is out must end in a summary.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let out = Output::new(args);
        let mut tui = if args.format == Format::Text
            && !args.no_tui
            && std::io::IsTerminal::is_terminal(&std::io::stdout())
        {
            Some(
                Tui::start(&self.target, &self.hooks, args.sort)
                    .context("starting the live view")?,
            )
        } else {
            let names = self.probes.iter().map(|p| p.name()).collect();
            out.attached(&self.target, names, &self.hooks)
                .context("writing to stdout")?;
            None
        };

        let started = Instant::now();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);

        let mut seq = 0u64;
        let mut last_report = started;
        let end = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    seq += 1;
                    let now = Instant::now();
                    let sections = self.sections(Window::Interval)?;
                    // Before the interval is out: whoever saw it can scrape its figures.
                    self.export(&sections);
                    match tui.as_mut() {
                        Some(t) => t.update(seq, now - last_report, sections)?,
                        None => out
                            .interval(seq, now - started, now - last_report, &sections)
                            .context("writing to stdout")?,
                    }
                    last_report = now;
                }
                action = next_action(&mut tui) => match (action, tui.as_mut()) {
                    (Action::Quit, _) => break End::Quit,
                    (Action::Redraw, Some(t)) => t.draw()?,
                    (Action::View(key), Some(t)) => t.key(key)?,
                    _ => {}
                },
                _ = sleep_until(deadline) => break End::Duration,
                _ = sigint.recv() => break End::Signal { signal: "SIGINT" },
                _ = sigterm.recv() => break End::Signal { signal: "SIGTERM" },
                _ = sighup.recv() => break End::Signal { signal: "SIGHUP" },
                status = exit.wait() => break End::TargetExited(status),
            }
        };

        self.flush().await;
        // Back to the normal screen, where the summary stays readable after exit.
        let live = tui.take().is_some();
        // The last, partial interval, however short: the intervals add up to the summary.
        let now = Instant::now();
        if !live {
            seq += 1;
            let sections = self.sections(Window::Interval)?;
            self.export(&sections);
            out.interval(seq, now - started, now - last_report, &sections)
                .context("writing to stdout")?;
        }
        let sections = self.sections(Window::Whole)?;
        out.summary(self.target.pid, started.elapsed(), seq, &end, &sections)
            .context("writing to stdout")?;
        Ok(end)
    }
}

async fn next_action(tui: &mut Option<Tui>) -> Action {
    match tui {
        Some(t) => t.next_action().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
