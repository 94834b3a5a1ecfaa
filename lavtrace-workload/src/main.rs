//! `lavtrace-workload MODE`: processes with known behaviour for lavtrace's integration tests
//! and benchmarks (and the AMQP load of `lavtrace demo --amqp`). Kept out of the lavtrace
//! binary, so the product carries none of it.
//!
//! Every mode follows the start protocol of `lavtrace_common::start`: `ready <pid>`, wait for
//! go, work, `done` (`tcp`, and `tcp-churn --hold`, then wait for stdin to close).

mod amqp;
mod amqps_load;
mod churn;
mod faults;
mod frames;
mod gc;
mod lavinmq;
mod pace;
mod sched;
mod slowsync;
mod spin;
mod storage;
mod syscalls;
mod tcp;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lavtrace_common::start::ready_then;

#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about = "Workloads with known behaviour for lavtrace's tests and benchmarks"
)]
pub struct WorkloadArgs {
    /// Process name to take (as `ps` and `--comm` see it), e.g. to play a broker restart.
    #[arg(long)]
    pub name: Option<String>,
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Mode {
    /// Exact syscall counts: getppid, failing close(-1), one sleep.
    Syscalls(syscalls::Args),
    /// As many cheap syscalls as possible, timed (benchmarks).
    Spin(spin::Args),
    /// msync(MS_ASYNC) at a chosen rate: ring-buffer events for the pipeline benchmark.
    Pace(pace::Args),
    /// A real AMQP client: connections, persistent publishes with confirms, consume + ack.
    Amqp(amqp::Args),
    /// A broker-shaped AMQP 0-9-1 server of known frames with its own plain TCP peer
    /// (see frames.rs): exact figures for the amqp family.
    AmqpFrames(frames::Args),
    /// Publishes over AMQPS through the process's libssl as fast as one connection goes,
    /// timed (benchmarks; see amqps_load.rs).
    AmqpsLoad(amqps_load::Args),
    /// TCP connections with known histories on 127.0.0.1 (see tcp.rs); after
    /// `done`, waits for stdin to close.
    Tcp,
    /// Listeners opened after `go` (after attach), IPv4 and IPv6, each with one connection to
    /// itself (see tcp.rs); after `done`, waits for stdin to close.
    TcpLateListen,
    /// A reset storm: N connections accepted and reset (SO_LINGER 0) one after the other, the
    /// other ends in `tcp-peer`; after `done`, waits for stdin to close.
    Resets(tcp::ResetsArgs),
    /// The other ends of `tcp`'s and `resets`' connections (started by them).
    TcpPeer(tcp::PeerArgs),
    /// N short connections to its own listener, half closed gracefully, half reset (see
    /// churn.rs): both ends are the target's.
    TcpChurn(churn::Args),
    /// A broker's disk: segments mapped, msynced and unmapped, fsync, syncfs from a thread.
    Storage(storage::Args),
    /// LavinMQ 2.9.1 as measured: its data dir and names, segments, syncfs thread, GC bursts,
    /// SIGUSR1 dump (see lavinmq.rs); its name is `lavinmq` unless --name says.
    Lavinmq(lavinmq::Args),
    /// Threads with known scheduling: a sleeper (K nanosleeps), spinners pinned to one CPU,
    /// a blocker in fsync (D state); see sched.rs.
    Sched(sched::Args),
    /// A Boehm-shaped stop-the-world (SIGPWR, sigsuspend, SIGXCPU) repeated, one worker late
    /// in a nanosleep with the signal blocked (see gc.rs).
    Gc(gc::Args),
    /// Fast fsyncs of a clean file at a steady pace and one slow one (after writing many MiB
    /// into it); prints each call's own timing before `done`.
    Slowsync(slowsync::Args),
    /// Page faults whose number is known (write-touched pages, MADV_DONTNEED re-touch, major
    /// faults on a dropped file, a LavinMQ-shaped segment, dirty throttling); see faults.rs.
    Faults(faults::Args),
}

fn main() -> ExitCode {
    let args = WorkloadArgs::parse();
    // Never outlive the process that started us (a test, a benchmark or `lavtrace demo`).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let default_name = matches!(args.mode, Mode::Lavinmq(_)).then_some(lavinmq::COMM);
    if let Some(name) = args.name.as_deref().or(default_name) {
        let Ok(name) = std::ffi::CString::new(name.as_bytes()) else {
            eprintln!("workload: --name must not contain NUL");
            return ExitCode::FAILURE;
        };
        // SAFETY: a NUL-terminated string; the kernel copies at most 15 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    let result = match &args.mode {
        Mode::Syscalls(a) => syscalls::run(a),
        // Its own start: --held connections are opened before ready.
        Mode::Amqp(a) => amqp::run(a),
        // Its own start: the pre connection is opened before ready.
        Mode::AmqpFrames(a) => frames::run(a),
        Mode::AmqpsLoad(a) => amqps_load::run(a),
        Mode::Spin(a) => ready_then(|| spin::run(a)),
        Mode::Pace(a) => ready_then(|| pace::run(a)),
        Mode::Tcp => tcp::prepare()
            .and_then(ready_then)
            .and_then(|()| wait_for_eof()),
        Mode::TcpLateListen => tcp::prepare_late_listen()
            .and_then(ready_then)
            .and_then(|()| wait_for_eof()),
        Mode::Resets(a) => tcp::prepare_resets(a)
            .and_then(ready_then)
            .and_then(|()| wait_for_eof()),
        Mode::TcpPeer(a) => tcp::peer(a),
        Mode::TcpChurn(a) => churn::prepare(a)
            .and_then(ready_then)
            .and_then(|()| if a.hold { wait_for_eof() } else { Ok(()) }),
        Mode::Storage(a) => storage::run(a),
        Mode::Lavinmq(a) => lavinmq::run(a),
        Mode::Slowsync(a) => slowsync::run(a),
        Mode::Sched(a) => sched::run(a),
        Mode::Gc(a) => gc::run(a),
        Mode::Faults(a) => faults::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Holds on until whoever started us closes our stdin.
pub(crate) fn wait_for_eof() -> std::io::Result<()> {
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink).map(drop)
}
