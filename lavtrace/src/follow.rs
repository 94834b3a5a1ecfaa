//! `trace`, including `--follow`: when the target exits, wait for a new process of the same
//! name (the broker restarting), attach to it with a fresh filter, and mark the gap. Every
//! process instance gets its own intervals and summary.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cli::TraceArgs,
    error::Fatal,
    metrics::Exporter,
    output::{End, Output},
    recorder::Recorder,
    session::Session,
    target::{ExitWatch, Target},
};

/// How often /proc is scanned for the restarted process.
const POLL: Duration = Duration::from_millis(100);

pub async fn trace(args: &TraceArgs) -> Result<()> {
    // Bound first: a taken port must fail before anything is attached.
    let metrics = args.report.metrics.map(Exporter::serve).transpose()?;
    let mut target = Target::resolve(&args.target)?;
    loop {
        let exit = ExitWatch::pidfd(target.pid)?;
        let recorder = args
            .recorder
            .config()
            .map(|c| Recorder::new(c, target.pid, &target.comm));
        let session = Session::attach_with(target.clone(), &args.report)?
            .export_to(metrics.as_ref())
            .record_to(recorder);
        let end = session.run(&args.report, exit).await?;
        let End::TargetExited(exit) = end else {
            return Ok(());
        };
        if !args.follow {
            return Ok(());
        }
        info!(pid = target.pid, comm = %target.comm, "target exited; waiting for it to restart");
        let gone = exit.seen_at.unwrap_or_else(Instant::now);
        let Some(next) = wait_for_restart(&target).await? else {
            return Ok(()); // stopped while waiting: the last summary stands
        };
        Output::new(&args.report)
            .restart(&target, &next, gone.elapsed())
            .map_err(|e| anyhow::anyhow!("writing to stdout: {e}"))?;
        target = next;
    }
}

/// The next process named like `previous`, or None if a signal asks to stop first.
async fn wait_for_restart(previous: &Target) -> Result<Option<Target>> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        match Target::from_comm(&previous.comm) {
            Ok(t) if t.pid != previous.pid => return Ok(Some(t)),
            Ok(_) => {}
            Err(e) => match e.downcast_ref::<Fatal>() {
                // Not there yet.
                Some(Fatal::Target(msg)) if msg.starts_with("no process named") => {}
                _ => return Err(e),
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = sigint.recv() => return Ok(None),
            _ = sigterm.recv() => return Ok(None),
            _ = sighup.recv() => return Ok(None),
        }
    }
}
