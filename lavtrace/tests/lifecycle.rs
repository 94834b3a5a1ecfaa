//! lavtrace's own life cycle: whatever ends it, nothing stays attached to the kernel.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{Trace, Workload, require_root};

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
