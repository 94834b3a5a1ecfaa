//! The guest's whole root file system: busybox, an `/init` that mounts what eBPF needs and
//! runs the tests, and the host-built binaries at the same absolute paths as on the host (the
//! test binaries have `CARGO_BIN_EXE_lavtrace` compiled in and find `lavtrace-workload` next to
//! it), with the libraries `ldd` lists.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{BUSYBOX, MARKER, output};

/// What each kernel offers the probe families, printed before the tests so a CI log answers
/// "why did this hook fail there" at once. Each kprobe is registered for real through tracefs
/// and removed; none of this decides the verdict (the tests and `lavtrace check` do).
const FACTS: &str = r#"t=/sys/kernel/tracing
[ -d /sys/bus/event_source/devices/kprobe ] && echo "fact: kprobe PMU yes" || echo "fact: kprobe PMU no"
for f in tcp_v4_connect tcp_v6_connect tcp_sendmsg tcp_set_state tcp_close tcp_cleanup_rbuf tcp_retransmit_skb vfs_fsync_range; do
    if echo "p:lvt_probe $f" >> $t/kprobe_events 2>/dev/null; then
        echo "fact: kprobe $f ok"; echo "-:lvt_probe" >> $t/kprobe_events
    else
        echo "fact: kprobe $f UNAVAILABLE"
    fi
done
for e in raw_syscalls/sys_enter syscalls/sys_enter_fsync syscalls/sys_enter_fdatasync syscalls/sys_enter_msync syscalls/sys_enter_mmap syscalls/sys_enter_munmap sock/inet_sock_set_state tcp/tcp_retransmit_skb tcp/tcp_probe tcp/tcp_destroy_sock; do
    [ -d $t/events/$e ] && echo "fact: tracepoint $e yes" || echo "fact: tracepoint $e NO"
done
# Record layouts of the tracepoints read at fixed offsets: `type name@offset`, common_* left out.
for e in sock/inet_sock_set_state tcp/tcp_retransmit_skb; do
    echo "fact: layout $e: $(sed -n '/common_/d; s/.*field:\([^;]*\);[^o]*offset:\([0-9]*\);.*/\1@\2/p' $t/events/$e/format | tr '\n' ',')"
done"#;

/// One program the guest runs; its exit status decides the kernel's result.
#[derive(Clone)]
pub struct Run {
    pub label: String,
    pub env: Vec<(String, String)>,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Seconds before the guest's `timeout` ends it.
    pub timeout: u64,
}

/// Builds `dir/initramfs.cpio` (uncompressed: unpacking is cheaper than decompressing under
/// TCG) holding `binaries`, each kernel's `modules/<release>` directory (loaded by `/init` for
/// the kernel that boots) and an `/init` that executes `runs` in order.
pub fn build(
    dir: &Path,
    binaries: &[PathBuf],
    modules: &[PathBuf],
    runs: &[Run],
) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    copy_into(&root, Path::new(BUSYBOX), Path::new("/bin/busybox"), false)?;
    let mut libs = Vec::new();
    for bin in binaries {
        if ["/proc/", "/sys/", "/dev/"]
            .iter()
            .any(|m| bin.starts_with(m))
        {
            bail!(
                "{} is under a mount point of the guest: build elsewhere",
                bin.display()
            );
        }
        // Debug info is most of a debug build's size and nothing the guest needs.
        copy_into(&root, bin, bin, true)?;
        for lib in shared_libraries(bin)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        copy_into(&root, lib, lib, false)?;
    }
    for release in modules {
        let name = release
            .file_name()
            .with_context(|| format!("{}: no release name", release.display()))?;
        let dest = root.join("modules").join(name);
        std::fs::create_dir_all(&dest)?;
        for m in std::fs::read_dir(release)?.flatten() {
            std::fs::copy(m.path(), dest.join(m.file_name()))?;
        }
    }
    let init = root.join("init");
    std::fs::write(&init, init_script(runs)).context("writing /init")?;
    set_mode(&init, 0o755)?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/tmp:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;

    let cpio = dir.join("initramfs.cpio");
    let file =
        std::fs::File::create(&cpio).with_context(|| format!("creating {}", cpio.display()))?;
    // `find | cpio` in the staging root: GNU cpio writes the newc format the kernel unpacks.
    let st = Command::new("sh")
        .current_dir(&root)
        .args(["-c", "find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --owner=0:0 --quiet"])
        .stdout(file)
        .status()
        .context("running cpio")?;
    if !st.success() {
        bail!("cpio failed ({st})");
    }
    Ok(cpio)
}

/// The paths `ldd` resolves for `bin`, the loader included (the vDSO has no file).
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(bin))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line.trim(),
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: {line}", bin.display());
        }
    }
    Ok(libs)
}

/// Copies the file `src` (symlinks followed) to `root/dest`.
fn copy_into(root: &Path, src: &Path, dest: &Path, strip: bool) -> Result<()> {
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    let target = root.join(rel);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if strip {
        output(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&target)
                .arg(src),
        )?;
    } else {
        std::fs::copy(src, &target)
            .with_context(|| format!("copying {} to {}", src.display(), target.display()))?;
    }
    set_mode(&target, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Single quotes for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's pid 1. Markers (`MARKER begin|end|done ...`) are what the host reads; every
/// other line is only shown.
fn init_script(runs: &[Run]) -> String {
    let mut s = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp RUST_BACKTRACE=1
# Tests that must see something in the kernel matrix (e.g. IPv6 on the kprobe set) ask for it.
export LAVTRACE_GUEST=1
mount -t devtmpfs devtmpfs /dev
# The kernel found no /dev/console in the archive to give pid 1: take it now.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
# POSIX shared memory, as on any host (the slowsync workload's fast fsyncs go to /dev/shm).
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
# No tmpfs over /tmp: the root is already in RAM and writable, and the host's build may live
# under /tmp (a CI clone), where a mount would hide it.
chmod 1777 /tmp
ip link set lo up
# Modules the host would load on demand (sock_diag's inet/tcp handlers), in their order.
for m in /modules/$(uname -r)/*.ko; do [ -f "$m" ] && insmod "$m"; done
ulimit -n 65536
echo "{MARKER} kernel $(uname -r)"
{FACTS}
failed=0
run() {{
    label=$1; shift
    echo "{MARKER} begin $label"
    start=$(date +%s)
    "$@"
    rc=$?
    echo "{MARKER} end $label rc=$rc secs=$(( $(date +%s) - start ))"
    [ $rc = 0 ] || failed=$((failed + 1))
}}
"#
    );
    for r in runs {
        let mut cmd = String::new();
        if !r.env.is_empty() {
            cmd.push_str("env ");
            for (k, v) in &r.env {
                let _ = write!(cmd, "{k}={} ", quote(v));
            }
        }
        let _ = write!(
            cmd,
            "timeout {} {}",
            r.timeout,
            quote(&r.program.display().to_string())
        );
        for a in &r.args {
            let _ = write!(cmd, " {}", quote(a));
        }
        let _ = writeln!(s, "run {} {cmd}", quote(&r.label));
    }
    let _ = writeln!(
        s,
        r#"if [ $failed = 0 ]; then echo "{MARKER} done pass"; else echo "{MARKER} done fail $failed"; fi
sync
poweroff -f"#
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_each_program_with_its_env_and_timeout() {
        let script = init_script(&[Run {
            label: "tcp (kprobe)".into(),
            env: vec![("LAVTRACE_TCP_HOOKS".into(), "kprobe".into())],
            program: "/w/target/debug/deps/tcp-1".into(),
            args: vec!["--test-threads=1".into()],
            timeout: 600,
        }]);
        assert!(script.contains(
            "run 'tcp (kprobe)' env LAVTRACE_TCP_HOOKS='kprobe' timeout 600 '/w/target/debug/deps/tcp-1' '--test-threads=1'\n"
        ));
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
