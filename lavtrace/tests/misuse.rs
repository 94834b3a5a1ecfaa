//! What operators get wrong: a lookalike of the target's name, two lavtraces on one target.

mod common;

use std::process::{Command, Stdio};

use common::{LAVTRACE, Trace, Workload, require_root};
use serde_json::Value;

fn count_of(summary: &Value, syscall: &str, path_end: &str) -> u64 {
    let rows: Vec<&Value> = summary["fsync"]
        .as_array()
        .expect("an fsync list")
        .iter()
        .filter(|r| r["syscall"] == syscall && r["path"].as_str().unwrap().ends_with(path_end))
        .collect();
    assert_eq!(rows.len(), 1, "one {syscall} row for *{path_end}: {rows:?}");
    rows[0]["count"].as_u64().unwrap()
}

/// Two processes with one name but different executables (the way a process naming itself
/// `lavinmq` looks next to the real broker): neither the name nor the default target picks
/// one; the one error line gives each pid with its executable, so the operator can tell them
/// apart. A name of its own keeps the test away from other `lavinmq` processes on the host.
#[test]
fn a_lookalike_name_is_refused_with_both_executables() {
    let dir = tempfile::tempdir().unwrap();
    // comm is the name exec'd (the symlink's), exe the file it resolves to.
    let spawn = |sub: &str, target: &str, args: &[&str]| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let link = d.join("lvt-lookalike");
        std::os::unix::fs::symlink(target, &link).unwrap();
        Command::new(&link)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut real = spawn("a", "/bin/sleep", &["30"]);
    let mut fake = spawn("b", "/bin/cat", &[]);
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    // exec has happened once /proc shows the symlink's name.
    for pid in [real.id(), fake.id()] {
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "lvt-lookalike\n" {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let (real_exe, fake_exe) = (exe(real.id()), exe(fake.id()));
    assert_ne!(real_exe, fake_exe);
    let out = Command::new(LAVTRACE)
        .args(["trace", "--comm", "lvt-lookalike", "--duration", "1s"])
        .output()
        .unwrap();
    let _ = (real.kill(), fake.kill(), real.wait(), fake.wait());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(
        line.contains("2 processes named \"lvt-lookalike\""),
        "{line}"
    );
    for (pid, exe) in [(real.id(), &real_exe), (fake.id(), &fake_exe)] {
        let listed = format!("{pid} ({})", exe.display());
        assert!(line.contains(&listed), "{listed} missing: {line}");
    }
}

/// Two lavtraces on one target at once: each loads its own programs and rings, and both
/// report the workload's durability calls exactly.
#[test]
fn two_lavtraces_on_one_target_both_count_exactly() {
    require_root();
    let mut target = Workload::storage()
        .segments(2)
        .syncfs(150)
        .fsyncs(3)
        .linger("300ms")
        .spawn();
    let first = Trace::of(&target).probes("fsync,mmap").spawn();
    let second = Trace::of(&target).probes("fsync").spawn();
    target.go();
    target.wait_done();
    for (which, trace) in [("first", first), ("second", second)] {
        let records = trace.records();
        let summary = records.last().unwrap();
        assert_eq!(summary["end"]["reason"], "target_exited", "{which}");
        assert_eq!(summary["lost_events"]["fsync"], 0, "{which}");
        assert_eq!(count_of(summary, "syncfs", ""), 150, "{which}");
        assert_eq!(
            count_of(summary, "fsync", "/definitions.amqp"),
            3,
            "{which}"
        );
    }
}
