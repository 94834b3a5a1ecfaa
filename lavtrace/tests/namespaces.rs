//! A target in its own pid and mount namespaces, as in a container: found by host pid and by
//! name, its calls counted exactly, and its files named and placed on their mounts as the
//! target sees them (through /proc/PID/root and its own mountinfo), not as the host does.

mod common;

use common::{Trace, Workload, require_root};
use serde_json::Value;

const NAME: &str = "lt-contained";

/// `unshare` with a private tmpfs over `dir` that only the namespace sees, and the
/// workload's temp dir (its data dir) on it.
fn contained(dir: &str) -> Vec<&str> {
    vec![
        "unshare",
        "--pid",
        "--mount",
        "--fork",
        "--kill-child",
        "--",
        "sh",
        "-c",
        r#"mount -t tmpfs lt-ns "$0" && TMPDIR="$0" exec "$@""#,
        dir,
    ]
}

fn syncfs_row(summary: &Value) -> &Value {
    summary["fsync"]
        .as_array()
        .expect("fsync rows")
        .iter()
        .find(|r| r["syscall"] == "syncfs")
        .unwrap_or_else(|| panic!("no syncfs row: {summary}"))
}

#[test]
fn a_target_in_its_own_pid_and_mount_namespaces_is_traced_as_it_sees_itself() {
    require_root();
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().to_str().unwrap().to_string();
    for by_name in [false, true] {
        let mut target = Workload::storage()
            .named(NAME)
            .segments(2)
            .syncfs(40)
            .fsyncs(3)
            .spawn_in(&contained(&dir));
        // The premise: another pid namespace, and a mount the host does not have.
        let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let its = std::fs::read_link(format!("/proc/{}/ns/pid", target.pid)).unwrap();
        assert_ne!(own, its, "the workload is in its own pid namespace");
        let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !host_mounts.contains(" lt-ns "),
            "the tmpfs is the namespace's alone"
        );

        let trace = if by_name {
            Trace::comm(NAME)
        } else {
            Trace::of(&target)
        };
        let trace = trace.probes("fsync").interval("200ms").spawn();
        assert_eq!(
            trace.attached["target"]["pid"], target.pid,
            "the host's pid"
        );
        let records = trace.run(&mut [&mut target]);
        let summary = records.last().unwrap();
        assert_eq!(summary["lost_events"]["fsync"], 0);
        let syncfs = syncfs_row(summary);
        assert_eq!(syncfs["count"], 40, "{syncfs}");
        // Named as the target sees it (its temp dir is `dir` inside), recognised as a data
        // dir from its contents, and on the namespace's tmpfs, not the host's filesystem.
        let path = syncfs["path"].as_str().unwrap();
        assert!(path.starts_with(&format!("{dir}/lavtrace-data-")), "{path}");
        assert_eq!(syncfs["kind"], "data_dir", "{syncfs}");
        assert_eq!(syncfs["mount"]["fstype"], "tmpfs", "{syncfs}");
        assert_eq!(syncfs["mount"]["source"], "lt-ns", "{syncfs}");
        let fsyncs: u64 = summary["fsync"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["syscall"] == "fsync")
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert_eq!(fsyncs, 3);
    }
}
