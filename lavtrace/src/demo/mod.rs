//! `lavtrace demo`: start the built-in workload as a child and trace it.

pub mod workload;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use lavtrace_common::start;

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
    // Spawned from this (the runtime's only) thread, never from a blocking-pool thread: the
    // workload's PR_SET_PDEATHSIG fires when the *thread* that forked it exits, and tokio ends
    // idle pool threads after 10 s, which killed the demo mid-run. Nothing else runs yet, so
    // the short wait for `ready` may block.
    let mut child = start::spawn(
        std::process::Command::new(exe).args(["workload", "demo"]),
        READY_WAIT,
    )
    .context("starting the demo workload")?;
    let pid = child.pid();
    let target = Target::from_pid(pid)?;
    let exit = ExitWatch::pidfd(pid)?;
    let session = Session::attach_with(target, &report)?.export_to(metrics.as_ref());
    child.go().context("starting the demo workload")?;
    let end = session.run(&report, exit).await?;
    tracing::debug!(?end, "demo finished");
    // Closing stdin ends the workload; dropping `child` kills and reaps what is left.
    child.close_stdin();
    drop(child);
    // The workload's data dir, which it cannot remove itself when it is killed.
    let _ = std::fs::remove_dir_all(workload::demo_dir(pid));
    Ok(())
}

/// How long the demo workload may take to say `ready`.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The test and benchmark workloads' binary, installed next to lavtrace (cargo builds both
/// into the same directory): `demo --amqp` runs its AMQP client.
fn workload_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the lavtrace binary")?;
    let path = exe.with_file_name("lavtrace-workload");
    if !path.is_file() {
        return Err(Fatal::Missing(format!(
            "demo --amqp runs {}, which is not there (build it: cargo build -p lavtrace-workload)",
            path.display()
        ))
        .into());
    }
    Ok(path)
}

/// The port of an AMQP URL (`amqp://user:pass@host:port/vhost`), the AMQP defaults when absent.
fn amqp_port(url: &str) -> Result<u16, String> {
    let (rest, default) = if let Some(rest) = url.strip_prefix("amqp://") {
        (rest, 5672)
    } else if let Some(rest) = url.strip_prefix("amqps://") {
        (rest, 5671)
    } else {
        return Err("it does not start with amqp:// or amqps://".into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // An IPv6 host is bracketed: its colons are not the port's.
    let port = match host_port.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    };
    match port {
        None | Some("") => Ok(default),
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}")),
    }
}

/// `demo --amqp URL`: trace the broker behind the URL while the built-in AMQP client
/// (`lavtrace-workload amqp`) publishes persistent messages with confirms and consumes them, run after
/// run, until the demo ends.
async fn broker(url: &str, report: &ReportArgs, metrics: Option<&Exporter>) -> Result<()> {
    let port = amqp_port(url)
        .map_err(|e| Fatal::Target(format!("--amqp {url:?} is not an AMQP URL: {e}")))?;
    let pid = crate::tcp::procfs::listener_pid(port).ok_or_else(|| {
        Fatal::Target(format!(
            "no process listens on port {port} (the broker of --amqp {url})"
        ))
    })?;
    let workload = workload_binary()?;
    let target = Target::from_pid(pid)?;
    let exit = ExitWatch::pidfd(pid)?;
    let session = Session::attach_with(target, report)?.export_to(metrics);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (url.to_string(), stop.clone());
        // Its own thread for the whole run, never a pool thread: each client's
        // PR_SET_PDEATHSIG fires when the *thread* that forked it exits.
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut cmd = std::process::Command::new(&workload);
                cmd.args(["amqp", "--url", &url, "--messages", "2000"])
                    .args(["--confirm-window", "50", "--queue", "lavtrace-demo"]);
                // Dropping `child` (on stop, or on failure) kills and reaps the client.
                let mut child = match start::spawn(&mut cmd, READY_WAIT) {
                    Ok(child) => child,
                    Err(e) => return tracing::warn!("the demo's AMQP client: {e}; no load"),
                };
                if child.go().is_err() || !exited_ok(&mut child, &stop) {
                    if !stop.load(Ordering::Relaxed) {
                        tracing::warn!("the demo's AMQP client failed; load stopped");
                    }
                    return;
                }
            }
        })
    };
    let end = session.run(report, exit).await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    end.map(|_| ())
}

/// Whether the client exited 0; false as soon as `stop` is set.
fn exited_ok(child: &mut start::Started, stop: &AtomicBool) -> bool {
    while !stop.load(Ordering::Relaxed) {
        match child.child().try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::amqp_port;

    #[test]
    fn amqp_ports() {
        assert_eq!(amqp_port("amqp://guest:guest@127.0.0.1:5673/%2f"), Ok(5673));
        assert_eq!(amqp_port("amqp://127.0.0.1:1/%2f"), Ok(1));
        assert_eq!(amqp_port("amqp://localhost"), Ok(5672));
        assert_eq!(amqp_port("amqps://u:p@host/vh"), Ok(5671));
        assert_eq!(amqp_port("amqp://[::1]:5674/"), Ok(5674));
        assert_eq!(amqp_port("amqp://[::1]/"), Ok(5672));
        assert!(amqp_port("http://host:1").is_err());
        assert!(amqp_port("amqp://host:x/").is_err());
    }
}
