//! `cargo xtask vm-test`: the eBPF integration tests inside Debian's 5.10, 6.1 and 6.12 kernels
//! under qemu, because this host's kernel has no kprobes and every kernel differs in what it
//! lets a tracer attach to. Host tools come from Debian (installed when missing), kernels from
//! Debian's archive (cached, see `kernels`), the root file system is an initramfs built from
//! the host's own build (see `initramfs`), and each boot's verdict is a marker line (`qemu`).

mod initramfs;
mod kernels;
mod qemu;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::{Message, TargetKind};

use crate::{
    setup::{output, status},
    workspace_root,
};

/// Prefix of the lines the guest's `/init` writes for the host to read.
const MARKER: &str = "LAVTRACE-VM:";
const BUSYBOX: &str = "/bin/busybox";

/// Debian packages the matrix needs on the host, with a file each provides.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "binutils"];

/// The recorder test that needs a disk whose fsync takes time (the host's).
const GUEST_SKIPS_SLOW_FSYNC: &str = "one_slow_fsync_gives_one_dump";
/// `tests/sched.rs`'s D-state tests: their blocker fsyncs a file, which on the guest's RAM root
/// never waits in D.
const GUEST_SKIPS_D_STATE: &str = "blocked_in_d";
/// `tests/amqp.rs`'s RabbitMQ test: the guests have no RabbitMQ (the broker-shaped workload's
/// test runs there, with the kprobe set auto picks).
const GUEST_SKIPS_RABBITMQ: &str = "rabbitmq";

/// The limits test compares with `du -sx --block-size=1`, which busybox's du does not have
/// (the figures are /proc and statvfs, the same on every kernel).
const GUEST_SKIPS_LIMITS: &str = "limits_equal_proc_and_warn_at_eighty_percent";

/// The fallback test builds its static target with the host's `cc -static`; the guest has
/// no C compiler (the uprobe and tracepoint exact tests run there).
const GUEST_SKIPS_STATIC_TARGET: &str =
    "a_static_target_falls_back_to_the_tracepoints_and_stays_exact";

/// `tests/gc.rs`'s real-GC tests build their programs with the host's `cc` + libgc and
/// `crystal`; the guest has none of them (the Boehm-shaped workload test, the same signals,
/// runs there). `--skip` matches substrings: both tests end so.
const GUEST_SKIPS_REAL_GC: &str = "every_collection_is_one_pause";

/// The Crystal AMQPS server of `tests/amqp.rs` is built with the host's `crystal` and the
/// `openssl` command makes its certificate; the guest has neither (the Rust AMQPS workload's
/// test, the same SSL probes, runs there).
const GUEST_SKIPS_CRYSTAL_AMQPS: &str = "a_crystal_amqps_server";

/// 20,000 threads started one after the other: a one-vCPU TCG guest takes longer than the
/// workload's deadline to start them (the host runs it).
const GUEST_SKIPS_THREAD_CHURN: &str =
    "thread_churn_keeps_every_count_and_reports_a_full_thread_table";

/// The exact-transitions churn test: on 6.1 with kprobes, 4 of 2,000 FIN_WAIT1->FIN_WAIT2
/// transitions once went missing without being counted as lost. The likely mechanism: every
/// bpf() map operation of lavtrace holds the CPU's `bpf_prog_active`, and a lavtrace preempted
/// inside one (a one-vCPU TCG guest preempts often) makes the kernel skip kprobe programs on
/// that CPU, uncounted before 6.7. lavtrace now counts such a gap as lost (a transition that
/// leaves a state the last one did not enter) and writes its maps less often, but the skip
/// itself can still happen there, so the guests leave this test to the host. Opened, closed
/// and the connect/accept transitions stay checked there by the metrics churn test. The
/// substring skips both churn tests of `tests/tcp.rs`, the exact one within one interval too.
const GUEST_SKIPS_TCP_CHURN: &str = "churn";

/// Test binaries the guests do not run: `cli` exercises the CLI with host tools (a real
/// /bin/sleep, unprivileged runs) and loads no eBPF; `e2e_rabbitmq` needs a RabbitMQ
/// installation (Erlang and all), which the minimal guest does not carry. `exposition` runs
/// the host's promtool and prometheus, and `bundle` the host's Chromium and python3 targets,
/// which the guest does not carry either. `misuse` runs host programs too.
const SKIPPED_TESTS: &[&str] = &["cli", "e2e_rabbitmq", "exposition", "bundle", "misuse"];

#[derive(clap::Args)]
pub struct Opts {
    /// Kernels to boot (default: all of 5.10, 6.1, 6.12). Repeatable.
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// Ask the archive for the newest package of each kernel line instead of the cached one.
    #[arg(long)]
    refresh: bool,
    /// Virtual CPUs per guest.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Seconds one boot may take, tests included, before it is killed and failed.
    #[arg(long, default_value_t = 1500)]
    boot_timeout: u64,
    /// Seconds one test binary may run inside the guest.
    #[arg(long, default_value_t = 900)]
    test_timeout: u64,
    /// Run only this test binary of lavtrace/tests (e.g. `metrics`), after `check`.
    /// Repeatable; default: every one the guests can run.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
}

pub fn run(opts: Opts) -> Result<()> {
    let started = Instant::now();
    let specs = if opts.kernels.is_empty() {
        kernels::MATRIX.iter().collect()
    } else {
        opts.kernels
            .iter()
            .map(|k| kernels::Spec::find(k))
            .collect::<Result<Vec<_>>>()?
    };
    host_packages()?;
    let build = build_tests()?.only(&opts.tests)?;
    let kernels = kernels::get(&specs, opts.refresh)?;

    let runs = guest_runs(&build, opts.test_timeout);
    let mut binaries = vec![build.lavtrace.clone(), build.workload.clone()];
    binaries.extend(build.tests.iter().map(|(_, p)| p.clone()));
    let dir = workspace_root().join("target/vm");
    let modules: Vec<_> = kernels.iter().map(|k| k.modules.clone()).collect();
    let initrd = initramfs::build(&dir, &binaries, &modules, &runs)?;
    let size = std::fs::metadata(&initrd).map_or(0, |m| m.len());
    eprintln!(
        "xtask vm: initramfs {} ({} MiB); tests: {}",
        initrd.display(),
        size >> 20,
        build
            .tests
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut results = Vec::new();
    for kernel in &kernels {
        eprintln!("xtask vm: booting {} ({})", kernel.name, kernel.package);
        let outcome = qemu::boot(
            kernel,
            &initrd,
            opts.smp,
            Duration::from_secs(opts.boot_timeout),
        )?;
        save_check(&dir, kernel.name, &outcome)?;
        results.push(outcome);
    }
    summary(&kernels, &results, started.elapsed());
    let failed: Vec<_> = kernels
        .iter()
        .zip(&results)
        .filter(|(_, o)| !o.passed())
        .map(|(k, _)| k.name)
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

/// `target/vm/check-<kernel>.txt`: what `lavtrace check` printed in that guest, under a line
/// naming the commit and the release, for `cargo xtask bench`'s table of hooks per kernel.
fn save_check(dir: &std::path::Path, kernel: &str, outcome: &qemu::Outcome) -> Result<()> {
    if outcome.check_text.is_empty() {
        return Ok(());
    }
    let path = check_file(dir, kernel);
    let text = format!(
        "# commit {} kernel {}\n{}\n",
        crate::git_head(),
        outcome.release,
        outcome.check_text.join("\n")
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The kernels of the matrix, by name.
pub fn matrix_names() -> impl Iterator<Item = &'static str> {
    kernels::MATRIX.iter().map(|s| s.name)
}

/// Where `save_check` puts a kernel's `lavtrace check` output.
pub fn check_file(dir: &std::path::Path, kernel: &str) -> PathBuf {
    dir.join(format!("check-{kernel}.txt"))
}

/// What the guest gets from the host's build.
struct Build {
    lavtrace: PathBuf,
    /// `lavtrace-workload`: the tests find it next to `lavtrace`, so it goes to the same path.
    workload: PathBuf,
    /// Integration test binaries that load eBPF: (target name, executable).
    tests: Vec<(String, PathBuf)>,
}

impl Build {
    /// Keeps the test binaries named in `names` (all when empty); a name that is not one of
    /// them is an error, not a run that tests nothing.
    fn only(mut self, names: &[String]) -> Result<Build> {
        if names.is_empty() {
            return Ok(self);
        }
        for name in names {
            if SKIPPED_TESTS.contains(&name.as_str()) {
                bail!("--test {name}: the guests do not run it (SKIPPED_TESTS)");
            }
            if !self.tests.iter().any(|(n, _)| n == name) {
                let known: Vec<&str> = self.tests.iter().map(|(n, _)| n.as_str()).collect();
                bail!(
                    "--test {name}: no such test binary (have: {})",
                    known.join(", ")
                );
            }
        }
        self.tests.retain(|(n, _)| names.contains(n));
        Ok(self)
    }
}

/// Builds exactly what `cargo xtask test` builds (so nothing is rebuilt twice) and picks out
/// the lavtrace binary and every integration test of the lavtrace package: new families'
/// test files are found without a change here.
fn build_tests() -> Result<Build> {
    crate::setup::run(crate::setup::Job::Run)?;
    let args = [
        "test",
        "--workspace",
        "--exclude",
        "lavtrace-ebpf",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    eprintln!("xtask vm: cargo {}", args.join(" "));
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test --no-run")?;
    let manifest = workspace_root().join("lavtrace/Cargo.toml");
    let workload_manifest = workspace_root().join("lavtrace-workload/Cargo.toml");
    let mut lavtrace = None;
    let mut workload = None;
    let mut tests = Vec::new();
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    for message in Message::parse_stream(stdout) {
        let Message::CompilerArtifact(a) = message.context("reading cargo's messages")? else {
            continue;
        };
        let Some(exe) = a.executable else { continue };
        let is_bin = a.target.kind.contains(&TargetKind::Bin) && !a.profile.test;
        // Built (not as a test) because lavtrace-workload has an integration test of its own.
        if a.manifest_path.as_std_path() == workload_manifest
            && is_bin
            && a.target.name == "lavtrace-workload"
        {
            workload = Some(exe.into_std_path_buf());
            continue;
        }
        if a.manifest_path.as_std_path() != manifest {
            continue;
        }
        if is_bin && a.target.name == "lavtrace" {
            lavtrace = Some(exe.into_std_path_buf());
        } else if a.target.kind.contains(&TargetKind::Test)
            && !SKIPPED_TESTS.contains(&a.target.name.as_str())
        {
            tests.push((a.target.name.clone(), exe.into_std_path_buf()));
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("cargo test --no-run failed ({st})");
    }
    tests.sort();
    Ok(Build {
        lavtrace: lavtrace.context("cargo built no lavtrace binary")?,
        workload: workload.context("cargo built no lavtrace-workload binary")?,
        tests,
    })
}

/// `lavtrace check` first (it lists the hooks this kernel gets), then every test binary; the
/// TCP tests once more with kprobes forced, the hook the host cannot test.
fn guest_runs(build: &Build, timeout: u64) -> Vec<initramfs::Run> {
    let mut runs = vec![initramfs::Run {
        label: "check".into(),
        env: vec![],
        program: build.lavtrace.clone(),
        args: vec!["check".into()],
        timeout: 300,
    }];
    let test = |label: String, env: Vec<(String, String)>, program: &PathBuf| initramfs::Run {
        label,
        env,
        program: program.clone(),
        // One vCPU, and the tests time real work: running them side by side only adds noise.
        args: vec!["--test-threads=1".into()],
        timeout,
    };
    for (name, program) in &build.tests {
        let mut run = test(name.clone(), vec![], program);
        // The guest's root is in RAM: no fsync there is slow, so the test built on one slow
        // fsync among fast ones has nothing to find. The recorder's other tests run.
        if name == "recorder" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_SLOW_FSYNC.into()]);
        }
        if name == "tcp" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_TCP_CHURN.into()]);
        }
        if name == "lavinmq" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_LIMITS.into()]);
        }
        if name == "syscalls" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_THREAD_CHURN.into()]);
        }
        if name == "fsync" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_STATIC_TARGET.into()]);
        }
        if name == "sched" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_D_STATE.into()]);
        }
        if name == "gc" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_REAL_GC.into()]);
        }
        if name == "amqp" {
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_RABBITMQ.into()]);
            run.args
                .extend(["--skip".into(), GUEST_SKIPS_CRYSTAL_AMQPS.into()]);
        }
        runs.push(run.clone());
        if name == "tcp" {
            runs.push(initramfs::Run {
                label: "tcp(kprobe)".into(),
                env: vec![("LAVTRACE_TCP_HOOKS".into(), "kprobe".into())],
                ..run
            });
        }
    }
    runs
}

/// Installs the Debian packages the matrix needs when one is missing.
fn host_packages() -> Result<()> {
    crate::setup::debian_packages(HOST_PACKAGES)?;
    crate::setup::debian_packages(&crate::setup::WORKLOAD_BUILD)
}

fn summary(kernels: &[kernels::Kernel], results: &[qemu::Outcome], total: Duration) {
    println!();
    println!("══ kernel matrix ══");
    println!(
        "{:<6} {:<28} {:<6} {:>6} {:>7}  runs",
        "KERNEL", "RELEASE", "RESULT", "TESTS", "WALL"
    );
    for (k, o) in kernels.iter().zip(results) {
        let runs: Vec<String> = o
            .runs
            .iter()
            .map(|(label, rc, secs)| match (rc, secs) {
                (Some(0), Some(s)) => format!("{label} ok {s}s"),
                (Some(rc), _) => format!("{label} FAILED rc={rc}"),
                (None, _) => format!("{label} UNFINISHED"),
            })
            .collect();
        println!(
            "{:<6} {:<28} {:<6} {:>6} {:>6}s  {}",
            k.name,
            if o.release.is_empty() {
                "?"
            } else {
                &o.release
            },
            if o.passed() { "pass" } else { "FAIL" },
            format!("{}/{}", o.tests_passed, o.tests_passed + o.tests_failed),
            o.wall.as_secs(),
            runs.join(", ")
        );
        if let Some(problem) = &o.problem {
            println!("       {problem}");
        }
    }
    for (k, o) in kernels.iter().zip(results) {
        println!("hooks on {} (lavtrace check):", k.name);
        for line in &o.check {
            println!("  {line}");
        }
    }
    let passed = results.iter().filter(|o| o.passed()).count();
    println!("matrix wall time {}s", total.as_secs());
    println!(
        "vm-test: {passed} passed, {} failed",
        results.len() - passed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_runs_twice_the_second_time_with_kprobes_forced() {
        let build = Build {
            lavtrace: "/w/target/debug/lavtrace".into(),
            workload: "/w/target/debug/lavtrace-workload".into(),
            tests: vec![
                ("syscalls".into(), "/w/target/debug/deps/syscalls-1".into()),
                ("tcp".into(), "/w/target/debug/deps/tcp-2".into()),
            ],
        };
        let runs = guest_runs(&build, 60);
        let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["check", "syscalls", "tcp", "tcp(kprobe)"]);
        assert_eq!(runs[0].args, ["check"]);
        assert!(runs[2].env.is_empty());
        assert_eq!(
            runs[3].env,
            [("LAVTRACE_TCP_HOOKS".to_string(), "kprobe".to_string())]
        );
        assert_eq!(runs[3].program, runs[2].program);
        for tcp in &runs[2..] {
            assert_eq!(tcp.args[1..], ["--skip", GUEST_SKIPS_TCP_CHURN]);
        }
    }

    #[test]
    fn test_filter_keeps_the_named_binaries_and_refuses_unknown_or_skipped_ones() {
        let build = || Build {
            lavtrace: "/w/lavtrace".into(),
            workload: "/w/lavtrace-workload".into(),
            tests: ["metrics", "syscalls", "tcp"]
                .iter()
                .map(|n| (n.to_string(), format!("/w/{n}").into()))
                .collect(),
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let kept = build().only(&names(&["tcp", "metrics"])).unwrap();
        let kept: Vec<&str> = kept.tests.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept, ["metrics", "tcp"]);
        assert_eq!(build().only(&[]).unwrap().tests.len(), 3);
        let err = build().only(&names(&["tpc"])).err().unwrap().to_string();
        assert!(err.contains("no such test binary"), "{err}");
        let err = build().only(&names(&["cli"])).err().unwrap().to_string();
        assert!(err.contains("do not run it"), "{err}");
    }
}
