//! One boot: qemu TCG (this host's /dev/kvm cannot run stock kernels), the serial console
//! streamed to stdout with the kernel's name in front, the result read from the marker lines
//! the guest's `/init` writes, and a deadline so a hung or crashed guest fails fast.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{MARKER, kernels::Kernel};

/// What one boot showed.
#[derive(Default)]
pub struct Outcome {
    /// `uname -r` in the guest.
    pub release: String,
    /// Every guest program, with its exit status and seconds (`None`: it never ended).
    pub runs: Vec<(String, Option<i32>, Option<u64>)>,
    /// libtest's `test result:` totals over all test binaries.
    pub tests_passed: u64,
    pub tests_failed: u64,
    /// The hooks `lavtrace check` listed (its lines, trimmed).
    pub check: Vec<String>,
    /// Everything the first run, `lavtrace check`, printed: the bench's table of the hooks
    /// each qemu kernel picks is made from it.
    pub check_text: Vec<String>,
    /// `Some(true)` when the guest wrote `done pass`; `None` when it wrote no verdict.
    pub verdict: Option<bool>,
    pub problem: Option<String>,
    pub wall: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.verdict == Some(true) && self.problem.is_none()
    }
}

pub fn boot(kernel: &Kernel, initrd: &Path, smp: u32, timeout: Duration) -> Result<Outcome> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
        // `max` gives TCG guests RDRAND, which `random.trust_cpu` uses to seed the CRNG at
        // once: 5.10 would otherwise block getrandom(2) for a long time in a quiet VM.
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1G"])
        .args(["-smp", &smp.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic quiet random.trust_cpu=on",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let (tx, rx) = channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || forward(stdout, &tx));
    std::thread::spawn(move || forward(stderr, &tx2));

    let mut outcome = Outcome::default();
    let deadline = started + timeout;
    let mut in_check = false;
    loop {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                outcome.problem = Some(format!("no verdict within {timeout:?}: killed"));
                break;
            }
        };
        println!("[{}] {line}", kernel.name);
        if let Some(marker) = line.strip_prefix(MARKER).map(str::trim) {
            read_marker(marker, &mut outcome, &mut in_check);
        } else if in_check && (line.contains(" via ") || line.contains("unavailable:")) {
            outcome.check.push(line.trim().to_string());
            if outcome.runs.len() == 1 {
                outcome.check_text.push(line.clone());
            }
        } else if in_check && outcome.runs.len() == 1 {
            outcome.check_text.push(line.clone());
        } else if let Some(totals) = line.trim().strip_prefix("test result: ") {
            let (passed, failed) = libtest_totals(totals);
            outcome.tests_passed += passed;
            outcome.tests_failed += failed;
        }
    }
    let _ = child.kill();
    let status = child.wait().context("waiting for qemu")?;
    outcome.wall = started.elapsed();
    if outcome.verdict.is_none() && outcome.problem.is_none() {
        outcome.problem = Some(format!(
            "the guest ended without a verdict (qemu {status}): kernel crash or panic?"
        ));
    }
    Ok(outcome)
}

fn forward(stream: impl std::io::Read, tx: &std::sync::mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

fn read_marker(marker: &str, outcome: &mut Outcome, in_check: &mut bool) {
    let mut words = marker.split_whitespace();
    match words.next() {
        Some("kernel") => outcome.release = words.collect::<Vec<_>>().join(" "),
        Some("begin") => {
            let label = words.collect::<Vec<_>>().join(" ");
            *in_check = label == "check";
            outcome.runs.push((label, None, None));
        }
        Some("end") => {
            *in_check = false;
            let rest: Vec<&str> = words.collect();
            let field = |k: &str| rest.iter().find_map(|w| w.strip_prefix(k));
            if let Some(last) = outcome.runs.last_mut() {
                last.1 = field("rc=").and_then(|v| v.parse().ok());
                last.2 = field("secs=").and_then(|v| v.parse().ok());
            }
        }
        Some("done") => outcome.verdict = Some(words.next() == Some("pass")),
        _ => {}
    }
}

/// `ok. 3 passed; 0 failed; 0 ignored; ...` → (3, 0).
fn libtest_totals(s: &str) -> (u64, u64) {
    let count = |what: &str| {
        s.split(';')
            .find_map(|part| part.trim().strip_suffix(what))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    (count(" passed"), count(" failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_markers_and_libtest_totals() {
        assert_eq!(
            libtest_totals(
                "ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.12s"
            ),
            (3, 0)
        );
        assert_eq!(
            libtest_totals("FAILED. 1 passed; 2 failed; 0 ignored"),
            (1, 2)
        );
        let mut o = Outcome::default();
        let mut in_check = false;
        read_marker("kernel 6.1.0-56-cloud-amd64", &mut o, &mut in_check);
        read_marker("begin check", &mut o, &mut in_check);
        assert!(in_check);
        read_marker("end check rc=0 secs=2", &mut o, &mut in_check);
        read_marker("begin tcp (kprobe)", &mut o, &mut in_check);
        read_marker("end tcp (kprobe) rc=101 secs=30", &mut o, &mut in_check);
        read_marker("done fail 1", &mut o, &mut in_check);
        assert_eq!(o.release, "6.1.0-56-cloud-amd64");
        assert_eq!(o.runs[0], ("check".into(), Some(0), Some(2)));
        assert_eq!(o.runs[1], ("tcp (kprobe)".into(), Some(101), Some(30)));
        assert_eq!(o.verdict, Some(false));
        assert!(!o.passed());
    }
}
