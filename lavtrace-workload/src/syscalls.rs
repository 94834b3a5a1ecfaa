//! Mode `syscalls`: exactly N getppid, M failing close(-1) (EBADF) and one sleep of a known
//! length, from the main thread, nothing else of those kinds; plus, with `--thread NAME=N`,
//! named threads making exactly N getppid each (started before `ready`, so they have their
//! names by the time a tracer attaches); with `--churn N`, N threads that each make one
//! getppid and end.

use std::{sync::mpsc, time::Duration};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 5000)]
    pub getppid: u64,
    #[arg(long, default_value_t = 37)]
    pub bad_close: u64,
    /// One clock_nanosleep of this length (0: none).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub sleep: Duration,
    /// A thread named NAME (15 bytes at most are kept) making N getppid; repeatable.
    #[arg(long = "thread", value_parser = parse_thread)]
    pub threads: Vec<(String, u64)>,
    /// After go, this many short threads, one after the other, each making one getppid and
    /// ending (thread churn: more thread ids than the tracer's per-thread kernel tables hold).
    #[arg(long, default_value_t = 0)]
    pub churn: u64,
}

fn parse_thread(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s.rsplit_once('=').ok_or("expected NAME=COUNT")?;
    Ok((name.to_string(), n.parse().map_err(|e| format!("{e}"))?))
}

fn getppid(n: u64) {
    for _ in 0..n {
        // SAFETY: no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// Starts the named threads (waiting), then the ready/go protocol; after go the threads run
/// one after the other, then the main thread's calls.
pub fn run(args: &Args) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for (name, n) in args.threads.clone() {
        let (go, wait) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            if wait.recv().is_ok() {
                getppid(n);
            }
        })?;
        threads.push((go, handle));
    }
    lavtrace_common::start::ready_then(|| {
        for (go, handle) in threads {
            let _ = go.send(());
            handle
                .join()
                .map_err(|_| std::io::Error::other("a workload thread panicked"))?;
        }
        churn(args.churn)?;
        calls(args)
    })
}

fn churn(n: u64) -> std::io::Result<()> {
    for _ in 0..n {
        std::thread::Builder::new()
            .spawn(|| getppid(1))?
            .join()
            .map_err(|_| std::io::Error::other("a churn thread panicked"))?;
    }
    Ok(())
}

fn calls(args: &Args) -> std::io::Result<()> {
    getppid(args.getppid);
    for _ in 0..args.bad_close {
        // SAFETY: closing an invalid descriptor only fails with EBADF.
        unsafe { libc::syscall(libc::SYS_close, -1) };
    }
    if !args.sleep.is_zero() {
        let ts = libc::timespec {
            tv_sec: args.sleep.as_secs() as libc::time_t,
            tv_nsec: args.sleep.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid timespec; no remainder wanted.
        unsafe {
            libc::syscall(
                libc::SYS_clock_nanosleep,
                libc::CLOCK_MONOTONIC,
                0,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
    }
    Ok(())
}
