//! Shared by the integration tests: the workload and lavtrace as child processes, with
//! deadlines on every wait so a broken build fails instead of hanging.
#![allow(dead_code)] // each test binary uses a different part

pub mod rabbitmq;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const LAVTRACE: &str = env!("CARGO_BIN_EXE_lavtrace");
const WAIT: Duration = Duration::from_secs(60);

/// The eBPF tests need root; say so plainly instead of failing obscurely.
pub fn require_root() {
    // SAFETY: no arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF integration tests load programs into the kernel: run them as root"
    );
}

/// Lines of a child's stdout, read on a thread so waits can time out.
pub struct Lines {
    rx: Receiver<String>,
}

impl Lines {
    pub fn new(stdout: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, or None at EOF. Panics after the deadline.
    pub fn next(&self) -> Option<String> {
        match self.rx.recv_timeout(WAIT) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("no output for {WAIT:?}"),
        }
    }

    /// All remaining lines until EOF.
    pub fn rest(&self) -> Vec<String> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// `lavtrace workload MODE ...`, stopped at its `ready` line until `go()`.
pub struct Workload {
    pub child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    pub lines: Lines,
}

impl Workload {
    pub fn spawn(args: &[&str]) -> Workload {
        let mut child = Command::new(LAVTRACE)
            .arg("workload")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the workload");
        let lines = Lines::new(child.stdout.take().unwrap());
        let ready = lines.next().expect("workload said nothing");
        let pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected workload greeting {ready:?}"));
        Workload {
            stdin: child.stdin.take(),
            child,
            pid,
            lines,
        }
    }

    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("go once");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for `done` (one-shot modes).
    pub fn wait_done(&mut self) {
        assert_eq!(self.lines.next().as_deref(), Some("done"));
    }

    /// Closes stdin (ends the looping modes) and reaps the process.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "workload did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lavtrace trace --format json ...`, returned once its `attached` line is out.
pub struct Trace {
    pub child: Child,
    pub lines: Lines,
    pub attached: Value,
}

impl Trace {
    pub fn spawn(args: &[&str]) -> Trace {
        let mut child = Command::new(LAVTRACE)
            .arg("trace")
            .args(["--format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning lavtrace");
        let lines = Lines::new(child.stdout.take().unwrap());
        let first = lines.next().unwrap_or_else(|| {
            let status = child.wait().unwrap();
            panic!("lavtrace exited before attaching: {status}")
        });
        let attached: Value = serde_json::from_str(&first).expect("attached line is JSON");
        assert_eq!(attached["type"], "attached", "first line: {first}");
        Trace {
            child,
            lines,
            attached,
        }
    }

    /// Every record after `attached` until lavtrace exits, checking it exited 0.
    pub fn records(mut self) -> Vec<Value> {
        let records: Vec<Value> = self
            .lines
            .rest()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "lavtrace failed: {status}");
        assert_eq!(
            records.last().map(|r| r["type"].clone()),
            Some(Value::from("summary")),
            "the summary is the last line"
        );
        records
    }

    /// For runs whose summary was already read: what is left, checking lavtrace exited 0.
    pub fn records_after_summary(mut self) -> Vec<String> {
        let rest = self.lines.rest();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "lavtrace failed: {status}");
        rest
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        // A failed test must not leave lavtrace running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Ids of the BPF programs whose descriptors process `pid` holds (from /proc/PID/fdinfo).
pub fn programs_held_by(pid: u32) -> std::collections::BTreeSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// The row for syscall `name` in a `syscalls` section, if present.
pub fn syscall<'a>(section: &'a Value, name: &str) -> Option<&'a Value> {
    section["syscalls"]
        .as_array()
        .expect("a syscalls list")
        .iter()
        .find(|r| r["name"] == name)
}

pub fn count(section: &Value, name: &str) -> u64 {
    syscall(section, name).map_or(0, |r| r["count"].as_u64().unwrap())
}
