//! `cargo xtask test`'s last step: README's first command, `cargo xtask run`, exactly as an
//! operator types it on a broker host. A LavinMQ-shaped workload runs under the broker's name
//! (`lavinmq`), so `run` picks it as its default target; its output must name the queues.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lavtrace_common::start;

use crate::workspace_root;

const WAIT: Duration = Duration::from_secs(120);
/// `run` builds the release binary first: quick after the package test, minutes from cold.
const BUILD: Duration = Duration::from_secs(1200);
const QUEUES: u32 = 2;

pub fn check() -> Result<()> {
    let others = broker_pids();
    if !others.is_empty() {
        bail!(
            "a process named lavinmq is already running (pids {others:?}): `cargo xtask run` would trace it"
        );
    }
    let workload = workspace_root().join("target/debug/lavtrace-workload");
    let mut broker = start::spawn(
        Command::new(&workload).args([
            "lavinmq",
            "--queues",
            &QUEUES.to_string(),
            "--segments",
            "1",
            "--syncfs",
            "5",
            "--delete",
            "0",
            "--gc-bursts",
            "0",
            // The names are read from the data dir: it must outlive the run.
            "--keep",
        ]),
        WAIT,
    )
    .with_context(|| format!("starting {}", workload.display()))?;
    let pid = broker.pid();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask readme-run: cargo xtask run, with a lavinmq-shaped workload as pid {pid}");
    let mut run = Command::new(cargo)
        .args(["xtask", "run"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo xtask run")?;
    let (tx, lines) = mpsc::channel();
    let stdout = run.stdout.take().context("no stdout pipe")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Killed on every way out, so a failed check leaves no tracer running.
    let mut run = KillOnDrop(run);
    let first = lines
        .recv_timeout(BUILD)
        .context("cargo xtask run printed nothing")?;
    let want = format!("lavtrace: tracing pid {pid} (lavinmq,");
    if !first.starts_with(&want) {
        bail!("cargo xtask run did not trace the broker: {first:?} (wanted {want:?}...)");
    }
    broker.go().context("go to the workload")?;
    let dir = broker
        .next_line(WAIT)
        .ok()
        .and_then(|l| l.strip_prefix("data-dir ").map(str::to_string))
        .context("the workload's data-dir line")?;
    broker.wait_done(WAIT).context("the workload's run")?;
    // The workload exits after `done`; lavtrace sees it go and prints its summary.
    let text: Vec<String> = lines.iter().collect();
    let status = run.0.wait()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = text.join("\n");
    if !status.success() {
        bail!("cargo xtask run failed ({status}):\n{text}");
    }
    for q in 1..=QUEUES {
        for file in ["msgs.0000000001", "acks.0000000001"] {
            let line = format!("vhost / · queue perf-test-{q} · {file}");
            if !text.contains(&line) {
                bail!("cargo xtask run's output does not name {line:?}:\n{text}");
            }
        }
    }
    if !text.contains("target exited") {
        bail!("cargo xtask run did not end with the broker:\n{text}");
    }
    eprintln!("xtask readme-run: cargo xtask run traced the broker and named its {QUEUES} queues");
    Ok(())
}

fn broker_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "lavinmq")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
