//! The start protocol between a workload and whoever traces it (the tests, `cargo xtask bench`,
//! `lavtrace demo`), on the workload's stdin and stdout, one line each way:
//!
//! 1. the workload sets up everything that would add calls of its own, then prints
//!    `ready <pid>`;
//! 2. the parent attaches its tracer, then writes one line (`go`);
//! 3. the workload does its work; the one-shot modes then print `done`.
//!
//! Both sides live here so they cannot drift apart.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::Duration,
};

const READY: &str = "ready";
const GO: &[u8] = b"go\n";
const DONE: &str = "done";

/// Child side: says `ready <pid>` and blocks until the parent's go line (or EOF).
pub fn announce_ready_then_wait_go() -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{READY} {}", std::process::id())?;
    stdout.flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

/// Child side: the end of a one-shot run. One write(2), the only call after the work.
pub fn announce_done() -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{DONE}")?;
    stdout.flush()
}

/// Child side, the common case: ready, wait for go, `work`, done.
pub fn ready_then(work: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    announce_ready_then_wait_go()?;
    work()?;
    announce_done()
}

/// Parent side: a workload stopped at its `ready` line until [`Started::go`]. Dropping it
/// kills and reaps the process, so a failed test or benchmark leaves nothing running.
pub struct Started {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

/// Why a line did not come.
#[derive(Debug, PartialEq, Eq)]
pub enum NoLine {
    /// Stdout closed: the workload exited (or closed it).
    Eof,
    Timeout,
}

/// Parent side: spawns `cmd` with piped stdin and stdout and waits up to `timeout` for its
/// `ready <pid>` line.
pub fn spawn(cmd: &mut Command, timeout: Duration) -> io::Result<Started> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let (tx, lines) = channel();
    // A thread, so that every wait on the workload can have a deadline.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut started = Started {
        stdin: child.stdin.take(),
        pid: child.id(),
        child,
        lines,
    };
    let ready = match started.next_line(timeout) {
        Ok(line) => line,
        Err(NoLine::Eof) => {
            let status = started.child.wait()?;
            return Err(io::Error::other(format!(
                "the workload exited before it was ready ({status})"
            )));
        }
        Err(NoLine::Timeout) => {
            return Err(io::Error::other(format!(
                "the workload was not ready within {timeout:?}"
            )));
        }
    };
    // The announced pid, not the child's: a wrapper (taskset, setpriv) may stand between.
    started.pid = ready
        .strip_prefix(READY)
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected workload greeting {ready:?}")))?;
    Ok(started)
}

impl Started {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the workload start its work (once).
    pub fn go(&mut self) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("go was already sent (or stdin closed)"))?;
        stdin.write_all(GO)?;
        stdin.flush()
    }

    /// The workload's next stdout line.
    pub fn next_line(&self, timeout: Duration) -> Result<String, NoLine> {
        self.lines.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => NoLine::Timeout,
            RecvTimeoutError::Disconnected => NoLine::Eof,
        })
    }

    /// Waits up to `timeout` for `done`, the end of a one-shot run.
    pub fn wait_done(&self, timeout: Duration) -> io::Result<()> {
        match self.next_line(timeout) {
            Ok(line) if line == DONE => Ok(()),
            Ok(line) => Err(io::Error::other(format!(
                "the workload said {line:?} instead of {DONE:?}"
            ))),
            Err(e) => Err(io::Error::other(format!(
                "no {DONE:?} from the workload: {e:?}"
            ))),
        }
    }

    /// Closes the workload's stdin: the looping modes end at EOF.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// The process itself (to wait for it, or read its status).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
