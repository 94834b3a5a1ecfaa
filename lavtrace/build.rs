//! Builds the kernel programs (`lavtrace-ebpf`, target bpfel-unknown-none, nightly + bpf-linker)
//! into OUT_DIR, where `src/ebpf.rs` embeds the object with `include_bytes_aligned!`.
//!
//! This runs the inner cargo the way aya-build 0.2.0's `build_ebpf` does (same arguments,
//! flags and target dir), but keeps its output in `target/ebpf-build.log` instead of echoing
//! every line as a `warning: lavtrace@…` (hundreds per clean build). Only the eBPF crate's own
//! compiler warnings are passed on; on failure the end of the log is shown.

use std::{
    env,
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Message, diagnostic::DiagnosticLevel};

const EBPF: &str = "lavtrace-ebpf";
const SETUP_NOTE: &str = "`cargo xtask setup` installs what they need";
/// Lines of the log shown with a failure: enough for the first error and its context.
const TAIL_LINES: usize = 60;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=AYA_BUILD_SKIP is set; skipping the eBPF build");
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF)
        .ok_or_else(|| anyhow!("{EBPF} package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The binary targets are not covered by the build-dependency on the library.
    println!("cargo:rerun-if-changed={root_dir}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endian {other:?}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".to_string()
    } else {
        arch
    };
    let log_path = metadata
        .target_directory
        .as_std_path()
        .join("ebpf-build.log");
    let mut log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        EBPF,
        "--bins",
    ])
    .args(["--message-format=json", "--release", "--target", target])
    .args(["-Z", "build-std=core", "--features", ""])
    .arg("--target-dir")
    .arg(out_dir.join("aya-build/target").join(EBPF))
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    )
    // The outer build's compiler is stable; the inner one must be rustup's nightly.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    writeln!(log, "{cmd:?}")?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?}; {SETUP_NOTE}"))?;
    let stderr = child.stderr.take().context("inner cargo stderr")?;
    let stderr = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let mut executables = Vec::new();
    let stdout = child.stdout.take().context("inner cargo stdout")?;
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("the inner cargo's JSON stream")? {
            Message::CompilerArtifact(a) => {
                if let Some(exe) = a.executable {
                    executables.push((a.target.name, exe.into_std_path_buf()));
                }
            }
            Message::CompilerMessage(m) => {
                let rendered = m.message.rendered.unwrap_or_default();
                log.write_all(rendered.as_bytes())?;
                let ours = m.package_id.repr.contains(EBPF);
                if ours && m.message.level == DiagnosticLevel::Warning {
                    for line in rendered.lines() {
                        println!("cargo:warning={line}");
                    }
                }
            }
            Message::TextLine(line) => writeln!(log, "{line}")?,
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the inner cargo")?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("reading the inner cargo's stderr failed"))?;
    for line in &stderr {
        writeln!(log, "{line}")?;
    }
    if !status.success() {
        let tail = tail(&log_path);
        bail!(
            "building the eBPF programs failed ({status}); {SETUP_NOTE}.\n\
             Last lines of {}:\n{tail}",
            log_path.display()
        );
    }
    for (name, exe) in executables {
        let dst = out_dir.join(name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("copying {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}
