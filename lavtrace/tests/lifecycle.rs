//! lavtrace's own life cycle: whatever ends it, nothing stays attached to the kernel.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{Trace, Workload, require_root};

/// The tests here count lavtrace's programs in the whole kernel: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ids of the loaded BPF programs that are lavtrace's syscalls programs.
fn syscalls_programs() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| matches!(p.name_as_str(), Some("syscalls_enter" | "syscalls_exit")))
        .map(|p| p.id())
        .collect()
}

#[test]
fn sigkill_leaves_no_program_loaded() {
    require_root();
    let _serial = serial();
    let target = Workload::spawn(&["syscalls", "--getppid", "1"]);
    let before = syscalls_programs();
    let mut trace = Trace::spawn(&["--pid", &target.pid.to_string(), "--probes", "syscalls"]);
    let ours: BTreeSet<u32> = syscalls_programs().difference(&before).copied().collect();
    assert_eq!(ours.len(), 2, "lavtrace loaded its enter and exit programs");

    trace.child.kill().unwrap(); // SIGKILL: no cleanup code of lavtrace runs
    trace.child.wait().unwrap();
    // The kernel frees programs once their last fd is closed (asynchronously, via RCU).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = syscalls_programs().intersection(&ours).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded after lavtrace was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(target);
}

#[test]
fn follow_reattaches_when_the_target_restarts() {
    require_root();
    let _serial = serial();
    // A name no other process has: `--comm` must find exactly our workload.
    let name = format!("lvt-fol{}", std::process::id() % 100_000);
    let mut first = Workload::spawn(&["--name", &name, "syscalls", "--getppid", "100"]);
    let trace = Trace::spawn(&["--comm", &name, "--follow", "--interval", "200ms"]);
    assert_eq!(trace.attached["target"]["pid"], first.pid);
    first.go();
    first.wait_done();
    let first_pid = first.pid;
    drop(first);

    // lavtrace summarises the first instance, then waits for the name to come back.
    let record = |want: &str| loop {
        let line = trace.lines.next().expect("lavtrace ended early");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == want {
            return v;
        }
    };
    let summary1 = record("summary");
    assert_eq!(summary1["pid"], first_pid);
    assert_eq!(summary1["end"]["reason"], "target_exited");
    assert_eq!(common::count(&summary1, "getppid"), 100);

    std::thread::sleep(Duration::from_millis(300));
    let mut second = Workload::spawn(&["--name", &name, "syscalls", "--getppid", "200"]);
    let restart = record("restart");
    assert_eq!(restart["previous_pid"], first_pid);
    assert_eq!(restart["pid"], second.pid);
    assert!(restart["gap_ms"].as_u64().unwrap() >= 300);
    let attached = record("attached");
    assert_eq!(attached["target"]["pid"], second.pid);
    second.go();
    second.wait_done();
    let summary2 = record("summary");
    assert_eq!(summary2["pid"], second.pid);
    assert_eq!(
        common::count(&summary2, "getppid"),
        200,
        "totals are per instance"
    );
    drop(second);

    // Stopped while waiting for a third instance: exits 0, the last summary stands.
    trace.signal(libc::SIGINT);
    let rest = trace.records_after_summary();
    assert!(rest.is_empty(), "nothing after the last summary: {rest:?}");
}
