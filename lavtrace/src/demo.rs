//! `lavtrace demo`: start the built-in workload as a child and trace it.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::{
    cli::{DemoArgs, ReportArgs},
    error::Fatal,
    metrics::Exporter,
    session::Session,
    target::{ExitWatch, Target},
};

pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);

pub async fn run(args: &DemoArgs) -> Result<()> {
    let mut report = args.report.clone();
    report.duration.get_or_insert(DEFAULT_DURATION);
    // Bound first: a taken port must fail before anything is attached.
    let metrics = report.metrics.map(Exporter::serve).transpose()?;
    if let Some(url) = &args.amqp {
        return broker(url, &report, metrics.as_ref()).await;
    }
    let exe = std::env::current_exe().context("locating the lavtrace binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["workload", "demo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the demo workload")?;
    let mut lines = BufReader::new(child.stdout.take().context("workload stdout")?).lines();
    let ready = lines.next_line().await?.unwrap_or_default();
    if !ready.starts_with("ready ") {
        bail!("the demo workload did not start (said {ready:?})");
    }
    let pid = child.id().context("workload pid")?;
    let target = Target::from_pid(pid)?;
    let session = Session::attach_with(target, &report)?.export_to(metrics.as_ref());
    let mut stdin = child.stdin.take().context("workload stdin")?;
    stdin.write_all(b"go\n").await?;
    let end = session.run(&report, ExitWatch::Child(child)).await?;
    tracing::debug!(?end, "demo finished");
    // Closing stdin ends the workload; kill_on_drop covers the rest.
    drop(stdin);
    // The workload's data dir, which it cannot remove itself when it is killed.
    let _ = std::fs::remove_dir_all(crate::workload::demo_dir(pid));
    Ok(())
}

/// `demo --amqp URL`: trace the broker behind the URL while the built-in AMQP client
/// (`workload amqp`) publishes persistent messages with confirms and consumes them, run after
/// run, until the demo ends.
async fn broker(url: &str, report: &ReportArgs, metrics: Option<&Exporter>) -> Result<()> {
    let uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| Fatal::Target(format!("--amqp {url:?} is not an AMQP URL: {e}")))?;
    let port = uri.authority.port;
    let pid = crate::tcp::procfs::listener_pid(port).ok_or_else(|| {
        Fatal::Target(format!(
            "no process listens on port {port} (the broker of --amqp {url})"
        ))
    })?;
    let target = Target::from_pid(pid)?;
    let exit = ExitWatch::pidfd(pid)?;
    let session = Session::attach_with(target, report)?.export_to(metrics);
    let exe = std::env::current_exe().context("locating the lavtrace binary")?;
    let url = url.to_string();
    let load = tokio::spawn(async move {
        loop {
            let child = tokio::process::Command::new(&exe)
                .args(["workload", "amqp", "--url", &url, "--messages", "2000"])
                .args(["--confirm-window", "50", "--queue", "lavtrace-demo"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            let Ok(mut child) = child else { return };
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"go\n").await;
            }
            match child.wait().await {
                Ok(status) if status.success() => {}
                _ => {
                    tracing::warn!("the demo's AMQP client failed; load stopped");
                    return;
                }
            }
        }
    });
    let end = session.run(report, exit).await;
    load.abort();
    end.map(|_| ())
}
