//! `cargo xtask bench`: what tracing costs, side by side with the tools operators use today.
//! Every figure in BENCHMARKS.md is written by this code from runs it just made; the exact
//! command of every row is printed next to it.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lavtrace_common::start;

use crate::workspace_root;

/// Debian packages of the comparison tracers.
const PACKAGES: &[&str] = &["strace", "linux-perf", "bpftrace", "rabbitmq-server"];

pub struct Options {
    pub runs: usize,
    pub spin_calls: u64,
    pub broker_messages: u64,
    pub output: PathBuf,
    /// Sections to run (empty: all).
    pub only: Vec<String>,
}

impl Options {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

pub fn run(opts: &Options) -> Result<()> {
    crate::setup::debian_packages(PACKAGES)?;
    crate::setup::debian_packages(&crate::setup::WORKLOAD_BUILD)?;
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "lavtrace",
        "--package",
        "lavtrace-workload",
    ])?;
    let lavtrace = workspace_root().join("target/release/lavtrace");
    let mut md = String::new();
    header(&mut md, opts)?;
    let mut fig = Figures::default();
    // Each section goes to the file as soon as it is measured, and a section that fails says
    // so there: a broker that does not start late in the run loses nothing measured before.
    let save = |md: &str| {
        std::fs::write(&opts.output, md)
            .with_context(|| format!("writing {}", opts.output.display()))
    };
    let mut failed = Vec::new();
    let mut section = |name: &str,
                       md: &mut String,
                       run: &mut dyn FnMut(&mut String) -> Result<()>|
     -> Result<()> {
        if opts.wants(name) {
            if let Err(e) = run(md) {
                eprintln!("xtask bench: section {name} failed: {e:#}");
                writeln!(md, "## Section `{name}` failed\n\n`{e:#}`\n")?;
                failed.push(name.to_string());
            }
            save(md)?;
        }
        Ok(())
    };
    section("hooks", &mut md, &mut |md| hooks(md, &lavtrace))?;
    section("spin", &mut md, &mut |md| {
        spin(md, &lavtrace, opts, &mut fig)
    })?;
    section("broker", &mut md, &mut |md| {
        broker(md, &lavtrace, opts, &mut fig, Load::Persistent)
    })?;
    section("transient", &mut md, &mut |md| {
        broker(md, &lavtrace, opts, &mut fig, Load::Transient)
    })?;
    section("pipeline", &mut md, &mut |md| {
        pipeline(md, &lavtrace, opts, &mut fig)
    })?;
    section("faults", &mut md, &mut |md| faults(md, &lavtrace, opts))?;
    itself(&mut md, &fig)?;
    section("scale", &mut md, &mut |md| scale(md, &lavtrace))?;
    if opts.wants("spin") && opts.wants("broker") {
        targets(&mut md, &fig)?;
    }
    section("amqps", &mut md, &mut |md| amqps(md, &lavtrace, opts))?;
    save(&md)?;
    if !failed.is_empty() {
        bail!("sections failed: {}", failed.join(", "));
    }
    eprintln!("xtask bench: wrote {}", opts.output.display());
    Ok(())
}

fn header(md: &mut String, opts: &Options) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(md, "# lavtrace benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench --runs {}{}` (this file is its output; do not edit by hand).\n",
        opts.runs,
        if opts.only.is_empty() {
            String::new()
        } else {
            format!(" --only {}", opts.only.join(","))
        }
    )?;
    writeln!(
        md,
        "- machine: {cores} cores, {cpu}, kernel {}",
        kernel.trim()
    )?;
    writeln!(
        md,
        "- runs: {} per row, interleaved (A B C … A B C …); median and min–max",
        opts.runs
    )?;
    writeln!(
        md,
        "- lavtrace: release build of this commit ({})\n",
        crate::git_head()
    )?;
    Ok(())
}

/// A process of `lavtrace-workload`, stopped at its `ready` line.
struct Workload {
    started: start::Started,
    pid: u32,
}

impl Workload {
    fn spawn(args: &[&str]) -> Result<Workload> {
        Workload::spawn_within(args, Duration::from_secs(30))
    }

    /// Started, with `ready` awaited for up to `timeout` (a mode that connects first).
    fn spawn_within(args: &[&str], timeout: Duration) -> Result<Workload> {
        let started = start::spawn(Command::new(workload_binary()).args(args), timeout)
            .with_context(|| format!("starting lavtrace-workload {}", args.join(" ")))?;
        Ok(Workload {
            pid: started.pid(),
            started,
        })
    }

    /// Sends go, returns the JSON of the line starting with `prefix` once the workload ended.
    fn go(&mut self, prefix: &str, timeout: Duration) -> Result<serde_json::Value> {
        let json = self.go_until(prefix, timeout)?;
        let _ = self.started.child().wait();
        Ok(json)
    }

    /// Sends go, returns the JSON of the line starting with `prefix` (the workload runs on).
    fn go_until(&mut self, prefix: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.started.go()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .started
                .next_line(left)
                .map_err(|e| anyhow::anyhow!("workload result: {e:?}"))?;
            if let Some(json) = line.strip_prefix(prefix) {
                return Ok(serde_json::from_str(json)?);
            }
        }
    }

    /// Closes stdin (the modes that wait for it end) and reaps the process.
    fn finish(mut self) {
        self.started.close_stdin();
        let _ = self.started.child().wait();
    }
}

/// Built next to lavtrace by `run`.
fn workload_binary() -> PathBuf {
    workspace_root().join("target/release/lavtrace-workload")
}

fn line_channel(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Every probe family of the spin scenarios (amqp has no socket there).
const ALL: &str = "syscalls,fsync,mmap,tcp";
/// Every default family, on the broker.
const DEFAULT: &str = "syscalls,fsync,mmap,tcp,amqp,gc";
/// The default set without the syscalls family: what must cost a bystander nothing.
const NOT_SYSCALLS: &str = "fsync,mmap,tcp,amqp,gc";

/// The sampled mode's duty cycle in the spin rows.
const SAMPLE: &str = "100ms/1s";

/// One way of tracing a process (or none).
#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    None,
    Lavtrace(&'static str),
    /// lavtrace with `--amqp-port PORT` (the broker's AMQP port, for the amqp family).
    LavtraceAmqp(&'static str, u16),
    /// lavtrace attached to another (idle) process: the tax its hooks put on everyone.
    LavtraceOther(&'static str),
    /// `--probes amqp --amqps-port PORT`, with one more flag or none ("").
    LavtraceAmqps(u16, &'static str),
    /// lavtrace with one more flag: `--no-bpf-stats` (what holding the kernel's BPF run-time
    /// statistics costs: every BPF program on the host reads the clock twice per run) or
    /// `--bpf-stats-full` (holding them all the time instead of on a duty cycle).
    LavtraceWith(&'static str, &'static str),
    /// The syscalls family on a duty cycle (`--syscalls-sample ON/EVERY`).
    LavtraceSampled(&'static str),
    Strace,
    PerfTrace,
    Bpftrace,
}

const BPFTRACE_COUNT_LATENCY: &str = "tracepoint:raw_syscalls:sys_enter /pid == $1/ { @start[tid] = nsecs; } \
tracepoint:raw_syscalls:sys_exit /pid == $1 && @start[tid]/ { @count[args->id] = count(); \
@ns[args->id] = hist(nsecs - @start[tid]); delete(@start[tid]); }";

impl Tracer {
    fn label(self) -> String {
        match self {
            Tracer::None => "untraced".into(),
            Tracer::Lavtrace(p) => format!("lavtrace --probes {p}"),
            Tracer::LavtraceAmqp(p, _) => format!("lavtrace --probes {p} --amqp-port PORT"),
            Tracer::LavtraceOther(p) => format!("lavtrace --probes {p} (tracing another process)"),
            Tracer::LavtraceAmqps(_, flag) => {
                format!("lavtrace --probes amqp --amqps-port PORT {flag}")
                    .trim_end()
                    .to_string()
            }
            Tracer::LavtraceWith(p, flag) => format!("lavtrace --probes {p} {flag}"),
            Tracer::LavtraceSampled(d) => {
                format!("lavtrace --probes syscalls --syscalls-sample {d}")
            }
            Tracer::Strace => "strace -f -c".into(),
            Tracer::PerfTrace => "perf trace -s".into(),
            Tracer::Bpftrace => "bpftrace count+latency".into(),
        }
    }

    fn command(self, lavtrace: &Path, pid: u32) -> Option<Vec<String>> {
        let lt = lavtrace.display().to_string();
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Some(match self {
            Tracer::None => return None,
            Tracer::Lavtrace(p) | Tracer::LavtraceOther(p) => v(&[
                &lt,
                "trace",
                "--pid",
                &pid.to_string(),
                "--probes",
                p,
                "--format",
                "json",
                "--interval",
                "1s",
            ]),
            Tracer::LavtraceAmqp(p, port) => v(&[
                &lt,
                "trace",
                "--pid",
                &pid.to_string(),
                "--probes",
                p,
                "--amqp-port",
                &port.to_string(),
                "--format",
                "json",
                "--interval",
                "1s",
            ]),
            Tracer::LavtraceAmqps(port, flag) => {
                let mut cmd = v(&[
                    &lt,
                    "trace",
                    "--pid",
                    &pid.to_string(),
                    "--probes",
                    "amqp",
                    "--amqps-port",
                    &port.to_string(),
                    "--format",
                    "json",
                    "--interval",
                    "1s",
                ]);
                if !flag.is_empty() {
                    cmd.push(flag.to_string());
                }
                cmd
            }
            Tracer::LavtraceWith(p, flag) => v(&[
                &lt,
                "trace",
                "--pid",
                &pid.to_string(),
                "--probes",
                p,
                flag,
                "--format",
                "json",
                "--interval",
                "1s",
            ]),
            Tracer::LavtraceSampled(duty) => v(&[
                &lt,
                "trace",
                "--pid",
                &pid.to_string(),
                "--probes",
                "syscalls",
                "--syscalls-sample",
                duty,
                "--format",
                "json",
                "--interval",
                "1s",
            ]),
            Tracer::Strace => v(&[
                "strace",
                "-f",
                "-c",
                "-o",
                "/dev/null",
                "-p",
                &pid.to_string(),
            ]),
            Tracer::PerfTrace => v(&[
                "perf",
                "trace",
                "-s",
                "-o",
                "/dev/null",
                "-p",
                &pid.to_string(),
            ]),
            Tracer::Bpftrace => v(&["bpftrace", "-e", BPFTRACE_COUNT_LATENCY, &pid.to_string()]),
        })
    }

    /// Starts tracing `pid`; returns once the tracer is attached.
    fn attach(self, lavtrace: &Path, pid: u32) -> Result<Option<Running>> {
        let Some(cmd) = self.command(lavtrace, pid) else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", cmd[0]))?;
        let out = line_channel(child.stdout.take().context("stdout")?);
        let err = line_channel(child.stderr.take().context("stderr")?);
        let wait_for = |rx: &mpsc::Receiver<String>, what: &dyn Fn(&str) -> bool| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = rx
                    .recv_timeout(left)
                    .with_context(|| format!("{} did not attach", cmd[0]))?;
                if what(&line) {
                    return Ok(());
                }
            }
        };
        match self {
            Tracer::Lavtrace(_)
            | Tracer::LavtraceAmqp(..)
            | Tracer::LavtraceAmqps(..)
            | Tracer::LavtraceOther(_)
            | Tracer::LavtraceWith(..)
            | Tracer::LavtraceSampled(_) => {
                wait_for(&out, &|l| l.contains("\"type\":\"attached\""))?
            }
            Tracer::Strace => wait_for(&err, &|l| l.contains("attached"))?,
            // bpftrace prints this before attaching and has no "attached" line: give it a second.
            Tracer::Bpftrace => {
                wait_for(&out, &|l| l.starts_with("Attaching"))?;
                std::thread::sleep(Duration::from_secs(1));
            }
            // perf trace says nothing when it is attached.
            Tracer::PerfTrace => std::thread::sleep(Duration::from_secs(3)),
            Tracer::None => {}
        }
        Ok(Some(Running {
            cpu_at_attach: cpu_time(child.id()),
            threads_at_attach: thread_cpu(child.id()),
            child,
            attach: started.elapsed(),
            out,
            _err: err,
        }))
    }
}

struct Running {
    child: Child,
    attach: Duration,
    /// The tracer's CPU time once attached (loading and verifying its programs).
    cpu_at_attach: Duration,
    /// The same per thread (tid, name, CPU).
    threads_at_attach: Vec<(u32, String, Duration)>,
    out: mpsc::Receiver<String>,
    _err: mpsc::Receiver<String>,
}

/// What a tracer process itself used.
struct Own {
    cpu: Duration,
    /// `cpu` less what attaching took: its cost while it traces.
    cpu_since_attach: Duration,
    max_rss_kib: u64,
    /// Each thread's whole CPU time at the end (tid, name, CPU).
    tids: Vec<(u32, String, Duration)>,
    /// CPU since attach by thread name, largest first.
    threads: Vec<(String, Duration)>,
    /// Resident KiB at the end by kind of mapping, largest first.
    memory: Vec<(&'static str, u64)>,
}

impl Running {
    fn stop(self) -> Result<Own> {
        let (at_attach, threads) = (self.cpu_at_attach, self.threads_at_attach);
        stop_child(self.child).map(|o| o.since(at_attach, &threads))
    }

    /// Stops the tracer; returns its usage and the rest of its stdout.
    fn stop_with_output(self) -> Result<(Own, Vec<String>)> {
        let Running {
            child,
            out,
            cpu_at_attach,
            threads_at_attach,
            ..
        } = self;
        let own = stop_child(child)?.since(cpu_at_attach, &threads_at_attach);
        Ok((own, out.iter().collect()))
    }
}

impl Own {
    /// `threads` holds each thread's whole CPU time; less what each had at attach, summed by
    /// name.
    fn since(self, at_attach: Duration, threads_at_attach: &[(u32, String, Duration)]) -> Own {
        let mut by_name: std::collections::BTreeMap<String, Duration> = Default::default();
        for (tid, name, cpu) in &self.tids {
            let before = threads_at_attach
                .iter()
                .find(|t| t.0 == *tid)
                .map_or(Duration::ZERO, |t| t.2);
            *by_name.entry(name.clone()).or_default() += cpu.saturating_sub(before);
        }
        let mut threads: Vec<_> = by_name.into_iter().collect();
        threads.sort_by_key(|t| std::cmp::Reverse(t.1));
        Own {
            cpu_since_attach: self.cpu.saturating_sub(at_attach),
            threads,
            ..self
        }
    }
}

/// SIGINT, as an operator would stop it, then wait (SIGKILL after 30 s).
fn stop_child(mut child: Child) -> Result<Own> {
    let pid = child.id();
    let own = own_usage(pid);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tracer {pid} ignored SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(own)
}

fn own_usage(pid: u32) -> Own {
    let cpu = cpu_time(pid);
    Own {
        cpu,
        cpu_since_attach: cpu,
        tids: thread_cpu(pid),
        threads: Vec::new(),
        memory: resident_by_kind(pid),
        max_rss_kib: std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
            .unwrap_or(0),
    }
}

/// Each thread of `pid`: (tid, name, utime + stime).
fn thread_cpu(pid: u32) -> Vec<(u32, String, Duration)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .map(|tid| {
            let path = format!("/proc/{pid}/task/{tid}");
            let name = std::fs::read_to_string(format!("{path}/comm")).unwrap_or_default();
            (
                tid,
                name.trim().to_string(),
                stat_cpu(&format!("{path}/stat")),
            )
        })
        .collect()
}

/// Resident KiB of `pid` by kind of mapping, from /proc/PID/smaps, largest first.
fn resident_by_kind(pid: u32) -> Vec<(&'static str, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut kinds: Vec<(&'static str, u64)> = Vec::new();
    let mut kind = "other";
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .unwrap_or(0);
            match kinds.iter_mut().find(|k| k.0 == kind) {
                Some(k) => k.1 += kib,
                None => kinds.push((kind, kib)),
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            // A mapping's header: "start-end perms offset dev inode [path]".
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = match path {
                "[heap]" => "heap",
                "" => "anonymous mappings (thread stacks, large allocations)",
                p if p.starts_with("anon_inode:bpf-map") => {
                    "BPF ring buffers mapped (kernel memory)"
                }
                p if p.starts_with('/') => "the binary and its libraries",
                _ => "other",
            };
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds
}

/// utime + stime of a process, all threads.
fn cpu_time(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a /proc stat file.
fn stat_cpu(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // After the parenthesised comm come fields 3 (state) onwards: utime and stime are
    // fields 14 and 15 (some fields before them, like tpgid, may be negative).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf without side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((field(14) + field(15)) * 1000 / hz)
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// Scenario 1: a syscall-bound loop.
fn spin(md: &mut String, lavtrace: &Path, opts: &Options, fig: &mut Figures) -> Result<()> {
    let tracers = [
        Tracer::None,
        Tracer::Lavtrace("floor-tracepoint"),
        Tracer::Lavtrace("floor"),
        Tracer::Lavtrace("syscalls"),
        Tracer::Lavtrace(ALL),
        Tracer::LavtraceWith("syscalls", "--no-bpf-stats"),
        Tracer::LavtraceWith("syscalls", "--bpf-stats-full"),
        Tracer::LavtraceSampled(SAMPLE),
        Tracer::LavtraceOther("syscalls"),
        // The bystander rows: what each other family costs a process it does not trace.
        Tracer::LavtraceOther("fsync"),
        Tracer::LavtraceOther("mmap"),
        Tracer::LavtraceOther("tcp"),
        Tracer::LavtraceOther("amqp"),
        Tracer::LavtraceOther("gc"),
        Tracer::LavtraceOther(NOT_SYSCALLS),
        Tracer::LavtraceOther(DEFAULT),
        Tracer::Bpftrace,
        Tracer::PerfTrace,
        Tracer::Strace,
    ];
    let calls = opts.spin_calls.to_string();
    let mut ns_per_call: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut attach: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    for run in 0..opts.runs {
        for (i, &tracer) in tracers.iter().enumerate() {
            eprintln!(
                "xtask bench: spin run {}/{} {}",
                run + 1,
                opts.runs,
                tracer.label()
            );
            let mut wl = Workload::spawn(&["spin", "--calls", &calls])?;
            // The bystander the "other process" row traces: idle, never given go.
            let decoy = Workload::spawn(&["spin", "--calls", "0"])?;
            let traced_pid = if matches!(tracer, Tracer::LavtraceOther(_)) {
                decoy.pid
            } else {
                wl.pid
            };
            let running = tracer.attach(lavtrace, traced_pid)?;
            let result = wl.go("result ", Duration::from_secs(600))?;
            if let Some(r) = running {
                attach[i].push(r.attach.as_secs_f64() * 1e3);
                r.stop()?;
            }
            drop(decoy);
            let ns = result["ns"].as_f64().unwrap_or(0.0);
            ns_per_call[i].push(ns / opts.spin_calls as f64);
        }
    }
    let base = median_min_max(ns_per_call[0].clone()).0;
    writeln!(md, "## 1. Syscall-bound loop\n")?;
    writeln!(
        md,
        "`lavtrace-workload spin --calls {calls}`: getppid and 1-byte writes to /dev/null, alternating, as fast \
         as one thread can. ns per syscall of the loop (wall time / calls); *added* is the median minus the \
         untraced median. `floor` is lavtrace with empty programs on the raw tracepoints `sys_enter`/`sys_exit` \
         that the syscalls family uses: the cost of being attached at all; `floor-tracepoint` the same on the \
         classic `raw_syscalls` tracepoints that bpftrace uses here. `--no-bpf-stats` is lavtrace without the \
         kernel's BPF run-time statistics (host-wide while held: every BPF program reads the clock twice per run), \
         `--bpf-stats-full` with them held all the time; the other lavtrace rows hold them 100 ms of every second. \
         The `(tracing another process)` rows are the bystander: lavtrace traces an idle process while this loop, \
         untraced, pays whatever its hooks cost everyone.\n"
    )?;
    writeln!(
        md,
        "| tracer | ns/syscall median | min–max | added ns/syscall | × untraced | command |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---|")?;
    for (i, &tracer) in tracers.iter().enumerate() {
        let (med, min, max) = median_min_max(ns_per_call[i].clone());
        let cmd = tracer.command(Path::new("lavtrace"), 0).map_or_else(
            || "(none)".to_string(),
            |c| shell_words(&c).replace(" 0", " PID"),
        );
        writeln!(
            md,
            "| {} | {med:.0} | {min:.0}–{max:.0} | {:.0} | {:.2} | `{cmd}` |",
            tracer.label(),
            med - base,
            med / base
        )?;
        if i == 0 {
            fig.untraced_spread_ns = max - min;
        }
        fig.spin_added.push((tracer, med - base));
        fig.spin_range.push((tracer, (min, max)));
    }
    writeln!(md)?;
    let lt: Vec<f64> = attach[3].clone();
    if !lt.is_empty() {
        let (med, min, max) = median_min_max(lt);
        fig.attach_ms = Some(med);
        writeln!(
            md,
            "lavtrace attach time (spawn to `attached` line): median {med:.0} ms ({min:.0}–{max:.0}).\n"
        )?;
    }
    Ok(())
}

/// Scenario 3: the event pipeline (ring buffer to userspace) at increasing rates.
fn pipeline(md: &mut String, lavtrace: &Path, opts: &Options, fig: &mut Figures) -> Result<()> {
    // 100/s is the rate of a broker's rare calls: the same program's ns per run there,
    // against the higher rates, is what a cold cache costs it.
    const RATES: [u64; 6] = [100, 10_000, 100_000, 300_000, 1_000_000, 3_000_000];
    const SECONDS: &str = "2";
    struct Row {
        produced: Vec<f64>,
        received: Vec<f64>,
        lost: Vec<f64>,
        achieved: Vec<f64>,
        cpu_pct: Vec<f64>,
        /// The kernel's ns per run of the entry and the exit program of msync, summed.
        ns_per_run: Vec<f64>,
    }
    let mut rows: Vec<Row> = RATES
        .iter()
        .map(|_| Row {
            produced: vec![],
            received: vec![],
            lost: vec![],
            achieved: vec![],
            cpu_pct: vec![],
            ns_per_run: vec![],
        })
        .collect();
    for run in 0..opts.runs {
        for (i, rate) in RATES.iter().enumerate() {
            eprintln!(
                "xtask bench: pipeline run {}/{} at {rate}/s",
                run + 1,
                opts.runs
            );
            let rate_arg = rate.to_string();
            let mut wl = Workload::spawn(&["pace", "--rate", &rate_arg, "--seconds", SECONDS])?;
            let running = Tracer::Lavtrace("fsync")
                .attach(lavtrace, wl.pid)?
                .context("lavtrace did not start")?;
            let result = wl.go("result ", Duration::from_secs(120))?;
            let (own, out) = running.stop_with_output()?;
            let summary: serde_json::Value = out
                .iter()
                .rev()
                .find_map(|l| {
                    serde_json::from_str(l)
                        .ok()
                        .filter(|v: &serde_json::Value| v["type"] == "summary")
                })
                .context("no lavtrace summary")?;
            let received: u64 = summary["fsync"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["syscall"] == "msync")
                .filter_map(|r| r["count"].as_u64())
                .sum();
            let secs = result["ns"].as_f64().unwrap_or(1.0) / 1e9;
            let calls = result["calls"].as_f64().unwrap_or(0.0);
            rows[i].produced.push(calls);
            rows[i].received.push(received as f64);
            rows[i]
                .lost
                .push(summary["lost_events"]["fsync"].as_f64().unwrap_or(0.0));
            rows[i].achieved.push(calls / secs);
            rows[i].cpu_pct.push(own.cpu.as_secs_f64() / secs * 100.0);
            if let Some(ns) = msync_ns_per_run(&summary) {
                rows[i].ns_per_run.push(ns);
            }
        }
    }
    writeln!(md, "## 4. Event pipeline\n")?;
    writeln!(
        md,
        "`lavtrace-workload pace --rate R --seconds {SECONDS}`: msync(MS_ASYNC) on one shared page at R calls/s \
         (one thread, paced per millisecond), traced by `lavtrace trace --pid PID --probes fsync --format json`: \
         one ring-buffer event per call. *received* is the summary's msync count, *lost* its \
         `lost_events.fsync`; received + lost = produced when nothing is dropped silently. \
         *achieved* is the rate the traced producer really reached. *ns per run* is the kernel's \
         run-time statistics for msync's entry and exit programs, summed (the summary's \
         `overhead.programs`): the same code at every rate.\n"
    )?;
    writeln!(
        md,
        "| target rate/s | achieved/s | produced | received | lost | lavtrace CPU % | ns per run (entry + exit) |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for (&rate, r) in RATES.iter().zip(&rows) {
        let m = |v: &Vec<f64>| median_min_max(v.clone()).0;
        let ns = (!r.ns_per_run.is_empty()).then(|| m(&r.ns_per_run));
        writeln!(
            md,
            "| {rate} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
            m(&r.achieved),
            m(&r.produced),
            m(&r.received),
            m(&r.lost),
            m(&r.cpu_pct),
            ns.map_or("-".to_string(), |n| format!("{n:.0}"))
        )?;
        if let Some(ns) = ns {
            fig.pipeline_ns.push((rate, ns));
        }
    }
    writeln!(md, "\nMedians over {} runs per rate.\n", opts.runs)?;
    Ok(())
}

/// msync's entry and exit programs' ns per run, summed, from a summary's `overhead.programs`
/// (uprobe or tracepoint set: whichever this kernel gave the fsync family).
fn msync_ns_per_run(summary: &serde_json::Value) -> Option<f64> {
    let ns = |name: &str| {
        summary["overhead"]["programs"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name && p["runs"].as_u64().is_some_and(|r| r > 0))?["ns_per_run"]
            .as_f64()
    };
    let enter = ns("fsync_uenter_msync").or_else(|| ns("fsync_enter3"))?;
    let exit = ns("fsync_uexit").or_else(|| ns("fsync_exit"))?;
    Some(enter + exit)
}

/// The two broker scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Persistent messages with confirms: every tracer and family row.
    Persistent,
    /// lavinmqperf's default: transient messages, no confirms; the default set against the
    /// other tracers.
    Transient,
}

/// Scenarios 2 and 3: RabbitMQ with a real client, under `load`.
fn broker(
    md: &mut String,
    lavtrace: &Path,
    opts: &Options,
    fig: &mut Figures,
    load: Load,
) -> Result<()> {
    let rabbit = Rabbit::start(0)?;
    let (broker_pid, url, port) = (rabbit.pid, rabbit.url(), rabbit.port);
    let persistent = [
        Tracer::None,
        Tracer::Lavtrace("syscalls"),
        Tracer::Lavtrace("fsync"),
        Tracer::Lavtrace("mmap"),
        Tracer::Lavtrace("tcp"),
        Tracer::Lavtrace("gc"),
        // Every frame of the confirm load walked in the kernel: its cost per parsed write.
        Tracer::LavtraceAmqp("amqp", port),
        Tracer::Lavtrace(ALL),
        Tracer::LavtraceAmqp(DEFAULT, port),
        Tracer::Lavtrace("faults"),
        Tracer::Lavtrace("sched"),
        Tracer::Bpftrace,
        Tracer::PerfTrace,
        Tracer::Strace,
    ];
    let transient = [
        Tracer::None,
        Tracer::Lavtrace("syscalls"),
        Tracer::LavtraceAmqp(DEFAULT, port),
        Tracer::Bpftrace,
        Tracer::PerfTrace,
        Tracer::Strace,
    ];
    let (tracers, messages, load_args): (&[Tracer], u64, &[&str]) = match load {
        Load::Persistent => (
            &persistent,
            opts.broker_messages,
            &["--confirm-window", "100"],
        ),
        // About as fast per message as the persistent load is per 5: the same run length.
        Load::Transient => (&transient, opts.broker_messages * 5, &["--transient"]),
    };
    let messages = messages.to_string();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut own: Vec<Vec<(f64, f64)>> = vec![Vec::new(); tracers.len()];
    let result = (|| -> Result<()> {
        for run in 0..opts.runs {
            for (i, &tracer) in tracers.iter().enumerate() {
                eprintln!(
                    "xtask bench: broker ({load:?}) run {}/{} {}",
                    run + 1,
                    opts.runs,
                    tracer.label()
                );
                let mut args = vec![
                    "amqp",
                    "--url",
                    &url,
                    "--connections",
                    "2",
                    "--messages",
                    &messages,
                    "--size",
                    "1024",
                ];
                args.extend(load_args);
                let mut wl = Workload::spawn(&args)?;
                let running = tracer.attach(lavtrace, broker_pid)?;
                let cpu0 = cpu_time(broker_pid);
                let stats = wl.go("stats ", Duration::from_secs(900))?;
                let busy = cpu_time(broker_pid) - cpu0;
                let secs = stats["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
                if let Some(r) = running {
                    let (o, out) = r.stop_with_output()?;
                    // lavtrace's CPU from its attached line to the end of the exchange, as a
                    // share of the exchange's wall time (loading and verifying its programs
                    // left out: at 100 confirms in flight the exchange lasts about 2 s, and
                    // they were most of the figure).
                    own[i].push((
                        o.cpu_since_attach.as_secs_f64() / secs * 100.0,
                        o.max_rss_kib as f64 / 1024.0,
                    ));
                    if tracer == Tracer::LavtraceAmqp(DEFAULT, port) && load == Load::Persistent {
                        fig.own_detail = Some((
                            o.threads
                                .iter()
                                .map(|(n, c)| (n.clone(), c.as_secs_f64() / secs * 100.0))
                                .collect(),
                            o.memory
                                .iter()
                                .map(|&(k, kib)| (k, kib as f64 / 1024.0))
                                .collect(),
                        ));
                    }
                    // Each program's cost from the last run of every lavtrace row: the
                    // opt-in families' programs are only in their own rows.
                    let families = match tracer {
                        Tracer::Lavtrace(f) | Tracer::LavtraceAmqp(f, _) => Some(f),
                        _ => None,
                    };
                    // The table is of the persistent load's runs only.
                    let families = families.filter(|_| load == Load::Persistent);
                    if let (Some(families), Ok(summary)) = (families, summary_of(&out)) {
                        for p in summary["overhead"]["programs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            let name = p["name"].as_str().unwrap_or("?").to_string();
                            fig.programs.insert(name, (families, p.clone()));
                        }
                    }
                }
                let done = match load {
                    Load::Persistent => &stats["confirmed"],
                    Load::Transient => &stats["consumed"],
                };
                rates[i].push(done.as_f64().unwrap_or(0.0) / secs);
                cpu[i].push(busy.as_secs_f64() / secs * 100.0);
            }
        }
        if load == Load::Persistent {
            // The same row on the idle broker: the share of lavtrace's CPU that does not follow
            // the load (each interval's /proc, sock_diag and map reads, and its report).
            const IDLE: Duration = Duration::from_secs(3);
            let tracer = Tracer::LavtraceAmqp(DEFAULT, port);
            eprintln!("xtask bench: broker idle {}", tracer.label());
            if let Some(r) = tracer.attach(lavtrace, broker_pid)? {
                std::thread::sleep(IDLE);
                let o = r.stop()?;
                fig.own_idle_pct =
                    Some(o.cpu_since_attach.as_secs_f64() / IDLE.as_secs_f64() * 100.0);
            }
        }
        Ok(())
    })();
    drop(rabbit);
    result?;

    let (base, base_min, base_max) = median_min_max(rates[0].clone());
    fig.untraced_spread[usize::from(load == Load::Transient)] = (base_max - base_min) / base;
    match load {
        Load::Persistent => {
            writeln!(md, "## 2. Broker under load\n")?;
            writeln!(
                md,
                "RabbitMQ (Debian's package, `scripts/rabbitmq-local`) on 127.0.0.1; `lavtrace-workload amqp --connections 2 \
                 --messages {messages} --size 1024 --confirm-window 100`: persistent messages published with up to 100 \
                 confirms outstanding, then consumed with acks. Confirmed messages per second of the exchange, and the broker's CPU (all threads) \
                 during it.\n"
            )?;
        }
        Load::Transient => {
            writeln!(md, "## 3. Broker under a transient load\n")?;
            writeln!(
                md,
                "The same broker and client, `lavtrace-workload amqp --connections 2 --messages {messages} --size 1024 \
                 --transient`: lavinmqperf's default load, non-persistent messages to a non-durable queue without \
                 confirms, then consumed with acks. Consumed messages per second of the exchange.\n"
            )?;
        }
    }
    writeln!(
        md,
        "| tracer | msgs/s median | min–max | × untraced | broker CPU % | command |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---|")?;
    for (i, &tracer) in tracers.iter().enumerate() {
        let (med, min, max) = median_min_max(rates[i].clone());
        let (cpu_med, _, _) = median_min_max(cpu[i].clone());
        let cmd = tracer.command(Path::new("lavtrace"), 0).map_or_else(
            || "(none)".to_string(),
            |c| shell_words(&c).replace(" 0", " BROKER_PID"),
        );
        writeln!(
            md,
            "| {} | {med:.0} | {min:.0}–{max:.0} | {:.3} | {cpu_med:.0} | `{cmd}` |",
            tracer.label(),
            med / base
        )?;
        match load {
            Load::Persistent => fig.broker_ratio.push((tracer, med / base)),
            Load::Transient => fig.transient_ratio.push((tracer, med / base)),
        }
    }
    writeln!(md)?;
    if load == Load::Transient {
        fig.transient_default = Some(Tracer::LavtraceAmqp(DEFAULT, port));
        return Ok(());
    }
    fig.default = Some(Tracer::LavtraceAmqp(DEFAULT, port));
    fig.own = tracers
        .iter()
        .position(|&t| Some(t) == fig.default)
        .map(|i| own[i].clone())
        .unwrap_or_default();
    Ok(())
}

/// Scenario 5: what the faults family adds to a page fault, of the target and of a bystander.
fn faults(md: &mut String, lavtrace: &Path, opts: &Options) -> Result<()> {
    const FAULTS: u64 = 1_000_000;
    let tracers = [
        Tracer::None,
        Tracer::Lavtrace("faults"),
        Tracer::LavtraceWith("faults", "--no-bpf-stats"),
        Tracer::LavtraceOther("faults"),
    ];
    let n = FAULTS.to_string();
    let mut ns_per_fault: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    for run in 0..opts.runs {
        for (i, &tracer) in tracers.iter().enumerate() {
            eprintln!(
                "xtask bench: faults run {}/{} {}",
                run + 1,
                opts.runs,
                tracer.label()
            );
            let mut wl = Workload::spawn(&["faults", "--anon-faults", &n])?;
            // The bystander row traces this idle process, never given go.
            let decoy = Workload::spawn(&["spin", "--calls", "0"])?;
            let traced_pid = if matches!(tracer, Tracer::LavtraceOther(_)) {
                decoy.pid
            } else {
                wl.pid
            };
            let running = tracer.attach(lavtrace, traced_pid)?;
            let result = wl.go("result ", Duration::from_secs(600))?;
            if let Some(r) = running {
                r.stop()?;
            }
            drop(decoy);
            ns_per_fault[i].push(result["ns"].as_f64().unwrap_or(0.0) / FAULTS as f64);
        }
    }
    let base = median_min_max(ns_per_fault[0].clone()).0;
    writeln!(
        md,
        "## 5. Page faults
"
    )?;
    writeln!(
        md,
        "`lavtrace-workload faults --anon-faults {FAULTS}`: write faults on anonymous memory, 1024 pages \
         at a time with MADV_DONTNEED between, as fast as one thread can. ns per fault (wall time / faults). \
         The `(tracing another process)` row is the bystander: the exceptions and writeback tracepoints run \
         for every process's faults; the perf events only for the target's.\n"
    )?;
    writeln!(
        md,
        "| tracer | ns/fault median | min–max | added ns/fault | command |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---|")?;
    for (i, &tracer) in tracers.iter().enumerate() {
        let (med, min, max) = median_min_max(ns_per_fault[i].clone());
        let cmd = tracer.command(Path::new("lavtrace"), 0).map_or_else(
            || "(none)".to_string(),
            |c| shell_words(&c).replace(" 0", " PID"),
        );
        writeln!(
            md,
            "| {} | {med:.0} | {min:.0}–{max:.0} | {:.0} | `{cmd}` |",
            tracer.label(),
            med - base
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Section 9: what parsing AMQPS costs the target: the SSL probes (a trap at each
/// SSL_read/SSL_write's entry and `ret`), per message of a TLS connection at full speed.
fn amqps(md: &mut String, lavtrace: &Path, opts: &Options) -> Result<()> {
    const MESSAGES: u64 = 20_000;
    const PORT: u16 = 26_971;
    let tracers = [
        Tracer::None,
        Tracer::LavtraceAmqps(PORT, ""),
        Tracer::LavtraceAmqps(PORT, "--no-ssl-probes"),
        Tracer::LavtraceOther("amqp"),
    ];
    let n = MESSAGES.to_string();
    let port = PORT.to_string();
    let mut us_per_msg: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    // ns per run of the SSL probes' programs (entry, return), from the traced rows.
    let mut program_ns: Vec<(f64, f64)> = Vec::new();
    for run in 0..opts.runs {
        for (i, &tracer) in tracers.iter().enumerate() {
            eprintln!(
                "xtask bench: amqps run {}/{} {}",
                run + 1,
                opts.runs,
                tracer.label()
            );
            let mut wl = Workload::spawn(&["amqps-load", "--port", &port, "--messages", &n])?;
            let decoy = Workload::spawn(&["spin", "--calls", "0"])?;
            let traced_pid = if matches!(tracer, Tracer::LavtraceOther(_)) {
                decoy.pid
            } else {
                wl.pid
            };
            let running = tracer.attach(lavtrace, traced_pid)?;
            let result = wl.go("result ", Duration::from_secs(600))?;
            if let Some(r) = running {
                let (_, out) = r.stop_with_output()?;
                if tracer == Tracer::LavtraceAmqps(PORT, "") {
                    let summary = summary_of(&out)?;
                    let amqp = &summary["amqp"]["connections"][0];
                    if amqp["published"].as_u64() != Some(MESSAGES) {
                        bail!(
                            "the traced AMQPS run counted {} publishes, not {MESSAGES}",
                            amqp["published"]
                        );
                    }
                    let ns = |name: &str| {
                        summary["overhead"]["programs"].as_array().and_then(|ps| {
                            ps.iter()
                                .find(|p| p["name"] == name)
                                .and_then(|p| p["ns_per_run"].as_f64())
                        })
                    };
                    if let (Some(e), Some(r)) = (ns("amqp_ssl_read"), ns("amqp_ssl_return")) {
                        program_ns.push((e, r));
                    }
                }
            }
            drop(decoy);
            let ns = result["ns"].as_f64().unwrap_or(0.0);
            us_per_msg[i].push(ns / 1000.0 / MESSAGES as f64);
        }
    }
    let base = median_min_max(us_per_msg[0].clone()).0;
    writeln!(md, "## 9. AMQPS\n")?;
    writeln!(
        md,
        "`lavtrace-workload amqps-load --port PORT --messages {MESSAGES}`: one AMQPS connection through the \
         workload's libssl (OpenSSL, linked dynamically as LavinMQ links it), its client a child process \
         (not traced): a publish of 1 KiB per SSL_write, the server reading with 16 KiB SSL_read calls and \
         confirming every 100th. µs per message, from the client's first publish to the last confirm. \
         With the SSL probes, the server's every SSL_read and SSL_write traps twice (entry, `ret`); \
         `--no-ssl-probes` leaves them out (the connection is then counted as TLS, not parsed); the \
         socket calls take this host's amqp hook set in both (section 0). The last row traces another, \
         idle process.\n"
    )?;
    writeln!(
        md,
        "| tracer | µs/message median | min–max | added µs/message | throughput ratio | command |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---|")?;
    for (i, &tracer) in tracers.iter().enumerate() {
        let (med, min, max) = median_min_max(us_per_msg[i].clone());
        let cmd = tracer.command(Path::new("lavtrace"), 0).map_or_else(
            || "(none)".to_string(),
            |c| shell_words(&c).replace(" 0", " PID"),
        );
        writeln!(
            md,
            "| {} | {med:.1} | {min:.1}–{max:.1} | {:.1} | {:.3} | `{cmd}` |",
            tracer.label(),
            med - base,
            base / med.max(f64::MIN_POSITIVE)
        )?;
    }
    if !program_ns.is_empty() {
        let entry = median_min_max(program_ns.iter().map(|p| p.0).collect()).0;
        let ret = median_min_max(program_ns.iter().map(|p| p.1).collect()).0;
        writeln!(
            md,
            "\nBPF time per run with the SSL probes (median over the runs): `amqp_ssl_read` {entry:.0} ns, \
         `amqp_ssl_return` (its walk included) {ret:.0} ns; the rest of the added time is the traps."
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Scenario 4: lavtrace's own cost while tracing the broker, and what each of its kernel
/// programs cost per run there.
fn itself(md: &mut String, fig: &Figures) -> Result<()> {
    if fig.own.is_empty() {
        return Ok(());
    }
    let (cpu_med, _, cpu_max) = median_min_max(fig.own.iter().map(|x| x.0).collect());
    let (rss_med, _, rss_max) = median_min_max(fig.own.iter().map(|x| x.1).collect());
    writeln!(
        md,
        "## 6. lavtrace itself\n\n\
         While tracing the broker scenario with `--probes {DEFAULT}`: CPU of the lavtrace process from its \
         `attached` line to the end of the exchange (loading and verifying its programs left out: that \
         is the attach time of scenario 1), as a share of one core over the exchange's wall time, median {cpu_med:.1} % (max {cpu_max:.1} %); peak RSS (VmHWM) median \
         {rss_med:.1} MiB, max {rss_max:.1} MiB. Attach time is under scenario 1.\n"
    )?;
    if let Some(idle) = fig.own_idle_pct {
        writeln!(
            md,
            "The same command on the idle broker for 3 s: {idle:.1} % of a core.\n"
        )?;
    }
    if let Some((threads, memory)) = &fig.own_detail {
        let threads: Vec<String> = threads
            .iter()
            .map(|(n, pct)| format!("`{n}` {pct:.2} %"))
            .collect();
        let memory: Vec<String> = memory
            .iter()
            .map(|(k, mib)| format!("{k} {mib:.1} MiB"))
            .collect();
        writeln!(
            md,
            "Its last run, by thread (CPU since attach, share of a core): {}. Resident at its end, \
             by kind of mapping: {}.\n",
            threads.join(", "),
            memory.join(", ")
        )?;
    }
    if !fig.programs.is_empty() {
        writeln!(
            md,
            "Per kernel program, over the last broker run of the row that loaded it (the kernel's \
             own run-time statistics, `BPF_ENABLE_STATS`, on 100 ms of every second; the summary's \
             `overhead.programs`: ns per run as measured, runs scaled from that share, estimates). \
             Runs count every process's events a hook sees, not only the broker's:\n"
        )?;
        writeln!(md, "| program | row (`--probes`) | runs | ns per run |")?;
        writeln!(md, "|---|---|---:|---:|")?;
        for (name, (families, p)) in &fig.programs {
            writeln!(
                md,
                "| `{name}` | {families} | {} | {} |",
                p["runs"].as_u64().unwrap_or(0),
                p["ns_per_run"].as_u64().unwrap_or(0)
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lavtrace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.contains([' ', '$', '{', '/', '"']) && w.len() > 20 {
                format!("'{w}'")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A throwaway RabbitMQ (`scripts/rabbitmq-local`) on 127.0.0.1, stopped on drop.
struct Rabbit {
    launcher: Child,
    pid: u32,
    port: u16,
    dir: PathBuf,
}

impl Rabbit {
    /// `instance`: a broker started after another stopped gets a port and node name of its
    /// own (the last one's Erlang node may still be going away).
    fn start(instance: u16) -> Result<Rabbit> {
        let dir = tempdir()?.join(format!("rabbit-{instance}"));
        let port = 25000 + (std::process::id() % 2000) as u16 + 2 * instance;
        let mut launcher = Command::new(workspace_root().join("scripts/rabbitmq-local"))
            .arg(&dir)
            .arg(port.to_string())
            // Below the ephemeral range (32768+): a client socket there made the second
            // broker fail with `dist_port_already_used ... not_erlang`.
            .arg((port - 10000).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting RabbitMQ")?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let pid: u32 = loop {
            if let (Ok(pid), true) = (
                std::fs::read_to_string(dir.join("pid")),
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            ) {
                break pid.trim().parse()?;
            }
            if Instant::now() > deadline {
                let _ = launcher.kill();
                bail!("RabbitMQ did not start");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        Ok(Rabbit {
            launcher,
            pid,
            port,
            dir,
        })
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let _ = self.launcher.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `summary` record of a lavtrace run's JSON output.
fn summary_of(out: &[String]) -> Result<serde_json::Value> {
    out.iter()
        .rev()
        .find_map(|l| {
            serde_json::from_str(l)
                .ok()
                .filter(|v: &serde_json::Value| v["type"] == "summary")
        })
        .context("no lavtrace summary")
}

/// Events lost by every family, summed.
fn lost_total(summary: &serde_json::Value) -> u64 {
    summary["lost_events"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
}

/// Scenario 5 (production shapes, at the full size the tests run reduced): connection churn
/// and a thousand long-lived connections, with what lavtrace itself used.
fn scale(md: &mut String, lavtrace: &Path) -> Result<()> {
    const CHURN: u64 = 20_000;
    const HELD: u32 = 1_000;
    writeln!(md, "## 7. Production shapes\n")?;

    eprintln!("xtask bench: scale, {CHURN} connections churned");
    let n = CHURN.to_string();
    let mut wl = Workload::spawn(&["tcp-churn", "--connections", &n])?;
    let running = Tracer::Lavtrace("tcp")
        .attach(lavtrace, wl.pid)?
        .context("lavtrace did not start")?;
    let started = Instant::now();
    wl.started.go()?;
    wl.started.wait_done(Duration::from_secs(600))?;
    let secs = started.elapsed().as_secs_f64();
    let (own, out) = running.stop_with_output()?;
    wl.finish();
    let summary = summary_of(&out)?;
    let tcp = &summary["tcp"];
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    writeln!(
        md,
        "**Churn.** `lavtrace-workload tcp-churn --connections {CHURN}` (each connection is two sockets \
         of the target: its connect and its accept; half close gracefully, half reset) in {secs:.1} s, traced by \
         `lavtrace trace --pid PID --probes tcp --format json --interval 1s`:\n"
    )?;
    writeln!(
        md,
        "| sockets expected | opened | closed | listed at the end | evicted (folded into counts) | lost | lavtrace peak RSS MiB | lavtrace CPU s |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    writeln!(
        md,
        "| {} | {} | {} | {} | {} | {} | {:.1} | {:.2} |\n",
        2 * CHURN,
        count(&tcp["opened"]),
        count(&tcp["closed"]),
        tcp["connections"].as_array().map_or(0, Vec::len),
        count(&tcp["evicted"]),
        count(&summary["lost_events"]["tcp"]),
        own.max_rss_kib as f64 / 1024.0,
        own.cpu.as_secs_f64()
    )?;

    eprintln!("xtask bench: scale, {HELD} connections held");
    let rabbit = Rabbit::start(1)?;
    let url = rabbit.url();
    let held = HELD.to_string();
    let mut wl = Workload::spawn_within(
        &[
            "amqp",
            "--url",
            &url,
            "--held",
            &held,
            "--connections",
            "10",
            "--messages",
            "2000",
            "--confirm-window",
            "100",
            "--wait-before-close",
        ],
        Duration::from_secs(300),
    )?;
    let running = Tracer::LavtraceAmqp(DEFAULT, rabbit.port)
        .attach(lavtrace, rabbit.pid)?
        .context("lavtrace did not start")?;
    let attach_ms = running.attach.as_secs_f64() * 1e3;
    let stats = wl.go_until("stats ", Duration::from_secs(600))?;
    let secs = stats["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
    let (own, out) = running.stop_with_output()?;
    wl.finish();
    let amqp_port = format!(":{}", rabbit.port);
    drop(rabbit);
    let summary = summary_of(&out)?;
    let open = summary["tcp"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["open"] == true)
        .filter(|r| r["local"].as_str().is_some_and(|l| l.ends_with(&amqp_port)))
        .count();
    writeln!(
        md,
        "**A thousand connections.** RabbitMQ with `lavtrace-workload amqp --held {HELD} --connections 10 \
         --messages 2000 --confirm-window 100`: {HELD} connections opened before lavtrace attaches, 2,000 \
         persistent confirmed messages on 10 of them, traced by `lavtrace trace --pid BROKER_PID --probes {DEFAULT} \
         --amqp-port PORT --format json --interval 1s`:\n"
    )?;
    writeln!(
        md,
        "| connections held | listed open on the AMQP port | lost (all families) | attach ms | lavtrace peak RSS MiB | lavtrace CPU s | load s |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|")?;
    writeln!(
        md,
        "| {HELD} | {open} | {} | {attach_ms:.0} | {:.1} | {:.2} | {secs:.2} |\n",
        lost_total(&summary),
        own.max_rss_kib as f64 / 1024.0,
        own.cpu.as_secs_f64()
    )?;
    Ok(())
}

/// What the scenarios measured that the targets are judged on.
#[derive(Default)]
struct Figures {
    /// Spin loop: ns added per syscall, per tracer.
    spin_added: Vec<(Tracer, f64)>,
    /// Spin loop: min and max ns per syscall of each tracer's runs.
    spin_range: Vec<(Tracer, (f64, f64))>,
    /// Spin loop: max - min of the untraced runs (the noise a "+0" is judged against).
    untraced_spread_ns: f64,
    attach_ms: Option<f64>,
    /// Broker scenario: throughput as a share of untraced, per tracer.
    broker_ratio: Vec<(Tracer, f64)>,
    /// Broker scenario: the row of the default families.
    default: Option<Tracer>,
    /// Transient broker scenario: throughput as a share of untraced, and the default row.
    transient_ratio: Vec<(Tracer, f64)>,
    transient_default: Option<Tracer>,
    /// Broker scenario, all families: lavtrace's (CPU % of a core, peak RSS MiB) per run.
    own: Vec<(f64, f64)>,
    /// The same row's last run: CPU % of a core by thread name, and resident MiB by kind of
    /// mapping at its end.
    own_detail: Option<OwnDetail>,
    /// Event pipeline: (calls per second, ns per run of msync's two programs).
    pipeline_ns: Vec<(u64, f64)>,
    /// The same row traced on the idle broker: lavtrace's CPU % of a core.
    own_idle_pct: Option<f64>,
    /// The untraced runs' max - min as a share of their median: broker, transient.
    untraced_spread: [f64; 2],
    /// Broker scenario: each program's `overhead.programs` entry from the last run of a row
    /// that had it, with that row's `--probes`.
    programs: std::collections::BTreeMap<String, (&'static str, serde_json::Value)>,
}

impl Figures {
    fn added(&self, t: Tracer) -> Option<f64> {
        self.spin_added.iter().find(|(x, _)| *x == t).map(|x| x.1)
    }
    fn range(&self, t: Tracer) -> Option<(f64, f64)> {
        self.spin_range.iter().find(|(x, _)| *x == t).map(|x| x.1)
    }
    fn ratio(&self, t: Tracer) -> Option<f64> {
        self.broker_ratio.iter().find(|(x, _)| *x == t).map(|x| x.1)
    }
}

/// Section 0: the hooks each family takes on this kernel and what they cost other processes,
/// as `lavtrace check` prints them.
fn hooks(md: &mut String, lavtrace: &Path) -> Result<()> {
    let out = Command::new(lavtrace)
        .arg("check")
        .output()
        .context("running lavtrace check")?;
    let text = String::from_utf8_lossy(&out.stdout);
    writeln!(md, "## 0. Hooks on this kernel\n")?;
    writeln!(
        md,
        "What `lavtrace check` prints here for each family: the kinds of hook it attached, and \
         what that costs processes lavtrace does not trace. `check` attaches each family alone; \
         beside the syscalls family (the default set), fsync, mmap and amqp take the syscall \
         tracepoints instead of uprobes or kprobes, since every syscall then takes the slow path \
         anyway and a tracepoint program costs the target less than a uprobe's trap; other \
         processes pay for those tracepoints on the syscalls they hook (section 1, the \
         default set's bystander row; section 6 lists the programs each row loaded).\n"
    )?;
    hook_table(md, &text)?;
    let dir = workspace_root().join("target/vm");
    for spec in crate::vm::matrix_names() {
        let Ok(guest) = std::fs::read_to_string(crate::vm::check_file(&dir, spec)) else {
            continue;
        };
        let (head, body) = guest.split_once('\n').unwrap_or(("", ""));
        writeln!(
            md,
            "The qemu guest {spec} of `cargo xtask vm-test` ({}; the same `check`, saved by \
             that run):\n",
            head.trim_start_matches("# ")
        )?;
        hook_table(md, body)?;
    }
    Ok(())
}

/// The table of `lavtrace check` output `text`: each family's hook kinds and host cost.
fn hook_table(md: &mut String, text: &str) -> Result<()> {
    writeln!(md, "| family | hooks in use | other processes |")?;
    writeln!(md, "|---|---|---|")?;
    for line in text.lines().filter(|l| l.contains("(host cost)")) {
        let family = line.split_whitespace().next().unwrap_or("?");
        let cost = line
            .split_once("other processes:")
            .map_or("", |(_, c)| c.trim());
        let mut kinds: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(family))
            .filter_map(|l| l.split_once(" ok via ").map(|(_, v)| v))
            .filter_map(|v| v.split_whitespace().next())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        writeln!(md, "| {family} | {} | {cost} |", kinds.join(", "))?;
    }
    writeln!(md)?;
    Ok(())
}

/// The target "per-event programs ≤ 1 µs per run, or explained": every program over 1 µs in
/// the broker scenario, with what the pipeline scenario measured of the same code at low and
/// high rates.
fn per_event_programs(rows: &mut Vec<(String, String, bool, String)>, fig: &Figures) {
    const BUDGET_NS: u64 = 1000;
    let over: Vec<(&String, u64, u64)> = fig
        .programs
        .iter()
        .filter_map(|(name, (_, p))| {
            let ns = p["ns_per_run"].as_u64()?;
            (ns > BUDGET_NS).then(|| (name, ns, p["runs"].as_u64().unwrap_or(0)))
        })
        .collect();
    if fig.programs.is_empty() {
        return;
    }
    let figure = if over.is_empty() {
        format!(
            "all {} programs ≤ {BUDGET_NS} ns per run",
            fig.programs.len()
        )
    } else {
        let list: Vec<String> = over
            .iter()
            .map(|(name, ns, runs)| format!("`{name}` {ns} ns × {runs} runs"))
            .collect();
        format!(
            "{} of {} programs over {BUDGET_NS} ns: {}",
            over.len(),
            fig.programs.len(),
            list.join(", ")
        )
    };
    let mut why = Vec::new();
    if let (Some(slow), Some(fast)) = (fig.pipeline_ns.first(), fig.pipeline_ns.get(1)) {
        let cold = if slow.1 > 1.3 * fast.1 {
            ": the programs of rare calls (accept, fsync: tens to hundreds of runs here) pay for \
             cold caches and branch predictors, not for their work"
        } else {
            ""
        };
        why.push(format!(
            "the same msync programs measured {:.0} ns per run at {}/s and {:.0} ns at {}/s \
             (section 4){cold}",
            slow.1, slow.0, fast.1, fast.0
        ));
    }
    if over.iter().any(|(name, _, _)| name.starts_with("amqp_")) {
        why.push(
            "the amqp exit programs walk every frame header of a transfer (a LavinMQ-sized \
             batch is hundreds of frames), so their run is per write, not per frame"
                .to_string(),
        );
    }
    rows.push((
        format!("per-event programs ≤ {BUDGET_NS} ns per run, or explained"),
        figure,
        over.is_empty(),
        why.join("; "),
    ));
}

/// lavtrace's CPU % of a core by thread name, and its resident MiB by kind of mapping.
type OwnDetail = (Vec<(String, f64)>, Vec<(&'static str, f64)>);

/// The targets of the performance issue, each judged on this run's figures.
fn targets(md: &mut String, fig: &Figures) -> Result<()> {
    // (target, figure, holds, the measured reason when missed)
    let mut rows: Vec<(String, String, bool, String)> = Vec::new();
    let judge = |rows: &mut Vec<_>, target: &str, figure: String, holds: bool| {
        rows.push((target.to_string(), figure, holds, String::new()));
    };
    let because = |rows: &mut Vec<(String, String, bool, String)>, why: String| {
        if let Some(last) = rows.last_mut().filter(|r| !r.2) {
            last.3 = why;
        }
    };
    let noise = |load: usize, gap: f64| {
        format!(
            "the untraced runs spread over {:.0} % of their median, the gap is {:.0} %: more \
             runs are needed to tell",
            fig.untraced_spread[load] * 100.0,
            gap * 100.0
        )
    };
    let ns_per_run = |program: &str| {
        fig.programs
            .get(program)
            .and_then(|(_, p)| p["ns_per_run"].as_u64())
    };
    if let Some(r) = fig.default.and_then(|t| fig.ratio(t)) {
        judge(
            &mut rows,
            &format!("broker scenario: the default families ({DEFAULT}) ≥ 0.98 of untraced"),
            format!("{r:.3}"),
            r >= 0.98,
        );
        because(&mut rows, noise(0, 0.98 - r));
        for other in [Tracer::Strace, Tracer::PerfTrace, Tracer::Bpftrace] {
            if let Some(o) = fig.ratio(other) {
                judge(
                    &mut rows,
                    &format!("broker scenario: ahead of {}", other.label()),
                    format!("{r:.3} vs {o:.3}"),
                    r > o,
                );
            }
        }
    }
    let transient = |t: Tracer| {
        fig.transient_ratio
            .iter()
            .find(|(x, _)| *x == t)
            .map(|x| x.1)
    };
    if let Some(r) = fig.transient_default.and_then(transient) {
        judge(
            &mut rows,
            "transient broker scenario: default families ≥ 0.95 of untraced",
            format!("{r:.3}"),
            r >= 0.95,
        );
        let alone = transient(Tracer::Lavtrace("syscalls"))
            .map(|a| format!("; the syscalls family alone measured {a:.3}"))
            .unwrap_or_default();
        because(&mut rows, format!("{}{alone}", noise(1, 0.95 - r)));
        for other in [Tracer::Strace, Tracer::PerfTrace, Tracer::Bpftrace] {
            if let Some(o) = transient(other) {
                judge(
                    &mut rows,
                    &format!("transient broker scenario: ahead of {}", other.label()),
                    format!("{r:.3} vs {o:.3}"),
                    r > o,
                );
                because(&mut rows, noise(1, o - r));
            }
        }
    }
    for t in [
        Tracer::LavtraceOther("fsync"),
        Tracer::LavtraceOther("mmap"),
        Tracer::LavtraceOther("tcp"),
        Tracer::LavtraceOther("amqp"),
        Tracer::LavtraceOther("gc"),
        Tracer::LavtraceOther(NOT_SYSCALLS),
    ] {
        if let Some(a) = fig.added(t) {
            judge(
                &mut rows,
                &format!("bystander, {}: +0 ns per syscall", t.label()),
                format!(
                    "{a:+.0} ns (untraced runs spread over {:.0} ns)",
                    fig.untraced_spread_ns
                ),
                a.abs() <= fig.untraced_spread_ns.max(5.0),
            );
            if let (Some((min, max)), Some((umin, umax))) = (fig.range(t), fig.range(Tracer::None))
            {
                let verdict = if min <= umax && umin <= max {
                    "the ranges overlap: within the loop's noise, more runs are needed to tell"
                } else {
                    "every run above every untraced run: a cost this run cannot explain"
                };
                because(
                    &mut rows,
                    format!(
                        "its runs took {min:.0}–{max:.0} ns per syscall, the untraced runs \
                         {umin:.0}–{umax:.0}: {verdict}"
                    ),
                );
            }
        }
    }
    if let (Some(default), Some(alone)) = (
        fig.added(Tracer::LavtraceOther(DEFAULT)),
        fig.added(Tracer::LavtraceOther("syscalls")),
    ) {
        let over = default - alone;
        judge(
            &mut rows,
            "bystander, the default set: +0 ns per syscall over the syscalls family alone",
            format!(
                "{over:+.0} ns ({default:.0} against {alone:.0}; untraced runs spread over {:.0} ns)",
                fig.untraced_spread_ns
            ),
            over.abs() <= fig.untraced_spread_ns.max(5.0),
        );
        because(
            &mut rows,
            "beside the syscalls family, fsync, mmap and amqp take the per-syscall tracepoints \
             (section 0): on every bystander syscall of those numbers (the loop's write is \
             amqp's) the kernel's per-event dispatch fills a record with the arguments and \
             calls the program before its pid check returns. Dispatching them from the \
             syscalls family's raw sys_enter/sys_exit programs, after their pid check, would \
             cost bystanders nothing over the family alone (not built)"
                .to_string(),
        );
    }
    if let (Some(sys), Some(floor)) = (
        fig.added(Tracer::Lavtrace("syscalls")),
        fig.added(Tracer::Lavtrace("floor")),
    ) {
        judge(
            &mut rows,
            "spin loop: syscalls family ≤ 1.15× the floor added per syscall",
            format!("{sys:.0} / {floor:.0} ns = {:.2}×", sys / floor),
            sys <= 1.15 * floor,
        );
        if let (Some(enter), Some(exit)) = (
            ns_per_run("syscalls_enter_raw"),
            ns_per_run("syscalls_exit_raw"),
        ) {
            because(
                &mut rows,
                format!(
                    "the family's own programs run {enter} + {exit} ns per syscall (section 6, \
                     kernel statistics): the entry timestamp and the exit's per-CPU histogram \
                     update; the floor's empty programs cost only their dispatch, so the \
                     {:.0} ns over it are that work",
                    sys - floor
                ),
            );
        }
    }
    if let (Some(sampled), Some(full), Some(off)) = (
        fig.added(Tracer::Lavtrace("syscalls")),
        fig.added(Tracer::LavtraceWith("syscalls", "--bpf-stats-full")),
        fig.added(Tracer::LavtraceWith("syscalls", "--no-bpf-stats")),
    ) {
        judge(
            &mut rows,
            "BPF_ENABLE_STATS measured, and sampled by default where it matters",
            format!(
                "syscalls family {full:.0} ns added per syscall with the statistics held all the \
                 time, {off:.0} without them, {sampled:.0} with the default duty cycle (100 ms of \
                 every 1 s; the COST line's runs are then estimates and say so)"
            ),
            sampled <= off + (full - off) / 2.0,
        );
    }
    if !fig.own.is_empty() {
        let (cpu, _, _) = median_min_max(fig.own.iter().map(|x| x.0).collect());
        let (rss, _, _) = median_min_max(fig.own.iter().map(|x| x.1).collect());
        judge(
            &mut rows,
            "lavtrace's own CPU ≤ 1 % of a core on the broker scenario",
            format!("{cpu:.1} %"),
            cpu <= 1.0,
        );
        if let Some(idle) = fig.own_idle_pct {
            because(
                &mut rows,
                format!(
                    "{idle:.1} % of a core is paid on the idle broker too: each interval's /proc \
                     and map reads and its report, and above all the two sock_diag dumps (IPv4, \
                     IPv6) in which the kernel walks the host's whole established-socket hash to \
                     find the broker's sockets (perf: `tcp_diag_dump` the largest share); the \
                     load adds {:.1} % (the ring events and their decoding)",
                    (cpu - idle).max(0.0)
                ),
            );
        }
        judge(
            &mut rows,
            "lavtrace's RSS ≤ 32 MiB",
            format!("{rss:.1} MiB"),
            rss <= 32.0,
        );
        if let Some((_, memory)) = &fig.own_detail {
            let parts: Vec<String> = memory
                .iter()
                .take(4)
                .map(|(k, mib)| format!("{k} {mib:.1} MiB"))
                .collect();
            because(
                &mut rows,
                format!("resident at the end of the last run: {}", parts.join(", ")),
            );
        }
    }
    if let Some(ms) = fig.attach_ms {
        judge(
            &mut rows,
            "attach ≤ 100 ms",
            format!("{ms:.0} ms"),
            ms <= 100.0,
        );
    }
    per_event_programs(&mut rows, fig);
    if let (Some(sampled), Some(exact)) = (
        fig.added(Tracer::LavtraceSampled(SAMPLE)),
        fig.added(Tracer::Lavtrace("syscalls")),
    ) {
        judge(
            &mut rows,
            &format!("syscalls family: a sampled mode measured (`--syscalls-sample {SAMPLE}`)"),
            format!(
                "{sampled:.0} ns added per syscall sampled, {exact:.0} exact. Decision: the default set keeps \
                 the exact family (sampled figures are estimates, marked SAMPLED); the sampled mode is for a \
                 host whose other processes must not pay the slow path all the time"
            ),
            true,
        );
    }
    writeln!(md, "## 8. Targets\n")?;
    writeln!(
        md,
        "Each target of the performance issue, judged on the figures above (this run).\n"
    )?;
    writeln!(
        md,
        "| target | figure | verdict | why, where missed (measured) |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    for (target, figure, holds, why) in rows {
        let verdict = if holds { "holds" } else { "missed" };
        writeln!(md, "| {target} | {figure} | {verdict} | {why} |")?;
    }
    writeln!(md)?;
    Ok(())
}
