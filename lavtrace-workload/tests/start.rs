//! The start protocol end to end against the real binary (this test also makes
//! `cargo test --workspace` build `lavtrace-workload`, which lavtrace's tests run).

use std::{process::Command, time::Duration};

use lavtrace_common::start::{self, NoLine};

const WAIT: Duration = Duration::from_secs(30);

fn workload(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lavtrace-workload"));
    cmd.args(args);
    cmd
}

#[test]
fn ready_with_its_pid_then_nothing_until_go_then_done() {
    let mut w = start::spawn(&mut workload(&["syscalls", "--getppid", "3"]), WAIT).unwrap();
    assert_eq!(w.pid(), w.child().id());
    assert_eq!(
        w.next_line(Duration::from_millis(300)),
        Err(NoLine::Timeout)
    );
    w.go().unwrap();
    w.wait_done(WAIT).unwrap();
    assert!(w.child().wait().unwrap().success());
    assert_eq!(w.next_line(WAIT), Err(NoLine::Eof), "nothing after done");
}

#[test]
fn a_workload_that_fails_before_ready_is_an_error_not_a_hang() {
    let err = start::spawn(&mut workload(&["no-such-mode"]), WAIT)
        .err()
        .expect("no ready line");
    assert!(
        err.to_string().contains("exited before it was ready"),
        "{err}"
    );
}

#[test]
fn tcp_waits_for_stdin_to_close_after_done() {
    let mut w = start::spawn(&mut workload(&["tcp"]), WAIT).unwrap();
    w.go().unwrap();
    while w.next_line(WAIT).unwrap() != "done" {}
    assert!(w.child().try_wait().unwrap().is_none(), "still there");
    w.close_stdin();
    assert!(w.child().wait().unwrap().success());
}
