//! Developer tasks for lavtrace. `cargo xtask --help` lists them.

mod bench;
mod broker;
mod dist;
mod readme_run;
mod setup;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use setup::Job;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "lavtrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running lavtrace needs (idempotent, seconds when done):
    /// nightly rust-src, bpf-linker built against the nightly toolchain's LLVM, tracefs.
    /// With --test, also the servers the tests need (rabbitmq-server, prometheus).
    Setup {
        /// Also install the test servers (what `cargo xtask test` does first).
        #[arg(long)]
        test: bool,
    },
    /// Set up, build in release mode and run lavtrace. Without arguments: trace a running
    /// `lavinmq` if there is one, else `lavtrace demo`.
    Run {
        /// Arguments for lavtrace (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up (with the test servers), then check formatting, run clippy (userspace and eBPF),
    /// every test, the package test, and README's `cargo xtask run` against a LavinMQ-shaped
    /// workload named `lavinmq`. The eBPF integration tests need root.
    Test,
    /// Build a release binary (kernel object embedded) and a Debian package of it, with the
    /// man page, shell completions, systemd unit and Grafana dashboard: target/dist/*.deb.
    Dist,
    /// Build the package, install it here, run the installed `lavtrace check` and a short
    /// demo, then purge it and check nothing is left. Needs root; part of `test`.
    PackageTest,
    /// README's `cargo xtask run` against a LavinMQ-shaped workload named `lavinmq`: its
    /// output must name the queues. Needs root and the test build; part of `test`.
    ReadmeRun,
    /// Format check and clippy only (userspace crates and the eBPF crate).
    Lint,
    /// Measure what tracing costs next to strace, perf trace and bpftrace; writes BENCHMARKS.md.
    Bench {
        /// Runs per row (interleaved).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Syscalls per run of the syscall-bound loop.
        #[arg(long, default_value_t = 1_000_000)]
        spin_calls: u64,
        /// Messages per run of the broker scenario.
        #[arg(long, default_value_t = 10000)]
        broker_messages: u64,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: std::path::PathBuf,
        /// Only these sections (hooks, spin, broker, transient, pipeline, faults, scale, amqps; the targets need spin
        /// and broker), e.g. to try one: `--only scale --output /tmp/scale.md`.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Run a throwaway RabbitMQ on 127.0.0.1 (foreground; Ctrl-C stops it) to trace by hand.
    Broker {
        #[arg(long, default_value_t = 5672)]
        port: u16,
    },
    /// Run the eBPF integration tests inside Debian's 5.10, 6.1 and 6.12 kernels under qemu
    /// (TCG), kprobe path included. Needs root; installs qemu and busybox when missing.
    VmTest(vm::Opts),
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup { test } => setup::run(if test { Job::Test } else { Job::Run }),
        Task::Run { args } => {
            setup::run(Job::Run)?;
            cargo(&["build", "--release", "--package", "lavtrace"])?;
            let args = if args.is_empty() {
                default_run_args()
            } else {
                args
            };
            eprintln!("xtask: lavtrace {}", args.join(" "));
            let status = Command::new(workspace_root().join("target/release/lavtrace"))
                .args(&args)
                .status()
                .context("running lavtrace")?;
            if !status.success() {
                bail!("lavtrace exited with {status}");
            }
            Ok(())
        }
        Task::Test => {
            setup::run(Job::Test)?;
            lint()?;
            cargo(&["test", "--workspace", "--exclude", "lavtrace-ebpf"])?;
            dist::package_test()?;
            // After the package: its release build is the one `run` then reuses.
            readme_run::check()
        }
        Task::Dist => {
            setup::run(Job::Run)?;
            dist::run().map(drop)
        }
        Task::ReadmeRun => readme_run::check(),
        Task::PackageTest => {
            setup::run(Job::Run)?;
            dist::package_test()
        }
        Task::Lint => {
            setup::run(Job::Run)?;
            lint()
        }
        Task::Broker { port } => broker::run(port),
        Task::Bench {
            runs,
            spin_calls,
            broker_messages,
            output,
            only,
        } => {
            setup::run(Job::Run)?;
            bench::run(&bench::Options {
                runs,
                spin_calls,
                broker_messages,
                output: workspace_root().join(output),
                only,
            })
        }
        Task::VmTest(opts) => vm::run(opts),
    }
}

/// The short id of the commit checked out, or "" outside git.
pub fn git_head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "lavtrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The kernel programs, linted for their real target.
    let status = Command::new("cargo")
        .current_dir(workspace_root().join("lavtrace-ebpf"))
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/ebpf-clippy"),
        )
        .status()
        .context("running cargo clippy on lavtrace-ebpf")?;
    if !status.success() {
        bail!("clippy found problems in lavtrace-ebpf");
    }
    Ok(())
}

/// Trace the broker if one runs here, else the demo workload.
fn default_run_args() -> Vec<String> {
    let broker_running = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "lavinmq")
        });
    if broker_running {
        vec!["trace".into(), "--comm".into(), "lavinmq".into()]
    } else {
        vec!["demo".into()]
    }
}

pub fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
