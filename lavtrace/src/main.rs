//! lavtrace: live eBPF tracer for a running LavinMQ broker.

mod amqp;
mod bundle;
mod check;
mod cli;
mod demo;
mod error;
mod family;
mod faults;
mod floor;
mod follow;
mod fsync;
#[cfg(test)]
mod fuzz;
mod gc;
mod generate;
mod kernel;
mod lavinmq;
mod metrics;
mod mmap;
mod names;
mod output;
mod overhead;
mod printable;
mod recorder;
mod ringbuf;
mod sched;
mod session;
mod storage;
mod syscalls;
mod target;
mod tcp;
mod threads;
mod tui;
mod units;
mod waits;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    kernel::fix_mmap_threshold();
    let cli = Cli::parse();
    if let Command::Workload(args) = &cli.command {
        return demo::workload::run(args);
    }
    if let Command::Generate(args) = &cli.command {
        return match generate::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lavtrace: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lavtrace: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lavtrace: error: {e:#}");
            error::exit_code(&e)
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Trace(args) => follow::trace(&args).await,
        Command::Demo(args) => demo::run(&args).await,
        Command::Check(args) => check::run(&args),
        Command::Bundle(args) => bundle::run(&args),
        Command::Workload(_) | Command::Generate(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
