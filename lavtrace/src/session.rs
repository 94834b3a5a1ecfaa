//! One tracing run: load and attach the asked-for families, report every interval, and finish
//! with a summary when the duration ends, a signal arrives or the target exits.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cli::{Format, ReportArgs},
    family::{self, Entry, Loaded, Options, Window},
    kernel::{
        self, Hook, Overrides,
        cut::{Cut, now_ns},
    },
    lavinmq::limits,
    metrics,
    output::{self, End, Output, Sections},
    overhead::Meter,
    recorder::Recorder,
    ringbuf::LostCounters,
    target::{ExitWatch, Target},
    tui::{Action, Tui},
};

pub struct Session {
    // Owns every program and link: dropping it detaches everything.
    /// Dropped off the session's thread (see `Drop`).
    ebpf: std::mem::ManuallyDrop<Ebpf>,
    meter: Meter,
    target: Target,
    hooks: Vec<Hook>,
    /// Per-family counts of events the kernel could not put in a ring.
    lost: LostCounters,
    /// Where the kernel ends the open interval.
    cut: Cut,
    /// The attached families, in registry order.
    families: Vec<Loaded>,
    /// `--metrics`: fed every interval.
    metrics: Option<metrics::Exporter>,
    /// `--keep`: fed every interval's record.
    recorder: Option<Recorder>,
    /// The target's fds, mappings and disk against their limits, read every window.
    limits: limits::Watch,
}

impl Drop for Session {
    /// Detaching takes the kernel tens of ms per uprobe on 6.18 (the amqp family alone has 25):
    /// done on a thread of its own, so a `--follow` restart is watched for meanwhile. At exit
    /// the kernel detaches whatever is left as it closes the fds.
    fn drop(&mut self) {
        // SAFETY: taken once, here; `self.ebpf` is not used after.
        let ebpf = unsafe { std::mem::ManuallyDrop::take(&mut self.ebpf) };
        // No thread to be had: the closure, and the Ebpf with it, is dropped here instead.
        let _ = std::thread::Builder::new()
            .name("detach".into())
            .spawn(move || drop(ebpf));
    }
}

impl Session {
    /// Loads the programs of the families `entries` (default options), filtered to `target`,
    /// and attaches them.
    pub fn attach(target: Target, entries: &[&'static Entry]) -> Result<Session> {
        Session::attach_opts(target, entries, &Options::default())
    }

    /// `attach`, with the families and options of a report (`--probes` and the flags they read).
    pub fn attach_with(target: Target, args: &ReportArgs) -> Result<Session> {
        Session::attach_opts(target, &args.families(), &args.family_options())
    }

    fn attach_opts(
        target: Target,
        entries: &[&'static Entry],
        options: &Options,
    ) -> Result<Session> {
        kernel::preflight()?;
        // Registry order, once each: the order of the reports.
        let entries: Vec<&'static Entry> = family::REGISTRY
            .iter()
            .filter(|e| entries.iter().any(|w| w.name == e.name))
            .collect();
        let options = &Options {
            // On a duty cycle the slow path is paid only part of the time: another family's
            // syscall tracepoints would pin it on for good.
            syscall_slow_path: options.syscalls_sample.is_none()
                && entries.iter().any(|e| e.syscall_slow_path),
            ..options.clone()
        };
        let phase = kernel::btf::attach_phase();
        let mut overrides = Overrides::default();
        overrides.global_u32(lavtrace_common::filter::TARGET_TGID, target.pid);
        for entry in &entries {
            entry.overrides(options, &mut overrides);
        }
        let mut ebpf = kernel::load(&overrides)?;
        let lost = LostCounters::take(&mut ebpf)?;
        let cut = Cut::take(&mut ebpf)?;
        // Those that load against the kernel's BTF first, then the parse goes; the families
        // and their hooks stay in registry order.
        let mut attached: Vec<_> = entries.iter().map(|_| None).collect();
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| !entries[i].loads_against_btf);
        for i in order {
            if !entries[i].loads_against_btf {
                phase.done_with_btf();
            }
            attached[i] = Some(entries[i].attach(&mut ebpf, target.pid, options)?);
        }
        let mut hooks = Vec::new();
        let mut families = Vec::new();
        for (loaded, h) in attached.into_iter().flatten() {
            families.push(loaded);
            hooks.extend(h);
        }
        info!(pid = target.pid, hooks = hooks.len(), "attached");
        drop(phase);
        Ok(Session {
            meter: Meter::start(&ebpf, options.bpf_stats),
            ebpf: std::mem::ManuallyDrop::new(ebpf),
            hooks,
            lost,
            cut,
            families,
            metrics: None,
            recorder: None,
            limits: limits::Watch::new(target.pid),
            target,
        })
    }

    /// Feeds every interval's sections to the `--metrics` endpoint, if there is one.
    pub fn export_to(mut self, metrics: Option<&metrics::Exporter>) -> Session {
        self.metrics = metrics.cloned();
        self
    }

    /// Keeps every interval's record in `recorder` (the flight recorder).
    pub fn record_to(mut self, recorder: Option<Recorder>) -> Session {
        self.recorder = recorder;
        self
    }

    fn record(&mut self, seq: u64, elapsed: Duration, window: Duration, sections: &Sections) {
        let Some(r) = self.recorder.as_mut() else {
            return;
        };
        match output::interval_json(seq, elapsed, window, sections) {
            Ok(line) => r.observe(Instant::now(), window, seq, line, sections),
            Err(e) => eprintln!("lavtrace: flight recorder: interval {seq}: {e}"),
        }
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
        for f in &self.families {
            f.tracer.flush().await;
        }
    }

    /// Ends interval `seq`: a cut a moment from now for the kernel and every family at once;
    /// once it has passed and the calls that returned before it have been counted and sent,
    /// every record up to it is drained. Then its sections can be read.
    ///
    /// What remains of the race: a program that took its return time before the cut but was
    /// held off its CPU for longer than `SETTLE_NS` before counting or committing is read in
    /// the next interval, by both tables alike for a durability call (one program counts it
    /// for both), or only by the one it had reached.
    async fn close_interval(&mut self, seq: u64) -> Result<()> {
        let at = self.cut.set(seq)?;
        for f in &mut self.families {
            f.tracer.cut(at);
        }
        let settled = at + lavtrace_common::cut::SETTLE_NS;
        tokio::time::sleep(Duration::from_nanos(settled.saturating_sub(now_ns()))).await;
        self.flush().await;
        Ok(())
    }

    fn sections(&mut self, window: Window) -> Result<Sections> {
        let mut s = Sections::default();
        s.overhead = Some(match window {
            Window::Interval => self.meter.interval(&self.ebpf),
            Window::Whole => self.meter.whole(&self.ebpf),
        });
        s.limits = Some(self.limits.read());
        let lost = &self.lost;
        for f in &mut self.families {
            let mut programs: Vec<&str> = self
                .hooks
                .iter()
                .filter(|h| h.family == f.entry.name)
                .map(|h| h.program)
                .collect();
            programs.sort_unstable();
            programs.dedup();
            let skipped = programs
                .iter()
                .map(|p| kernel::recursion_misses(&self.ebpf, p))
                .sum();
            if let Some((section, lost)) = f.section(window, |slot| lost.get(slot), skipped)? {
                s.push(section);
                s.lost_events.insert(f.entry.name, lost);
            }
        }
        Ok(s)
    }

    /// The families attached and the hooks in use, for `check`.
    pub fn families(&self) -> impl Iterator<Item = &Loaded> {
        self.families.iter()
    }

    /// Reports until the end, then prints the summary. Returns why it ended.
    pub async fn run(mut self, args: &ReportArgs, mut exit: ExitWatch) -> Result<End> {
        // Handlers first: a signal sent as soon as `attached` is out must end in a summary.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        // Only with a recorder: otherwise SIGUSR2 keeps its default action.
        let mut sigusr2 = match self.recorder {
            Some(_) => Some(signal(SignalKind::user_defined2())?),
            None => None,
        };
        let mut out = Output::new(args);
        out.note = self.recorder.as_ref().map(Recorder::describe);
        let mut tui = if args.format == Format::Text
            && !args.no_tui
            && std::io::IsTerminal::is_terminal(&std::io::stdout())
        {
            Some(
                Tui::start(&self.target, &self.hooks, args.sort.into())
                    .context("starting the live view")?,
            )
        } else {
            let names = self.families.iter().map(|f| f.entry.name).collect();
            out.attached(&self.target, names, &self.hooks)
                .context("writing to stdout")?;
            None
        };

        let started = Instant::now();
        // One origin for ticks and deadline: `--duration` a multiple of `--interval` ends on
        // a tick, and the deadline (first in the biased select) takes it. Otherwise the tick
        // printed the interval and the deadline a second, empty one.
        let origin = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval_at(origin + args.interval, args.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = args.duration.map(|d| origin + d);

        let mut seq = 0u64;
        let mut last_report = started;
        let end = loop {
            tokio::select! {
                biased;
                _ = sleep_until(deadline) => break End::Duration,
                _ = ticker.tick() => {
                    seq += 1;
                    self.close_interval(seq).await?;
                    let now = Instant::now();
                    let sections = self.sections(Window::Interval)?;
                    // Before the interval is out: whoever saw it can scrape its figures.
                    self.export(&sections);
                    self.record(seq, now - started, now - last_report, &sections);
                    out.note = self.recorder.as_ref().map(Recorder::describe);
                    match tui.as_mut() {
                        Some(t) => {
                            t.set_recorder(out.note.clone());
                            t.update(seq, now - last_report, sections)?
                        }
                        None => out
                            .interval(seq, now - started, now - last_report, &sections)
                            .context("writing to stdout")?,
                    }
                    last_report = now;
                }
                action = next_action(&mut tui) => match (action, tui.as_mut()) {
                    (Action::Quit, _) => break End::Quit,
                    (Action::Redraw, Some(t)) => t.draw()?,
                    (Action::View('d'), Some(_)) if self.recorder.is_some() => {
                        self.dump_now("key d");
                    }
                    (Action::View(key), Some(t)) => t.key(key)?,
                    _ => {}
                },
                _ = recv(&mut sigusr2) => self.dump_now("SIGUSR2"),
                _ = sigint.recv() => break End::Signal { signal: "SIGINT" },
                _ = sigterm.recv() => break End::Signal { signal: "SIGTERM" },
                _ = sighup.recv() => break End::Signal { signal: "SIGHUP" },
                status = exit.wait() => break End::TargetExited(status),
            }
        };

        // Back to the normal screen, where the summary stays readable after exit.
        let live = tui.take().is_some();
        // The last, partial interval, however short: the intervals add up to the summary (a
        // short one has no CPU shares, `overhead::MIN_RATE_WINDOW`). Closed in the live view
        // too, unprinted: the summary is the sum of the closed intervals.
        self.close_interval(seq + 1).await?;
        let now = Instant::now();
        let last = self.sections(Window::Interval)?;
        if !live {
            seq += 1;
            let sections = last;
            self.export(&sections);
            self.record(seq, now - started, now - last_report, &sections);
            out.interval(seq, now - started, now - last_report, &sections)
                .context("writing to stdout")?;
        }
        if let Some(r) = self.recorder.as_mut() {
            r.finish();
        }
        let sections = self.sections(Window::Whole)?;
        out.summary(self.target.pid, started.elapsed(), seq, &end, &sections)
            .context("writing to stdout")?;
        Ok(end)
    }
}

impl Session {
    fn dump_now(&mut self, what: &str) {
        if let Some(r) = self.recorder.as_mut() {
            r.request(Instant::now(), what.to_string(), format!("{what} received"));
        }
    }
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
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
