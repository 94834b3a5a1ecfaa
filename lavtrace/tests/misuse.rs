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

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One HTTP/1.0 GET /metrics: the status line and the body.
fn get_metrics(port: u16) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The metrics endpoint under 200 concurrent scrapers, with clients that connect and send
/// nothing and one that reads its response a byte at a time: every scraper gets the
/// exposition, lavtrace starts no thread for any of them, its memory stays put, and the
/// silent clients are hung up on.
#[test]
fn the_metrics_endpoint_serves_200_scrapers_and_outlasts_slow_clients() {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::{Duration, Instant},
    };
    require_root();
    let mut target = Workload::storage().segments(1).syncfs(10).spawn();
    let port = common::free_port();
    let trace = Trace::of(&target)
        .probes("fsync")
        .interval("100ms")
        .flag("metrics", format!("127.0.0.1:{port}"))
        .spawn();
    let lavtrace = trace.child.id();
    // The first interval is in: the body is the full exposition from here on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_metrics(port).1.contains("lavtrace_target_info") {
        assert!(Instant::now() < deadline, "no target on /metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (threads_before, rss_before) = (threads_of(lavtrace), rss_kib(lavtrace));

    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut byte = [0u8; 1];
        let mut got = 0;
        while s.read(&mut byte).is_ok_and(|n| n == 1) && got < 200 {
            got += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let start = Instant::now();
    let scrapers: Vec<_> = (0..200)
        .map(|_| std::thread::spawn(move || get_metrics(port)))
        .collect();
    let mut max_threads = 0;
    while !scrapers.iter().all(|s| s.is_finished()) {
        max_threads = max_threads.max(threads_of(lavtrace));
        assert!(start.elapsed() < Duration::from_secs(60), "scrapers stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in scrapers {
        let (status, body) = s.join().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body.contains("lavtrace_target_info"), "{body}");
    }
    // No thread per client, and no memory kept per client.
    assert_eq!(
        max_threads, threads_before,
        "lavtrace threads during the scrapes"
    );
    let rss_after = rss_kib(lavtrace);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
    // The silent clients are hung up on (the server's per-client timeout), not kept forever.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            matches!(s.read(&mut buf), Ok(0)),
            "a silent client still connected"
        );
    }
    slow.join().unwrap();
    target.go();
    target.wait_done();
    let records = trace.records();
    assert_eq!(records.last().unwrap()["end"]["reason"], "target_exited");
}

/// A queue named with an ANSI clear-screen, a newline and a bell (AMQP allows it), named from
/// the data dir's own `.queue` and definitions.amqp: the text tables show it escaped, with no
/// control character but the lines' own newlines, and JSON keeps it raw.
#[test]
fn a_hostile_queue_name_is_escaped_in_text_and_raw_in_json() {
    require_root();
    const NAME: &str = "q\x1b[2J\nevil\x07";
    const SHOWN: &str = r"queue q\x1b[2J\nevil\x07";
    let run = |json: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut target = Workload::lavinmq()
            .flag("queues", 1)
            .segments(1)
            .syncfs(2)
            .flag("delete", 0)
            .flag("gc-bursts", 0)
            .flag("queue-name", NAME)
            .flag("data-dir", dir.path().display())
            .switch("keep")
            .spawn();
        // The workload prints its data dir before `done`: the fixture's one-shot runs
        // expect `done` first, so the runs are spelled out.
        let out = if json {
            let trace = Trace::of(&target).probes("fsync,mmap").spawn();
            target.go();
            target.lines_until_done();
            serde_json::to_string(&trace.records()).unwrap()
        } else {
            let mut child = Command::new(LAVTRACE)
                .args(["trace", "--probes", "fsync,mmap", "--pid"])
                .arg(target.pid.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let lines = common::Lines::new(child.stdout.take().unwrap());
            let first = lines.next().unwrap();
            assert!(first.starts_with("lavtrace: tracing pid"), "{first}");
            target.go();
            target.lines_until_done();
            let text = lines.rest().join("\n");
            assert!(child.wait().unwrap().success());
            text
        };
        drop(dir);
        out
    };
    let text = run(false);
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("evil")), "{text}");
    assert!(text.contains(SHOWN), "{text}");

    let records: Vec<Value> = serde_json::from_str(&run(true)).unwrap();
    let summary = records.last().unwrap();
    let named: Vec<&Value> = summary["mmap"]["files"]
        .as_array()
        .expect("mmap files")
        .iter()
        .filter(|f| f["queue"]["name"] == NAME)
        .collect();
    assert!(!named.is_empty(), "{summary}");
}
