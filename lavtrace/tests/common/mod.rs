//! The integration tests' fixture: a workload preset, started, traced with some flags, read
//! back as JSON records, with deadlines on every wait so a broken build fails instead of
//! hanging:
//!
//! ```ignore
//! let mut w = Workload::storage().segments(3).spawn();
//! let records = Trace::of(&w).probes("fsync,mmap").run(&mut [&mut w]);
//! ```
#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod rabbitmq;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use lavtrace_common::start;
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

/// The tests' and benchmarks' workloads: the `lavtrace-workload` binary, which cargo builds next
/// to lavtrace (`CARGO_BIN_EXE_*` only names the tested package's own binaries).
pub fn workload_binary() -> PathBuf {
    let path = Path::new(LAVTRACE).with_file_name("lavtrace-workload");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p lavtrace-workload` first (`cargo xtask test` and \
         `cargo test --workspace` build it)",
        path.display()
    );
    path
}

/// The workload's main thread name: the kernel keeps 15 bytes of `lavtrace-workload`.
pub const WORKLOAD_COMM: &str = "lavtrace-worklo";

/// `flag` (`--NAME VALUE`) and `switch` (`--NAME` alone) for a builder with an `args` list:
/// the workload presets (any flag of the mode, `lavtrace-workload MODE --help`) and the trace.
macro_rules! flag_methods {
    ($ty:ty) => {
        pub fn flag(mut self, name: &str, value: impl ToString) -> $ty {
            self.args.push(format!("--{name}"));
            self.args.push(value.to_string());
            self
        }

        pub fn switch(mut self, name: &str) -> $ty {
            self.args.push(format!("--{name}"));
            self
        }
    };
}

/// The flags the tests use most, as methods: `.segments(3)` for `.flag("segments", 3)`.
macro_rules! preset_flags {
    ($($method:ident($ty:ty) = $flag:literal),* $(,)?) => {
        $(
            pub fn $method(self, value: $ty) -> Preset {
                self.flag($flag, value)
            }
        )*
    };
}

/// A workload mode and its flags, started with [`Preset::spawn`].
pub struct Preset {
    name: Option<String>,
    mode: &'static str,
    args: Vec<String>,
}

impl Preset {
    fn mode(mode: &'static str) -> Preset {
        Preset {
            name: None,
            mode,
            args: Vec::new(),
        }
    }

    flag_methods!(Preset);

    /// The process name (as `--comm` sees it).
    pub fn named(mut self, name: &str) -> Preset {
        self.name = Some(name.to_string());
        self
    }

    preset_flags! {
        // storage
        segments(u64) = "segments",
        syncfs(u64) = "syncfs",
        fsyncs(u64) = "fsyncs",
        premapped(u64) = "premapped",
        linger(&str) = "linger",
        // syscalls
        getppid(u64) = "getppid",
        bad_close(u64) = "bad-close",
        sleep(&str) = "sleep",
    }

    pub fn spawn(self) -> Workload {
        self.spawn_in(&[])
    }

    /// Started through `wrapper` (a command line the workload's own is appended to, e.g.
    /// `unshare --pid --fork --`). In a pid namespace the workload announces the pid it sees
    /// there; `pid` is the one the host sees.
    pub fn spawn_in(self, wrapper: &[&str]) -> Workload {
        let binary = workload_binary();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        if let Some(name) = &self.name {
            cmd.args(["--name", name]);
        }
        cmd.arg(self.mode).args(&self.args);
        let mut started = start::spawn(&mut cmd, WAIT)
            .unwrap_or_else(|e| panic!("starting lavtrace-workload {}: {e}", self.mode));
        let announced = started.pid();
        // A wrapper that only execs (no new pid namespace) leaves the workload its pid.
        let pid = if wrapper.is_empty() || started.child().id() == announced {
            announced
        } else {
            host_pid(started.child().id(), announced)
        };
        Workload { pid, started }
    }
}

/// A `lavtrace-workload` process, stopped at its `ready` line until `go()`; killed on drop.
pub struct Workload {
    pub pid: u32,
    started: start::Started,
}

impl Workload {
    /// Exact durability and mapping calls in a LavinMQ-shaped data dir.
    pub fn storage() -> Preset {
        Preset::mode("storage")
    }
    /// Exact syscall counts: getppid, failing close(-1), a sleep, named threads.
    pub fn syscalls() -> Preset {
        Preset::mode("syscalls")
    }
    /// TCP connections with known histories; after `done`, waits for stdin to close.
    pub fn tcp() -> Preset {
        Preset::mode("tcp")
    }
    /// Listeners opened after `go`, IPv4 and IPv6, one connection to itself on each.
    pub fn tcp_late_listen() -> Preset {
        Preset::mode("tcp-late-listen")
    }
    /// A reset storm: `--count` connections accepted and reset one after the other; after
    /// `done`, waits for stdin to close.
    pub fn resets() -> Preset {
        Preset::mode("resets")
    }
    /// `n` short connections to its own listener (both ends the target's), half reset.
    pub fn tcp_churn(n: u64) -> Preset {
        Preset::mode("tcp-churn").flag("connections", n)
    }
    /// LavinMQ 2.9.1's patterns: its data dir and names, a syncfs thread, GC bursts, SIGUSR1.
    pub fn lavinmq() -> Preset {
        Preset::mode("lavinmq")
    }
    /// Fast fsyncs at a pace and one slow one; prints each call's own timing before `done`.
    pub fn slowsync() -> Preset {
        Preset::mode("slowsync")
    }
    /// Threads with known scheduling (sleeper, pinned spinners, blocker in fsync); prints
    /// `tid NAME TID` for each before `done`.
    pub fn sched() -> Preset {
        Preset::mode("sched")
    }
    /// msync(MS_ASYNC) at `rate` calls/s for `seconds`; prints `result {"calls","ns"}`.
    pub fn pace(rate: u64, seconds: f64) -> Preset {
        Preset::mode("pace")
            .flag("rate", rate)
            .flag("seconds", seconds)
    }
    /// A Boehm-shaped stop-the-world, repeated, one worker late; prints `tid NAME TID` and
    /// `pause I T0 T0_SENT LATE_WOKE T1` before `done`.
    pub fn gc() -> Preset {
        Preset::mode("gc")
    }
    /// Page faults whose number is known; prints `file ROLE PATH` and `phase ...` lines
    /// before `done`, then keeps its mappings until stdin closes.
    pub fn faults() -> Preset {
        Preset::mode("faults")
    }
    /// A real AMQP client against the broker at `url`.
    pub fn amqp(url: &str) -> Preset {
        Preset::mode("amqp").flag("url", url)
    }

    /// A broker-shaped AMQP server of known frames on `port`, with its own plain TCP peer;
    /// prints `stats {json}` (what it built) before `done`.
    pub fn amqp_frames(port: u16) -> Preset {
        Preset::mode("amqp-frames").flag("port", port)
    }

    pub fn go(&mut self) {
        self.started.go().expect("sending go to the workload");
    }

    /// The workload's next stdout line, or None at EOF. Panics after the deadline.
    pub fn next_line(&self) -> Option<String> {
        match self.started.next_line(WAIT) {
            Ok(line) => Some(line),
            Err(start::NoLine::Eof) => None,
            Err(start::NoLine::Timeout) => panic!("no workload output for {WAIT:?}"),
        }
    }

    /// Waits for `done` (one-shot modes).
    pub fn wait_done(&mut self) {
        self.started.wait_done(WAIT).unwrap();
    }

    /// The lines before `done` (modes that print what they did), consuming `done`.
    pub fn lines_until_done(&mut self) -> Vec<String> {
        std::iter::from_fn(|| Some(self.next_line().expect("workload ended early")))
            .take_while(|l| l != "done")
            .collect()
    }

    /// Closes stdin (ends the looping modes) and reaps the process.
    pub fn finish(mut self) {
        self.started.close_stdin();
        let deadline = Instant::now() + WAIT;
        while self.started.child().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "workload did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `lavtrace trace` with these flags: [`TraceArgs::spawn`] (JSON), [`TraceArgs::run`] (a
/// whole run) or [`TraceArgs::run_text`].
pub struct TraceArgs {
    args: Vec<String>,
}

impl TraceArgs {
    flag_methods!(TraceArgs);

    pub fn probes(self, probes: &str) -> TraceArgs {
        self.flag("probes", probes)
    }
    pub fn interval(self, d: &str) -> TraceArgs {
        self.flag("interval", d)
    }

    /// `--format json`, returned once its `attached` line is out.
    pub fn spawn(self) -> Trace {
        let mut child = Command::new(LAVTRACE)
            .arg("trace")
            .args(["--format", "json"])
            .args(&self.args)
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

    /// A JSON trace of a whole run: every workload gets go, in order, then each is waited
    /// for (the target, then bystanders); returns every record, the summary last.
    pub fn run(self, workloads: &mut [&mut Workload]) -> Vec<Value> {
        self.spawn().run(workloads)
    }

    /// The text report of a run of `workload` (go, done), after lavtrace exited 0.
    pub fn run_text(self, workload: &mut Workload) -> String {
        let mut child = Command::new(LAVTRACE)
            .arg("trace")
            .args(&self.args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning lavtrace");
        let lines = Lines::new(child.stdout.take().unwrap());
        let first = lines.next().unwrap();
        assert!(first.starts_with("lavtrace: tracing pid"), "{first}");
        workload.go();
        workload.wait_done();
        let text = lines.rest().join("\n");
        assert!(child.wait().unwrap().success());
        text
    }
}

/// `lavtrace trace --format json ...`, returned once its `attached` line is out.
pub struct Trace {
    pub child: Child,
    pub lines: Lines,
    pub attached: Value,
}

impl Trace {
    /// Tracing `workload` by pid.
    pub fn of(workload: &Workload) -> TraceArgs {
        Trace::pid(workload.pid)
    }

    /// Tracing another process (a broker) by pid.
    pub fn pid(pid: u32) -> TraceArgs {
        TraceArgs { args: Vec::new() }.flag("pid", pid)
    }

    /// Tracing whatever process has this name (`--comm`).
    pub fn comm(name: &str) -> TraceArgs {
        TraceArgs { args: Vec::new() }.flag("comm", name)
    }

    /// See [`TraceArgs::run`], for a trace already spawned (to look at `attached` first).
    pub fn run(self, workloads: &mut [&mut Workload]) -> Vec<Value> {
        for w in workloads.iter_mut() {
            w.go();
        }
        for w in workloads.iter_mut() {
            w.wait_done();
        }
        self.records()
    }

    /// (program, via) of every hook of `family` (every family: None) in the `attached` line.
    pub fn hooks(&self, family: Option<&str>) -> Vec<(&str, &str)> {
        self.attached["hooks"]
            .as_array()
            .expect("a hooks list")
            .iter()
            .filter(|h| family.is_none_or(|f| h["family"] == f))
            .map(|h| (h["program"].as_str().unwrap(), h["via"].as_str().unwrap()))
            .collect()
    }

    /// What every hook in the `attached` line is attached through.
    pub fn vias(&self) -> Vec<&str> {
        self.hooks(None).into_iter().map(|(_, via)| via).collect()
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

/// The host pid of the process that is `ns_pid` in its own pid namespace, among `wrapper`'s
/// descendants (a wrapper such as `unshare --fork` stands between).
fn host_pid(wrapper: u32, ns_pid: u32) -> u32 {
    let field = |status: &str, name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut parents = vec![wrapper];
    // A few levels: unshare, then a shell that execs the workload.
    for _ in 0..4 {
        let mut children = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let (ppid, nspid) = (field(&status, "PPid:"), field(&status, "NSpid:"));
            if ppid.first().is_some_and(|p| parents.contains(p)) {
                if nspid.len() > 1 && nspid.last() == Some(&ns_pid) {
                    return nspid[0];
                }
                children.extend(nspid.first().copied());
            }
        }
        parents = children;
    }
    panic!("no descendant of {wrapper} is pid {ns_pid} in its namespace")
}

/// A port nobody listens on now (the kernel's pick, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `mmap.files[]` row's figures: mmaps, munmaps, mremaps, madvises, bytes, bytes_unmapped.
pub fn mmap_file_counts(row: &Value) -> [u64; 6] {
    [
        "mmaps",
        "munmaps",
        "mremaps",
        "madvises",
        "bytes",
        "bytes_unmapped",
    ]
    .map(|k| row[k].as_u64().unwrap())
}

/// `lavtrace ARGS --format json` to its end: every record, after checking it exited 0.
pub fn lavtrace_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(LAVTRACE)
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// Whether this kernel can attach kprobes (lavtrace's own test, `kernel::kprobe::missing`).
pub fn kernel_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .any(|d| Path::new(d).join("kprobe_events").exists())
}

/// Whether auto takes the storage kprobe set on this kernel, as `lavtrace check` reports it:
/// the product decides (`storage::hooks::kprobes_proven_here`: 6.1 on), the tests follow.
pub fn storage_kprobes_proven() -> bool {
    let out = Command::new(LAVTRACE)
        .arg("check")
        .output()
        .expect("running lavtrace check");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("fsync ") && l.contains(" via kprobe "))
}

/// On a kernel without kprobes, `--storage-hooks kprobe` for `probes` exits 5 with the
/// reason on one line.
pub fn kprobe_set_is_refused(probes: &str) {
    require_root();
    let out = Command::new(LAVTRACE)
        .args(["trace", "--pid", &std::process::id().to_string()])
        .args(["--probes", probes, "--storage-hooks", "kprobe"])
        .args(["--duration", "1s", "--no-tui"])
        .output()
        .expect("running lavtrace");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--storage-hooks kprobe: kprobes are not compiled into this kernel"),
        "{err}"
    );
}
