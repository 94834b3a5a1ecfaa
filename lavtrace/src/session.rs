//! One tracing run: load and attach the asked-for families, report every interval, and finish
//! with a summary when the duration ends, a signal arrives or the target exits.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cli::{Probe, ReportArgs},
    ebpf::{self, Hook},
    output::{End, Output, Sections},
    ringbuf::LostCounters,
    syscalls,
    target::{ExitWatch, Target},
};

pub struct Session {
    // Owns every program and link: dropping it detaches everything.
    _ebpf: Ebpf,
    target: Target,
    probes: Vec<Probe>,
    hooks: Vec<Hook>,
    /// Per-family counts of events the kernel could not put in a ring.
    #[allow(dead_code)] // read by the ring-buffer families
    lost: LostCounters,
    syscalls: Option<syscalls::Tracer>,
}

#[derive(Clone, Copy)]
enum Window {
    Interval,
    Whole,
}

impl Session {
    /// Loads the programs for `probes`, filtered to `target`, and attaches them.
    pub fn attach(target: Target, probes: &[Probe]) -> Result<Session> {
        ebpf::preflight()?;
        let mut ebpf = ebpf::load(target.pid)?;
        let lost = LostCounters::take(&mut ebpf)?;
        let mut probes = probes.to_vec();
        probes.sort_unstable();
        probes.dedup();
        let mut hooks = Vec::new();
        let mut syscalls = None;
        for probe in &probes {
            match probe {
                Probe::Syscalls => {
                    let (tracer, h) = syscalls::Tracer::attach(&mut ebpf)
                        .context("attaching the syscalls family")?;
                    syscalls = Some(tracer);
                    hooks.extend(h);
                }
            }
        }
        info!(pid = target.pid, hooks = hooks.len(), "attached");
        Ok(Session {
            _ebpf: ebpf,
            target,
            probes,
            hooks,
            lost,
            syscalls,
        })
    }

    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// Waits until every event already in the kernel's rings has been aggregated.
    async fn flush(&mut self) {}

    fn sections(&mut self, window: Window) -> Result<Sections> {
        let mut s = Sections::default();
        if let Some(t) = self.syscalls.as_mut() {
            let (rows, untimed) = match window {
                Window::Interval => t.interval()?,
                Window::Whole => t.summary()?,
            };
            s.syscalls = Some(rows);
            s.lost_events.insert(syscalls::FAMILY, untimed);
        }
        Ok(s)
    }

    /// Reports until the end, then prints the summary. Returns why it ended.
    pub async fn run(mut self, args: &ReportArgs, mut exit: ExitWatch) -> Result<End> {
        // Handlers first: `attached` tells a caller it may signal us (found on slow guests).
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let out = Output::new(args);
        let names = self.probes.iter().map(|p| p.name()).collect();
        out.attached(&self.target, names, &self.hooks)
            .context("writing to stdout")?;

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
                    out.interval(seq, now - started, now - last_report, &sections)
                        .context("writing to stdout")?;
                    last_report = now;
                }
                _ = sleep_until(deadline) => break End::Duration,
                _ = sigint.recv() => break End::Signal { signal: "SIGINT" },
                _ = sigterm.recv() => break End::Signal { signal: "SIGTERM" },
                _ = sighup.recv() => break End::Signal { signal: "SIGHUP" },
                status = exit.wait() => break End::TargetExited(status),
            }
        };

        self.flush().await;
        // The last, partial interval, unless it is too short to mean anything.
        let now = Instant::now();
        if now - last_report >= Duration::from_millis(50) || seq == 0 {
            seq += 1;
            let sections = self.sections(Window::Interval)?;
            out.interval(seq, now - started, now - last_report, &sections)
                .context("writing to stdout")?;
        }
        let sections = self.sections(Window::Whole)?;
        out.summary(started.elapsed(), seq, &end, &sections)
            .context("writing to stdout")?;
        Ok(end)
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
