//! `cargo xtask dist`: a release binary with the kernel object embedded, packaged as a .deb
//! with `dpkg-deb --build` (the Debian tool itself; cargo-deb would add a crate build for what
//! is a staged tree and a control file). `cargo xtask package-test` installs it on this
//! machine, runs it, and removes it again.
//!
//! Man page and completions come from `lavtrace generate`, the clap definitions of the very
//! binary being packaged, so they cannot drift from `--help`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::{output, status},
    workspace_root,
};

const NAME: &str = "lavtrace";

/// Where each generated or copied file goes in the package.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/lavtrace"),
    ("zsh", "usr/share/zsh/vendor-completions/_lavtrace"),
    ("fish", "usr/share/fish/vendor_completions.d/lavtrace.fish"),
];
const UNIT: &str = "lib/systemd/system/lavtrace.service";
const DASHBOARD: &str = "usr/share/lavtrace/grafana/lavtrace.json";
const MAN: &str = "usr/share/man/man1/lavtrace.1.gz";

/// Builds the package; returns the path of the .deb.
pub fn run() -> Result<PathBuf> {
    crate::cargo(&["build", "--release", "--package", NAME])?;
    let root = workspace_root();
    let binary = root.join("target/release/lavtrace");
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let stage = root.join(format!("target/dist/{NAME}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }

    install(&binary, &stage.join("usr/bin/lavtrace"), 0o755)?;
    let man = generate(&binary, "man")?;
    write(&stage.join(MAN), &gzip(&man)?, 0o644)?;
    for (shell, path) in COMPLETIONS {
        write(&stage.join(path), &generate(&binary, shell)?, 0o644)?;
    }
    install(
        &root.join("packaging/systemd/lavtrace.service"),
        &stage.join(UNIT),
        0o644,
    )?;
    install(
        &root.join("packaging/grafana/lavtrace.json"),
        &stage.join(DASHBOARD),
        0o644,
    )?;
    write(
        &stage.join("usr/share/doc/lavtrace/copyright"),
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: lavtrace\n\nFiles: *\nLicense: {}\n",
            env!("CARGO_PKG_LICENSE")
        )
        .as_bytes(),
        0o644,
    )?;
    write(
        &stage.join("DEBIAN/control"),
        control(version, &arch, &binary, &stage)?.as_bytes(),
        0o644,
    )?;

    let deb = root.join(format!("target/dist/{NAME}_{version}_{arch}.deb"));
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    eprintln!("xtask dist: {}", deb.display());
    Ok(deb)
}

fn control(version: &str, arch: &str, binary: &Path, stage: &Path) -> Result<String> {
    let glibc = glibc_needed(binary)?;
    let kib = du_kib(stage)?;
    Ok(format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: lavtrace developers <lavtrace@localhost>\n\
         Installed-Size: {kib}\n\
         Depends: libc6 (>= {glibc})\n\
         Section: admin\n\
         Priority: optional\n\
         Description: {}\n \
         One binary with its kernel programs embedded; the systemd unit\n \
         lavtrace.service serves Prometheus metrics on 127.0.0.1:9464 (not enabled\n \
         on install), and /usr/share/lavtrace/grafana holds a Grafana dashboard.\n",
        env!("CARGO_PKG_DESCRIPTION"),
    ))
}

/// The highest `GLIBC_x.y` symbol version the binary links against: its libc6 dependency.
fn glibc_needed(binary: &Path) -> Result<String> {
    let symbols = output(Command::new("objdump").arg("-T").arg(binary))?;
    symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .map(|(a, b)| format!("{a}.{b}"))
        .context("the binary names no GLIBC_ symbol version")
}

fn du_kib(dir: &Path) -> Result<u64> {
    let out = output(Command::new("du").args(["-sk"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sk printed no size")
}

fn generate(binary: &Path, what: &str) -> Result<Vec<u8>> {
    let out = Command::new(binary)
        .args(["generate", what])
        .output()
        .with_context(|| format!("running {} generate {what}", binary.display()))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "lavtrace generate {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `gzip -9n`: no name or timestamp in the header, as Debian policy asks of man pages.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child
        .stdin
        .take()
        .context("gzip stdin")?
        .write_all(data)
        .context("feeding gzip")?;
    let out = child.wait_with_output().context("waiting for gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &data, mode)
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Installs the package, runs the installed binary, removes the package, and checks that
/// everything it installed is gone. Refuses to touch a lavtrace installed some other way.
pub fn package_test() -> Result<()> {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", NAME])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
    if installed || Path::new("/usr/bin/lavtrace").exists() {
        bail!("lavtrace is already installed here; the package test would replace it");
    }
    let deb = run()?;
    status(Command::new("dpkg").arg("-i").arg(&deb))?;
    let result = exercise_installed();
    // Removed whatever happened, so a failed run leaves the machine as it found it.
    let files = output(Command::new("dpkg-query").args(["-L", NAME])).unwrap_or_default();
    let purged = status(Command::new("dpkg").args(["--purge", NAME]));
    result?;
    purged?;
    let left: Vec<&str> = files
        .lines()
        .filter(|f| {
            let p = Path::new(f);
            // Shared directories stay, including merged-/usr links such as /lib -> usr/lib
            // (a symlink to a directory); every file must go.
            p.is_file() || (p.is_symlink() && !p.is_dir())
        })
        .collect();
    if !left.is_empty() {
        bail!("left behind after purge: {left:?}");
    }
    eprintln!("xtask package-test: installed, ran, purged; nothing left behind");
    Ok(())
}

fn exercise_installed() -> Result<()> {
    let mut paths = vec!["usr/bin/lavtrace", MAN, UNIT, DASHBOARD];
    paths.extend(COMPLETIONS.iter().map(|(_, p)| *p));
    for path in paths {
        if !Path::new("/").join(path).is_file() {
            bail!("the package did not install {path}");
        }
    }
    let check = output(Command::new("/usr/bin/lavtrace").arg("check"))?;
    if !check.contains("syscalls") {
        bail!("installed `lavtrace check` does not describe the syscalls family:\n{check}");
    }
    let demo = output(Command::new("/usr/bin/lavtrace").args([
        "demo",
        "--duration",
        "2s",
        "--no-tui",
        "--format",
        "json",
    ]))?;
    let summary = demo
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["type"] == "summary")
        .context("installed `lavtrace demo` printed no summary record")?;
    let calls: u64 = summary["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["count"].as_u64())
        .sum();
    if calls == 0 {
        bail!("installed `lavtrace demo` counted no syscalls: {summary}");
    }
    eprintln!("xtask package-test: installed demo counted {calls} syscalls");
    Ok(())
}
