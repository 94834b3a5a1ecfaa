//! A target in its own pid and mount namespaces, as in a container: found by host pid and by
//! name, its calls counted exactly, and its files named and placed on their mounts as the
//! target sees them (through /proc/PID/root and its own mountinfo), not as the host does.

mod common;

use std::collections::BTreeMap;

use common::{Trace, Workload, require_root};
use serde_json::Value;

const NAME: &str = "lt-contained";

/// `unshare` with a private tmpfs over `dir` that only the namespace sees, and the
/// workload's temp dir (its data dir) on it. On the host `--kill-child` ends the workload with
/// its wrapper; the kernel matrix's busybox `unshare` has no such option, and its guest ends
/// with the run anyway.
fn contained(dir: &str) -> Vec<&str> {
    let mut cmd = vec!["unshare", "--pid", "--mount", "--fork"];
    if std::env::var_os("LAVTRACE_GUEST").is_none() {
        cmd.push("--kill-child");
    }
    cmd.extend([
        "--",
        "sh",
        "-c",
        r#"mount -t tmpfs lt-ns "$0" && TMPDIR="$0" exec "$@""#,
        dir,
    ]);
    cmd
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

/// A port number no socket of this namespace has now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The target listens on a port; a process in another network namespace (a container)
/// listens on the same port number and accepts its own connections there. Those complete
/// their handshake in softirq, where the kernel sees a local port the target listens on: only
/// the socket's namespace tells them apart. The target's own connections are all there, the
/// other namespace's none.
#[test]
fn connections_on_the_targets_port_number_in_another_network_namespace_are_not_the_targets() {
    require_root();
    let port = free_port();
    let (mine, theirs) = (6, 10);
    let mut target = Workload::tcp_churn(mine).flag("port", port).spawn();
    let mut other = Workload::tcp_churn(theirs).flag("port", port).spawn_in(&[
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        r#"ip link set lo up && exec "$@""#,
        "sh",
    ]);
    // The premise: another network namespace, and both listening on the same port number.
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let its = std::fs::read_link(format!("/proc/{}/ns/net", other.pid)).unwrap();
    assert_ne!(
        own, its,
        "the other workload is in its own network namespace"
    );

    let trace = Trace::of(&target).probes("tcp").interval("200ms").spawn();
    // The other namespace's connections first, while the target's listener is open.
    other.go();
    other.wait_done();
    let records = trace.run(&mut [&mut target]);
    let summary = records.last().unwrap();
    assert_eq!(summary["lost_events"]["tcp"], 0);
    let tcp = &summary["tcp"];
    // Each of the target's connections is two sockets of the target (connect and accept).
    assert_eq!(
        (count(&tcp["opened"]), count(&tcp["closed"])),
        (2 * mine, 2 * mine),
        "{tcp}"
    );
    let transitions: BTreeMap<&str, u64> = tcp["transitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), count(v)))
        .collect();
    assert_eq!(
        transitions.get("SYN_RECV->ESTABLISHED"),
        Some(&mine),
        "{transitions:?}"
    );
    assert_eq!(
        transitions.get("CLOSE->SYN_SENT"),
        Some(&mine),
        "{transitions:?}"
    );
}
