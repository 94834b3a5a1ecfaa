//! Command-line interface. The `trace` flags are a contract scripts rely on: extend, never break.

use std::{sync::LazyLock, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    family::{self, Entry, Options},
    storage,
    syscalls::HookChoice,
    tcp::hooks::Mode,
};

#[derive(Debug, Parser)]
#[command(
    name = "lavtrace",
    version,
    about = "Live eBPF tracer for a running LavinMQ broker",
    long_about = "Live eBPF tracer for a running LavinMQ broker: what strace, ss and lsof would \
                  show, aggregated in the kernel at a cost the broker does not notice.\n\n\
                  Needs root (or CAP_BPF + CAP_PERFMON) and tracefs.",
    after_help = "Exit codes: 0 ok, 1 runtime error, 2 bad usage, 3 target not found, \
                  4 not permitted, 5 kernel lacks a needed feature, 6 --metrics address unusable, \
                  7 a helper binary missing, 8 target cannot be traced (lavtrace itself, a \
                  kernel thread, a zombie)."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and report what it does, interval by interval.
    Trace(TraceArgs),
    /// Run the built-in broker-shaped workload as a child and trace it (no broker needed).
    Demo(DemoArgs),
    /// Say which hooks this kernel supports for each probe family, and why not; with
    /// --pid/--comm, also describe that process (threads, ports, connections, mappings).
    Check(CheckArgs),
    /// Collect a bug report in one .tar.gz: report.md (the issue template), the SIGUSR1
    /// server-state dump, logs, redacted config, resource checks, a trace of every probe
    /// family and report.html.
    Bundle(BundleArgs),
    /// The demo's workload (started by `demo`; the tests' are `lavtrace-workload`).
    #[command(hide = true)]
    Workload(crate::demo::workload::WorkloadArgs),
    /// Print the man page or a shell's completions (what the package installs).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: Generated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// lavtrace(1), roff.
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Process to trace (all its threads).
    #[arg(short, long, conflicts_with = "comm")]
    pub pid: Option<u32>,

    /// Exact process name to trace (as in /proc/PID/comm). Default: lavinmq.
    #[arg(short, long)]
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Process to describe.
    #[arg(short, long, conflicts_with = "comm")]
    pub pid: Option<u32>,

    /// Exact process name to describe (as in /proc/PID/comm).
    #[arg(short, long)]
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// How long to trace (every probe family).
    #[arg(short, long, default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,

    /// The archive to write; default: lavtrace-bundle-COMM-PID-TIME.tar.gz here.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Time between reports.
    #[arg(short, long, default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: Duration,

    /// Probe families to load, comma-separated (default: all but the opt-in sched and faults).
    #[arg(long, value_delimiter = ',', default_values_t = Probe::all().to_vec())]
    pub probes: Vec<Probe>,

    /// Output format: text tables, or NDJSON (attached, interval..., summary).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Rows per table in text output (JSON always has every row).
    #[arg(long, default_value_t = 20)]
    pub top: usize,

    /// Order of the syscall table.
    #[arg(long, value_enum, default_value_t = SortKey::Count)]
    pub sort: SortKey,

    /// Plain periodic tables even on a terminal (the live view is the default there).
    #[arg(long)]
    pub no_tui: bool,
    /// Hooks of the tcp family: kprobes where the kernel has them (auto), or force a set.
    #[arg(long, value_enum, default_value_t = TcpHooks::Auto)]
    pub tcp_hooks: TcpHooks,
    /// Break the figures down per thread (named from /proc/PID/task/TID/comm): a per-thread
    /// syscall table (counted in the kernel) and durability/mapping rows per thread.
    #[arg(long)]
    pub per_thread: bool,

    /// Hooks of the syscalls family: raw tracepoints where the kernel has them (auto), or the
    /// classic raw_syscalls tracepoints (tests use this to cover the fallback).
    #[arg(long, hide = true, value_enum, default_value_t = SyscallHooks::Auto)]
    pub syscalls_hooks: SyscallHooks,
    /// Attach the syscalls family only ON of every EVERY (e.g. 100ms/1s): every process on the
    /// host pays the syscall slow path only that share of the time, and the syscall table's
    /// counts and times become estimates, scaled and marked SAMPLED. Not with --per-thread
    /// or --metrics.
    #[arg(long, value_name = "ON/EVERY", value_parser = crate::syscalls::sample::parse, conflicts_with_all = ["per_thread", "metrics"])]
    pub syscalls_sample: Option<crate::syscalls::sample::Duty>,
    /// Hooks of the fsync and mmap families: auto (the syscalls tracepoints when the syscalls
    /// family is on, else kprobes on the syscall functions, else uprobes on the target's
    /// glibc for its pid only, else the tracepoints), or force a set (tests cover each).
    #[arg(long, hide = true, value_enum, default_value_t = StorageHooks::Auto)]
    pub storage_hooks: StorageHooks,
    /// Hooks of the sched family: raw tracepoints where BTF gives the task layout (auto), or
    /// the classic sched:* tracepoints (tests use this to cover the fallback).
    #[arg(long, hide = true, value_enum, default_value_t = SyscallHooks::Auto)]
    pub sched_hooks: SyscallHooks,
    /// faults family: time each page fault of the target (kprobe and kretprobe on
    /// handle_mm_fault; every page fault on the host then runs them, so it is off by default).
    #[arg(long)]
    pub fault_time: bool,
    /// More AMQP listening ports of the target (5672 is always one): the amqp family parses
    /// the connections accepted on them. Repeat or comma-separate.
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub amqp_port: Vec<u16>,
    /// More AMQPS (TLS) ports of the target (5671 is always one): their connections are
    /// parsed from the target's SSL_read/SSL_write where it maps a libssl, else counted as
    /// TLS, not parsed.
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub amqps_port: Vec<u16>,
    /// Leave the target's SSL calls unprobed: its AMQPS connections are then counted as TLS,
    /// not parsed. Each SSL_read/SSL_write otherwise traps twice (BENCHMARKS.md, section 9).
    #[arg(long)]
    pub no_ssl_probes: bool,
    /// Hooks of the amqp family: the syscall tracepoints when the syscalls family is on
    /// (auto), else kprobes on the syscall functions where the kernel has them, else uprobes on
    /// the target's glibc; or force a set (tests cover each).
    #[arg(long, hide = true, value_enum, default_value_t = AmqpHooks::Auto)]
    pub amqp_hooks: AmqpHooks,
    /// Print every durability call (fsync family) slower than this as it happens, e.g. 10ms.
    #[arg(long, value_parser = parse_duration)]
    pub slow: Option<Duration>,

    /// Print every GC stop-the-world pause (gc family) at least this long as it ends, e.g. 5ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub slow_gc: Option<Duration>,

    /// The signals the target's GC stops and restarts threads with (gc family): SUSPEND,RESTART
    /// as names or numbers. bdwgc's (and Crystal's) Linux defaults are SIGPWR,SIGXCPU.
    #[arg(long, value_name = "SUSPEND,RESTART", default_value = "SIGPWR,SIGXCPU",
          value_parser = crate::gc::Signals::parse)]
    pub gc_signals: crate::gc::Signals,

    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics: PORT or :PORT (127.0.0.1),
    /// or ADDRESS:PORT (e.g. 0.0.0.0:9464, [::1]:9464).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::addr::parse)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Bytes per event ring (power of two, at least 4096); tests use a tiny ring to force losses.
    #[arg(long, hide = true, value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Leave the kernel's BPF run-time statistics off. They are host-wide: while lavtrace
    /// holds them, every BPF program on the host (not only lavtrace's) reads the clock twice
    /// per run. By default they are on 100ms of every 1s, and the COST line's runs and run
    /// times are estimates scaled from that share (its time per run is measured). Without
    /// them the COST line and the lavtrace_bpf_program_* series have no per-program kernel
    /// figures.
    #[arg(long, conflicts_with = "bpf_stats_full")]
    pub no_bpf_stats: bool,
    /// Hold the kernel's BPF run-time statistics on for the whole trace (exact run counts and
    /// times, at the host-wide price above); `--metrics` implies it.
    #[arg(long)]
    pub bpf_stats_full: bool,
}

impl ReportArgs {
    /// The registry entries of `--probes`.
    pub fn families(&self) -> Vec<&'static Entry> {
        self.probes.iter().map(|p| p.0).collect()
    }

    /// The flags the families read, as their plain options.
    pub fn family_options(&self) -> Options {
        Options {
            per_thread: self.per_thread,
            ring_bytes: self.ring_bytes,
            slow: self.slow,
            gc_slow: self.slow_gc,
            gc_signals: self.gc_signals,
            json: self.format == Format::Json,
            syscalls_hooks: match self.syscalls_hooks {
                SyscallHooks::Auto => HookChoice::Auto,
                SyscallHooks::Tracepoint => HookChoice::Tracepoint,
            },
            syscalls_sample: self.syscalls_sample,
            sched_hooks: match self.sched_hooks {
                SyscallHooks::Auto => crate::sched::HookChoice::Auto,
                SyscallHooks::Tracepoint => crate::sched::HookChoice::Tracepoint,
            },
            tcp_hooks: match self.tcp_hooks {
                TcpHooks::Auto => Mode::Auto,
                TcpHooks::Kprobe => Mode::Kprobe,
                TcpHooks::Tracepoint => Mode::Tracepoint,
            },
            bpf_stats: if self.no_bpf_stats {
                crate::overhead::StatsMode::Off
            } else if self.bpf_stats_full || self.metrics.is_some() {
                // Counters must not carry estimates.
                crate::overhead::StatsMode::Full
            } else {
                crate::overhead::StatsMode::Sampled
            },
            fault_time: self.fault_time,
            storage_hooks: match self.storage_hooks {
                StorageHooks::Auto => storage::hooks::Mode::Auto,
                StorageHooks::Kprobe => storage::hooks::Mode::Kprobe,
                StorageHooks::Uprobe => storage::hooks::Mode::Uprobe,
                StorageHooks::Tracepoint => storage::hooks::Mode::Tracepoint,
            },
            amqp_ports: self.amqp_port.clone(),
            amqps_ports: self.amqps_port.clone(),
            no_ssl_probes: self.no_ssl_probes,
            amqp_hooks: match self.amqp_hooks {
                AmqpHooks::Auto => crate::amqp::hooks::Mode::Auto,
                AmqpHooks::Kprobe => crate::amqp::hooks::Mode::Kprobe,
                AmqpHooks::Uprobe => crate::amqp::hooks::Mode::Uprobe,
                AmqpHooks::Tracepoint => crate::amqp::hooks::Mode::Tracepoint,
            },
            // Set by the session from the families it loads.
            syscall_slow_path: false,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// When the target exits, wait for a new process with its name (a broker restart) and
    /// trace that one too; each instance gets its own summary.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub recorder: RecorderArgs,
}

/// The flight recorder: keep the last records in memory, dump them when something happens.
#[derive(Debug, Clone, Args)]
pub struct RecorderArgs {
    /// Keep this much of the latest interval records (their JSON) in memory, e.g. 10m; with
    /// --dump-on, or SIGUSR2 (or `d` in the live view), they are written as a .tar.gz. The
    /// headers show what is kept against both bounds.
    #[arg(long, value_parser = parse_positive_duration)]
    pub keep: Option<Duration>,
    /// At most this many bytes kept (oldest records dropped first), e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = crate::recorder::parse_bytes, requires = "keep")]
    pub keep_bytes: u64,
    /// Dump when an interval shows this (repeatable): `syncfs>200ms` (also fsync, msync or any
    /// syscall: its max in the interval over the limit), `lost` (lost events), `resets>N`
    /// (more than N connection resets in the tcp section).
    #[arg(long, value_name = "SPEC", value_parser = crate::recorder::trigger::parse, requires = "keep")]
    pub dump_on: Vec<crate::recorder::Trigger>,
    /// Time after a trigger that the dump also holds.
    #[arg(long, default_value = "5s", value_parser = parse_duration, requires = "keep")]
    pub dump_after: Duration,
    /// Minimum time between two dumps; triggers in between are counted in the next one.
    #[arg(long, default_value = "10m", value_parser = parse_duration, requires = "keep")]
    pub dump_every: Duration,
    /// Dumps kept in --dump-dir (the oldest removed).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..), requires = "keep")]
    pub dump_keep: u64,
    /// Where dumps are written (lavtrace-dump-COMM-PID-MILLIS.tar.gz).
    #[arg(long, value_name = "DIR", default_value = ".", requires = "keep")]
    pub dump_dir: std::path::PathBuf,
}

impl RecorderArgs {
    /// The recorder's settings, if `--keep` asks for one.
    pub fn config(&self) -> Option<crate::recorder::Config> {
        Some(crate::recorder::Config {
            keep: self.keep?,
            max_bytes: self.keep_bytes,
            triggers: self.dump_on.clone(),
            after: self.dump_after,
            every: self.dump_every,
            files: usize::try_from(self.dump_keep).unwrap_or(usize::MAX),
            dir: self.dump_dir.clone(),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub report: ReportArgs,

    /// Trace the broker listening at this AMQP URL instead of the built-in workload, while the
    /// built-in AMQP client loads it (e.g. amqp://guest:guest@127.0.0.1:5672/%2f).
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
}

/// A value of `--probes`: a family of the registry (its `ABOUT` is the `--help` line; hidden
/// families are accepted but not listed).
#[derive(Debug, Clone, Copy)]
pub struct Probe(pub &'static Entry);

impl Probe {
    /// The default: every visible family but the opt-in ones (`sched`).
    pub fn all() -> &'static [Probe] {
        static VISIBLE: LazyLock<Vec<Probe>> =
            LazyLock::new(|| family::defaults().map(Probe).collect());
        &VISIBLE
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }
}

impl ValueEnum for Probe {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: LazyLock<Vec<Probe>> =
            LazyLock::new(|| family::REGISTRY.iter().map(Probe).collect());
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(
            clap::builder::PossibleValue::new(self.0.name)
                .help(self.0.about)
                .hide(self.0.hidden),
        )
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SyscallHooks {
    /// Raw tracepoints sys_enter/sys_exit, else raw_syscalls:sys_enter/sys_exit.
    #[default]
    Auto,
    /// raw_syscalls:sys_enter/sys_exit only.
    Tracepoint,
}

/// `--tcp-hooks` (the tcp family's `hooks::Mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum TcpHooks {
    /// kprobes where the kernel has them, tracepoints otherwise.
    #[default]
    Auto,
    /// kprobes only (fails where the kernel has none).
    Kprobe,
    /// Tracepoints only.
    Tracepoint,
}

/// `--amqp-hooks` (`amqp::hooks::Mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum AmqpHooks {
    /// The syscall tracepoints when the syscalls family is on, else kprobes on the syscall
    /// functions, else uprobes on the target's glibc.
    #[default]
    Auto,
    Kprobe,
    Uprobe,
    /// `syscalls:*` tracepoints: every thread of the host on the syscall slow path.
    Tracepoint,
}

/// `--storage-hooks` (the storage families' `hooks::Mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum StorageHooks {
    /// Tracepoints with the syscalls family, else kprobes, else uprobes on the target's
    /// glibc, else tracepoints.
    #[default]
    Auto,
    /// kprobes on the syscall functions only (fails where the kernel has none).
    Kprobe,
    /// uprobes on the target's glibc only (fails where it maps none).
    Uprobe,
    /// syscalls:* tracepoints only.
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Most calls first.
    Count,
    /// Most total time first.
    Time,
    /// Most errors first.
    Errors,
    /// Slowest single call first.
    Max,
}

impl From<SortKey> for family::SortKey {
    fn from(s: SortKey) -> Self {
        match s {
            SortKey::Count => family::SortKey::Count,
            SortKey::Time => family::SortKey::Time,
            SortKey::Errors => family::SortKey::Errors,
            SortKey::Max => family::SortKey::Max,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(n)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_like_operators_type_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_positive_duration("1ms").is_err());
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert!(parse_ring_bytes("5000").is_err());
        assert!(parse_ring_bytes("2048").is_err());
    }

    #[test]
    fn probes_are_comma_separated() {
        let cli = Cli::try_parse_from(["lavtrace", "trace", "--pid", "1", "--probes", "syscalls"])
            .unwrap();
        let Command::Trace(t) = cli.command else {
            panic!("not trace")
        };
        let names: Vec<&str> = t.report.probes.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["syscalls"]);
        // Hidden families are accepted, and the default is every visible one but the opt-in
        // sched.
        let names = |args: &[&str]| -> Vec<&'static str> {
            let Command::Trace(t) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not trace")
            };
            t.report.probes.iter().map(|p| p.name()).collect()
        };
        assert_eq!(
            names(&["lavtrace", "trace", "--probes", "floor,floor-tracepoint"]),
            ["floor", "floor-tracepoint"]
        );
        assert_eq!(
            names(&["lavtrace", "trace"]),
            ["syscalls", "fsync", "mmap", "tcp", "amqp", "gc"]
        );
        let Command::Trace(t) = Cli::try_parse_from([
            "lavtrace",
            "trace",
            "--gc-signals",
            "SIGUSR1,31",
            "--slow-gc",
            "5ms",
        ])
        .unwrap()
        .command
        else {
            panic!("not trace")
        };
        let o = t.report.family_options();
        assert_eq!((o.gc_signals.suspend, o.gc_signals.restart), (10, 31));
        assert_eq!(o.gc_slow, Some(Duration::from_millis(5)));
        assert!(
            Cli::try_parse_from(["lavtrace", "trace", "--probes", "nosuch"]).is_err(),
            "unknown probe must be rejected"
        );
    }
}
