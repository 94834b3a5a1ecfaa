//! Bad input gets one clear line on stderr and a documented exit code, never a panic or a hang.

mod common;

use std::{os::unix::process::CommandExt as _, process::Command};

use common::LAVTRACE;

fn run(args: &[&str]) -> (i32, String) {
    run_cmd(Command::new(LAVTRACE).args(args))
}

fn run_cmd(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("running lavtrace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "lavtrace panicked: {stderr}");
    (out.status.code().expect("exited, not killed"), stderr)
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line expected, got:\n{stderr}");
    assert!(lines[0].starts_with("lavtrace: error: "), "{stderr}");
    lines[0]
}

#[test]
fn unknown_pid_exits_3() {
    let (code, stderr) = run(&["trace", "--pid", "999999999"]);
    assert_eq!(code, 3);
    assert!(one_error_line(&stderr).contains("no process with pid 999999999"));
}

#[test]
fn unknown_comm_exits_3() {
    let (code, stderr) = run(&["trace", "--comm", "no-such-proc"]);
    assert_eq!(code, 3);
    assert!(one_error_line(&stderr).contains("no process named \"no-such-proc\""));
}

#[test]
fn ambiguous_comm_lists_the_candidates() {
    // Two processes with one unusual name: sleep(1) through a symlink (comm is the name
    // exec'd). A copy would be written while other tests fork, and exec it fails with
    // ETXTBSY when a forked child still holds the copy's write descriptor.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("lvt-ambig");
    std::os::unix::fs::symlink("/bin/sleep", &exe).unwrap();
    let mut a = Command::new(&exe).arg("30").spawn().unwrap();
    let mut b = Command::new(&exe).arg("30").spawn().unwrap();
    let (code, stderr) = run(&["trace", "--comm", "lvt-ambig"]);
    let _ = (a.kill(), b.kill(), a.wait(), b.wait());
    assert_eq!(code, 3);
    let line = one_error_line(&stderr);
    assert!(line.contains("2 processes named"), "{line}");
    assert!(
        line.contains(&a.id().to_string()) && line.contains(&b.id().to_string()),
        "{line}"
    );
}

#[test]
fn bad_duration_and_unknown_probe_exit_2() {
    let (code, stderr) = run(&["trace", "--pid", "1", "--duration", "soon"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--duration"), "{stderr}");
    let (code, stderr) = run(&["trace", "--pid", "1", "--probes", "syscalls,nosuch"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");
}

#[test]
fn not_root_exits_4() {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: the plain run must fail the same way.
        let (code, stderr) = run(&["trace", "--pid", &std::process::id().to_string()]);
        assert_eq!(code, 4, "{stderr}");
        return;
    }
    let me = std::process::id().to_string();
    let (code, stderr) = run_cmd(
        Command::new(LAVTRACE)
            .args(["trace", "--pid", &me])
            .uid(65534)
            .gid(65534),
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(one_error_line(&stderr).contains("needs root"));
}

#[test]
fn help_lists_the_contract() {
    let out = Command::new(LAVTRACE)
        .args(["trace", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--pid",
        "--comm",
        "--duration",
        "--interval",
        "--probes",
        "--format",
        "--top",
        "--sort",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn demo_without_a_broker_at_the_url_exits_3() {
    let (code, stderr) = run(&["demo", "--amqp", "amqp://127.0.0.1:1/%2f"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(one_error_line(&stderr).contains("no process listens on port 1"));
}

#[test]
fn demo_amqp_without_the_workload_binary_next_to_lavtrace_exits_7() {
    // A lavtrace installed alone; this test process is the "broker" on the port.
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("lavtrace");
    std::fs::copy(LAVTRACE, &alone).unwrap();
    let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://127.0.0.1:{}/%2f",
        broker.local_addr().unwrap().port()
    );
    let (code, stderr) = run_cmd(Command::new(&alone).args(["demo", "--amqp", &url]));
    assert_eq!(code, 7, "{stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("lavtrace-workload") && line.contains("cargo build -p lavtrace-workload"),
        "{line}"
    );
}

#[test]
fn lavtrace_on_itself_exits_8() {
    // The shell execs lavtrace: `$$` is lavtrace's own pid.
    let (code, stderr) = run_cmd(Command::new("sh").args([
        "-c",
        &format!("exec {LAVTRACE} trace --pid $$ --probes syscalls"),
    ]));
    assert_eq!(code, 8, "{stderr}");
    assert!(
        one_error_line(&stderr).contains("it cannot trace itself"),
        "{stderr}"
    );
}

#[test]
fn a_kernel_thread_exits_8() {
    let (code, stderr) = run(&["trace", "--pid", "2", "--probes", "syscalls"]);
    assert_eq!(code, 8, "{stderr}");
    assert!(
        one_error_line(&stderr).contains("pid 2 (kthreadd) is a kernel thread"),
        "{stderr}"
    );
}

#[test]
fn a_zombie_exits_8() {
    // Not waited for until lavtrace has looked at it: a zombie of this test.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let status = format!("/proc/{pid}/status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&status)
        .unwrap()
        .contains("State:\tZ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (code, stderr) = run(&["trace", "--pid", &pid.to_string(), "--probes", "syscalls"]);
    let _ = child.wait();
    assert_eq!(code, 8, "{stderr}");
    assert!(
        one_error_line(&stderr).contains(&format!("pid {pid} (true) is a zombie")),
        "{stderr}"
    );
}

#[test]
fn pid_1_is_traced() {
    common::require_root();
    let records = common::lavtrace_json(&[
        "trace",
        "--pid",
        "1",
        "--probes",
        "syscalls",
        "--duration",
        "300ms",
    ]);
    let last = records.last().unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["pid"], 1);
}
