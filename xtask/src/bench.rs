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
}

pub fn run(opts: &Options) -> Result<()> {
    crate::setup::debian_packages(PACKAGES)?;
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
    spin(&mut md, &lavtrace, opts)?;
    let own = broker(&mut md, &lavtrace, opts)?;
    pipeline(&mut md, &lavtrace, opts)?;
    itself(&mut md, &own)?;
    std::fs::write(&opts.output, md)
        .with_context(|| format!("writing {}", opts.output.display()))?;
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
        "Written by `cargo xtask bench --runs {}` (this file is its output; do not edit by hand).\n",
        opts.runs
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
        git_head()
    )?;
    Ok(())
}

fn git_head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A process of `lavtrace-workload`, stopped at its `ready` line.
struct Workload {
    started: start::Started,
    pid: u32,
}

impl Workload {
    fn spawn(args: &[&str]) -> Result<Workload> {
        let started = start::spawn(
            Command::new(workload_binary()).args(args),
            Duration::from_secs(30),
        )
        .with_context(|| format!("starting lavtrace-workload {}", args.join(" ")))?;
        Ok(Workload {
            pid: started.pid(),
            started,
        })
    }

    /// Sends go, returns the JSON of the line starting with `prefix`.
    fn go(&mut self, prefix: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.started.go()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .started
                .next_line(left)
                .map_err(|e| anyhow::anyhow!("workload result: {e:?}"))?;
            if let Some(json) = line.strip_prefix(prefix) {
                let _ = self.started.child().wait();
                return Ok(serde_json::from_str(json)?);
            }
        }
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
const ALL_AMQP: &str = "syscalls,fsync,mmap,tcp,amqp";

/// One way of tracing a process (or none).
#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    None,
    Lavtrace(&'static str),
    /// lavtrace with `--amqp-port PORT` (the broker's AMQP port, for the amqp family).
    LavtraceAmqp(&'static str, u16),
    /// lavtrace attached to another (idle) process: the tax its hooks put on everyone.
    LavtraceOther(&'static str),
    /// lavtrace without the kernel's BPF run-time statistics (`--no-bpf-stats`): what holding
    /// them costs (every BPF program on the host reads the clock twice per run).
    LavtraceNoStats(&'static str),
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
            Tracer::LavtraceNoStats(p) => format!("lavtrace --probes {p} --no-bpf-stats"),
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
            Tracer::LavtraceNoStats(p) => v(&[
                &lt,
                "trace",
                "--pid",
                &pid.to_string(),
                "--probes",
                p,
                "--no-bpf-stats",
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
            | Tracer::LavtraceOther(_)
            | Tracer::LavtraceNoStats(_) => {
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
    out: mpsc::Receiver<String>,
    _err: mpsc::Receiver<String>,
}

/// What a tracer process itself used.
struct Own {
    cpu: Duration,
    max_rss_kib: u64,
}

impl Running {
    fn stop(self) -> Result<Own> {
        stop_child(self.child)
    }

    /// Stops the tracer; returns its usage and the rest of its stdout.
    fn stop_with_output(self) -> Result<(Own, Vec<String>)> {
        let Running { child, out, .. } = self;
        let own = stop_child(child)?;
        Ok((own, out.iter().collect()))
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
    Own {
        cpu: cpu_time(pid),
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

/// utime + stime of a process, all threads.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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
fn spin(md: &mut String, lavtrace: &Path, opts: &Options) -> Result<()> {
    let tracers = [
        Tracer::None,
        Tracer::Lavtrace("floor-tracepoint"),
        Tracer::Lavtrace("floor"),
        Tracer::Lavtrace("syscalls"),
        Tracer::Lavtrace(ALL),
        Tracer::LavtraceNoStats("syscalls"),
        Tracer::LavtraceOther("syscalls"),
        // The bystander rows: what each other family costs a process it does not trace.
        Tracer::LavtraceOther("fsync"),
        Tracer::LavtraceOther("mmap"),
        Tracer::LavtraceOther("tcp"),
        Tracer::LavtraceOther("fsync,mmap,tcp"),
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
         kernel's BPF run-time statistics (host-wide while held: every BPF program reads the clock twice per run). \
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
    }
    writeln!(md)?;
    let lt: Vec<f64> = attach[3].clone();
    if !lt.is_empty() {
        let (med, min, max) = median_min_max(lt);
        writeln!(
            md,
            "lavtrace attach time (spawn to `attached` line): median {med:.0} ms ({min:.0}–{max:.0}).\n"
        )?;
    }
    Ok(())
}

/// Scenario 3: the event pipeline (ring buffer to userspace) at increasing rates.
fn pipeline(md: &mut String, lavtrace: &Path, opts: &Options) -> Result<()> {
    const RATES: [u64; 5] = [10_000, 100_000, 300_000, 1_000_000, 3_000_000];
    const SECONDS: &str = "2";
    struct Row {
        produced: Vec<f64>,
        received: Vec<f64>,
        lost: Vec<f64>,
        achieved: Vec<f64>,
        cpu_pct: Vec<f64>,
    }
    let mut rows: Vec<Row> = RATES
        .iter()
        .map(|_| Row {
            produced: vec![],
            received: vec![],
            lost: vec![],
            achieved: vec![],
            cpu_pct: vec![],
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
        }
    }
    writeln!(md, "## 3. Event pipeline\n")?;
    writeln!(
        md,
        "`lavtrace-workload pace --rate R --seconds {SECONDS}`: msync(MS_ASYNC) on one shared page at R calls/s \
         (one thread, paced per millisecond), traced by `lavtrace trace --pid PID --probes fsync --format json`: \
         one ring-buffer event per call. *received* is the summary's msync count, *lost* its \
         `lost_events.fsync`; received + lost = produced when nothing is dropped silently. \
         *achieved* is the rate the traced producer really reached.\n"
    )?;
    writeln!(
        md,
        "| target rate/s | achieved/s | produced | received | lost | lavtrace CPU % |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|")?;
    for (rate, r) in RATES.iter().zip(&rows) {
        let m = |v: &Vec<f64>| median_min_max(v.clone()).0;
        writeln!(
            md,
            "| {rate} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            m(&r.achieved),
            m(&r.produced),
            m(&r.received),
            m(&r.lost),
            m(&r.cpu_pct)
        )?;
    }
    writeln!(md, "\nMedians over {} runs per rate.\n", opts.runs)?;
    Ok(())
}

/// Scenario 2: RabbitMQ with a real client, persistent messages with confirms.
/// Returns lavtrace's own (CPU s, peak RSS MiB) per run of the `--probes syscalls` row.
fn broker(md: &mut String, lavtrace: &Path, opts: &Options) -> Result<Vec<(f64, f64)>> {
    let port = 25000 + (std::process::id() % 5000) as u16;
    let tracers = [
        Tracer::None,
        Tracer::Lavtrace("syscalls"),
        Tracer::Lavtrace("fsync"),
        Tracer::Lavtrace("mmap"),
        Tracer::Lavtrace("tcp"),
        // Every frame of the confirm load walked in the kernel: its cost per parsed write.
        Tracer::LavtraceAmqp("amqp", port),
        Tracer::LavtraceAmqp(ALL_AMQP, port),
        Tracer::Bpftrace,
        Tracer::PerfTrace,
        Tracer::Strace,
    ];
    let dir = tempdir()?;
    let mut launcher = Command::new(workspace_root().join("scripts/rabbitmq-local"))
        .arg(&dir)
        .arg(port.to_string())
        .arg((port + 20000).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting RabbitMQ")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let broker_pid: u32 = loop {
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
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let messages = opts.broker_messages.to_string();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut own: Vec<Vec<(f64, f64)>> = vec![Vec::new(); tracers.len()];
    let result = (|| -> Result<()> {
        for run in 0..opts.runs {
            for (i, &tracer) in tracers.iter().enumerate() {
                eprintln!(
                    "xtask bench: broker run {}/{} {}",
                    run + 1,
                    opts.runs,
                    tracer.label()
                );
                let mut wl = Workload::spawn(&[
                    "amqp",
                    "--url",
                    &url,
                    "--connections",
                    "2",
                    "--messages",
                    &messages,
                    "--size",
                    "1024",
                ])?;
                let running = tracer.attach(lavtrace, broker_pid)?;
                let cpu0 = cpu_time(broker_pid);
                let stats = wl.go("stats ", Duration::from_secs(900))?;
                let busy = cpu_time(broker_pid) - cpu0;
                if let Some(r) = running {
                    let o = r.stop()?;
                    own[i].push((o.cpu.as_secs_f64(), o.max_rss_kib as f64 / 1024.0));
                }
                let secs = stats["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
                rates[i].push(stats["confirmed"].as_f64().unwrap_or(0.0) / secs);
                cpu[i].push(busy.as_secs_f64() / secs * 100.0);
            }
        }
        Ok(())
    })();
    // SAFETY: plain kill(2).
    unsafe { libc::kill(broker_pid as i32, libc::SIGTERM) };
    let _ = launcher.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result?;

    let base = median_min_max(rates[0].clone()).0;
    writeln!(md, "## 2. Broker under load\n")?;
    writeln!(
        md,
        "RabbitMQ (Debian's package, `scripts/rabbitmq-local`) on 127.0.0.1; `lavtrace-workload amqp --connections 2 \
         --messages {messages} --size 1024 --confirm-window 100`: persistent messages published with up to 100 \
         confirms outstanding, then consumed with acks. Confirmed messages per second of the exchange, and the broker's CPU (all threads) \
         during it.\n"
    )?;
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
    }
    writeln!(md)?;
    Ok(own.get(1).cloned().unwrap_or_default())
}

/// Scenario 4: lavtrace's own cost while tracing the broker.
fn itself(md: &mut String, own: &[(f64, f64)]) -> Result<()> {
    if own.is_empty() {
        return Ok(());
    }
    let (cpu_med, _, _) = median_min_max(own.iter().map(|x| x.0).collect());
    let (rss_med, _, rss_max) = median_min_max(own.iter().map(|x| x.1).collect());
    writeln!(
        md,
        "## 4. lavtrace itself\n\n\
         While tracing the broker scenario with `--probes syscalls`: CPU time of the lavtrace \
         process per run, median {cpu_med:.2} s; peak RSS (VmHWM) median {rss_med:.1} MiB, max \
         {rss_max:.1} MiB. Attach time is under scenario 1.\n"
    )?;
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
