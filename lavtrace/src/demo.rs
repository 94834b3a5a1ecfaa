//! `lavtrace demo`: start the built-in workload as a child and trace it.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::{
    cli::DemoArgs,
    metrics::Exporter,
    session::Session,
    target::{ExitWatch, Target},
};

pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);

pub async fn run(args: &DemoArgs) -> Result<()> {
    let mut report = args.report.clone();
    report.duration.get_or_insert(DEFAULT_DURATION);
    let metrics = report.metrics.map(Exporter::serve).transpose()?;
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
