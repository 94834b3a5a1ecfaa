//! `cargo xtask setup`: what a fresh machine needs for a job, and nothing more: building and
//! running lavtrace needs no broker, so only the test job installs the test servers.
//! Each step checks first and does nothing when already done.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The bpf-linker release line that works with aya 0.14's object format.
const BPF_LINKER_VERSION: &str = "0.13";

/// Debian packages the tests need: a real AMQP broker for the end-to-end test, Prometheus
/// (and its promtool) for the exposition and dashboard tests, and a real browser to render the
/// bundle's report.html (tests/bundle.rs), and libgc (Boehm GC) with a C compiler and Crystal
/// (on libgc, LavinMQ's runtime) for the real-GC programs tests/gc.rs builds and its AMQPS
/// server tests/amqp.rs builds, whose certificate the `openssl` command makes; and what the
/// workload builds with (`WORKLOAD_BUILD`).
const TEST_PACKAGES: &[&str] = &[
    WORKLOAD_BUILD[0],
    WORKLOAD_BUILD[1],
    "rabbitmq-server",
    "prometheus",
    "chromium",
    "libgc-dev",
    "gcc",
    "crystal",
    "openssl",
];

/// What `lavtrace-workload` builds with: OpenSSL's headers and pkg-config, for its AMQPS
/// server (openssl-sys links the system's libssl, as LavinMQ does). Every job that builds the
/// workload (test, bench, vm-test) installs them.
pub const WORKLOAD_BUILD: [&str; 2] = ["libssl-dev", "pkg-config"];

/// What the machine is being set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Build and run lavtrace (also `dist`, `lint`, `bench`, which install their own extras).
    Run,
    /// Everything `Run` needs, plus the servers the tests talk to.
    Test,
}

/// The steps of a job, in order, as `cargo xtask setup` prints them.
pub fn steps(job: Job) -> Vec<&'static str> {
    let mut steps = vec!["nightly rust-src", "bpf-linker", "tracefs"];
    if job == Job::Test {
        steps.push(
            "test servers and build packages (Debian: rabbitmq-server prometheus libssl-dev ...)",
        );
    }
    steps
}

pub fn run(job: Job) -> Result<()> {
    eprintln!("xtask setup ({job:?}): {}", steps(job).join(", "));
    nightly_rust_src()?;
    bpf_linker()?;
    tracefs()?;
    if job == Job::Test {
        debian_packages(TEST_PACKAGES)?;
    }
    Ok(())
}

/// Installs the missing ones from Debian (the package registry every machine here reaches).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    status(Command::new("apt-get").args(["update", "-qq", "-o", "DPkg::Lock::Timeout=600"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// The eBPF crate is built with `-Z build-std=core`, which needs the nightly sources.
fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker, built against the very LLVM that nightly rustc uses, so the bitcode matches.
fn bpf_linker() -> Result<()> {
    // `rustup run nightly` puts the toolchain's lib/ (libLLVM) on the library path.
    if let Ok(version) =
        output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
    {
        if version.contains(&format!(" {BPF_LINKER_VERSION}.")) {
            return Ok(());
        }
        eprintln!("xtask setup: replacing {}", version.trim());
    }
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let llvm_major = llvm_major(&output(Command::new("rustc").args(["+nightly", "-vV"]))?)?;
    let libllvm = find_libllvm(&sysroot.join("lib"), llvm_major)?;
    // llvm-sys wants LLVM_PREFIX/lib/libLLVM.so; the toolchain ships only the versioned soname.
    let prefix = crate::workspace_root().join("target/xtask/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env("LD_LIBRARY_PATH", &lib),
    )?;
    output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
        .context("bpf-linker was installed but does not run")?;
    Ok(())
}

/// `LLVM version: 22.1.2` in `rustc -vV` → 22.
fn llvm_major(rustc_vv: &str) -> Result<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.trim().parse().ok())
        .context("nightly rustc does not say its LLVM version")
}

/// The real shared library (not the small linker script next to it): `libLLVM.so.<major>.*`.
fn find_libllvm(dir: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}");
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// aya attaches tracepoints through tracefs.
fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    status(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
        .context("mounting tracefs (needs root)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_installs_no_broker() {
        let run = steps(Job::Run).join(" ");
        assert!(!run.contains("rabbitmq"), "{run}");
        assert!(steps(Job::Test).join(" ").contains("rabbitmq-server"));
        assert!(steps(Job::Test).starts_with(&steps(Job::Run)));
    }

    #[test]
    fn reads_the_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv).unwrap(), 22);
        assert!(llvm_major("rustc 1.0").is_err());
    }
}
