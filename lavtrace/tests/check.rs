//! `lavtrace check --pid/--comm`: the target section describes a process with known sockets
//! (the `tcp` workload before `go`: one listener, three accepted connections).

mod common;

use std::process::Command;

use common::{LAVTRACE, Workload, require_root};

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(LAVTRACE)
        .arg("check")
        .args(args)
        .output()
        .expect("running lavtrace check");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
}

#[test]
fn check_pid_describes_the_target() {
    require_root();
    let target = Workload::tcp().named("lt-check").spawn();
    let pid = target.pid;
    // The workload waits for `go`: its threads, sockets and mappings hold still.
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let (code, out, err) = check(&["--pid", &pid.to_string()]);
    assert_eq!(code, 0, "check failed: {err}\n{out}");
    assert!(
        line(&out, "open fds")
            .starts_with(&format!("open fds      {fds} of the open-files limit ")),
        "{out}"
    );
    // Not a broker: no data dir to measure.
    assert!(
        line(&out, "data dir").starts_with("data dir      not found"),
        "{out}"
    );
    assert_eq!(
        line(&out, "target"),
        format!("target        pid {pid} (lt-check)")
    );
    assert!(
        line(&out, "threads").starts_with(&format!("threads       {threads}: ")),
        "{out}"
    );
    let listening = line(&out, "listening");
    assert!(
        listening.starts_with("listening     1: 127.0.0.1:"),
        "{listening}"
    );
    assert_eq!(
        line(&out, "connections"),
        "connections   3 open TCP (ESTABLISHED 3)"
    );
    assert!(
        line(&out, "mappings").starts_with(&format!("mappings      {maps} of vm.max_map_count ")),
        "{out}"
    );
    // The hook lines still follow, and every core family is usable here.
    assert!(out.contains("syscalls  syscalls_enter"), "{out}");
    drop(target);

    // By name, the same process.
    let target = Workload::syscalls().named("lt-check2").spawn();
    let (code, out, err) = check(&["--comm", "lt-check2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        line(&out, "target"),
        format!("target        pid {} (lt-check2)", target.pid)
    );
    assert_eq!(line(&out, "connections"), "connections   0 open TCP");
}

#[test]
fn check_unknown_target_exits_3() {
    let (code, out, err) = check(&["--comm", "no-such-process-x"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no process named"), "{err}");
    assert!(out.is_empty(), "nothing before the error: {out}");
}

/// Each family's host-cost line agrees with the hooks printed above it: a family with any
/// hook on a syscall tracepoint (raw or classic) puts every syscall of the host on the slow
/// path; any other family costs other processes nothing per syscall.
#[test]
fn check_says_what_each_family_costs_other_processes() {
    require_root();
    let (code, out, err) = check(&[]);
    assert_eq!(code, 0, "{err}\n{out}");
    for family in [
        "syscalls", "fsync", "mmap", "tcp", "amqp", "sched", "gc", "faults",
    ] {
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(family))
            .collect();
        let on_syscall_path = rows.iter().any(|l| {
            l.split_once(" ok via ").is_some_and(|(_, via)| {
                via == "raw_tracepoint sys_enter"
                    || via == "raw_tracepoint sys_exit"
                    || via.starts_with("tracepoint syscalls:")
                    || via.starts_with("tracepoint raw_syscalls:")
            })
        });
        let cost: Vec<&str> = rows
            .iter()
            .filter_map(|l| l.split_once("(host cost)").map(|(_, c)| c.trim()))
            .collect();
        assert_eq!(cost.len(), 1, "one host-cost line for {family}:\n{out}");
        if on_syscall_path {
            assert!(
                cost[0].starts_with("other processes: every syscall on the host"),
                "{family}: {}",
                cost[0]
            );
        } else {
            assert!(
                cost[0].starts_with("other processes: +0"),
                "{family}: {}",
                cost[0]
            );
        }
    }
    // sched hangs on the scheduler's tracepoints, never on the syscall path.
    assert_eq!(
        line(&out, "sched     (host cost)"),
        "sched     (host cost)          other processes: +0 per syscall; a program runs when \
         they reach sched_switch, sched_wakeup, sched_wakeup_new",
        "{out}"
    );
    // The syscalls family needs the host-wide hook wherever it runs.
    assert!(
        line(&out, "syscalls  (host cost)").contains("every syscall on the host"),
        "{out}"
    );
}

/// A target listening on 5671 that maps a libssl: `check` says where AMQPS's plaintext comes
/// from, one `ret` probe per function of this machine's libssl.
#[test]
fn check_pid_names_the_ssl_calls_of_an_amqps_target() {
    require_root();
    let target = Workload::amqp_frames(5671).switch("tls").spawn();
    let (code, out, err) = check(&["--pid", &target.pid.to_string()]);
    assert_eq!(code, 0, "check failed: {err}\n{out}");
    let amqps = line(&out, "amqps");
    assert!(
        amqps.starts_with("amqps         plaintext from /") && amqps.contains("libssl.so"),
        "{out}"
    );
    for f in [
        "SSL_read (",
        "SSL_write (",
        "SSL_read_ex (",
        "SSL_write_ex (",
    ] {
        assert!(amqps.contains(f), "{amqps}");
    }
}
