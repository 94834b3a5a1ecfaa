//! The project's own workload: a process with known behaviour for the tests and for
//! `lavtrace demo`. It runs as `lavtrace workload MODE`, so the single lavtrace binary carries it.
//!
//! Protocol (stdin/stdout, line-based): it prints `ready <pid>`, waits for one line on stdin
//! (the go signal, sent once the tracer is attached), does its work, prints `done` and exits.
//! The `demo` mode instead loops until stdin reaches EOF, so it never outlives its tracer.

mod demo;
mod storage;
mod syscalls;

pub use storage::demo_dir;

use std::{
    io::{BufRead as _, Write as _},
    process::ExitCode,
};

use clap::{Args, Subcommand};

#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Mode {
    /// Exact syscall counts: getppid, failing close(-1), one sleep.
    Syscalls(syscalls::Args),
    /// A broker-shaped mix, until stdin closes.
    Demo,
    /// A broker's disk: segments mapped, msynced and unmapped, fsync, syncfs from a thread.
    Storage(storage::Args),
}

pub fn run(args: &WorkloadArgs) -> ExitCode {
    // Never outlive the process that started us (a test or `lavtrace demo`).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let result = match &args.mode {
        Mode::Syscalls(a) => ready_then(|| syscalls::run(a)),
        Mode::Demo => ready_then(demo::run),
        Mode::Storage(a) => storage::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Announces the pid, waits for the go line, runs `work`, announces the end.
fn ready_then(work: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {}", std::process::id())?;
    stdout.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    work()?;
    writeln!(stdout, "done")?;
    stdout.flush()
}
