//! `lavtrace bundle` against real processes: the LavinMQ-shaped workload (answers SIGUSR1
//! with a dump in the real format), targets that ignore SIGUSR1 or would die of it, and a
//! target that writes a message body to a socket while its config holds a password.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
};

use common::{LAVTRACE, Workload, require_root};

/// Runs `lavtrace bundle ARGS -o DIR/b.tar.gz`, checks it exited 0, and returns the archive's
/// files (path below the top directory → content) and lavtrace's stderr.
fn bundle(dir: &Path, args: &[&str]) -> (BTreeMap<String, String>, String) {
    finish_bundle(dir, start_bundle(dir, args))
}

fn start_bundle(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(LAVTRACE)
        .arg("bundle")
        .args(args)
        .arg("-o")
        .arg(dir.join("b.tar.gz"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running lavtrace bundle")
}

/// Waits until both `trace` children of a bundle hold their programs, and the attach that
/// follows loading has had time to finish.
fn wait_for_traces(bundle: &std::process::Child) {
    let pid = bundle.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let children: Vec<u32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        if children.len() == 2
            && children
                .iter()
                .all(|&c| !common::programs_held_by(c).is_empty())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the traces never loaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
}

fn finish_bundle(dir: &Path, child: std::process::Child) -> (BTreeMap<String, String>, String) {
    let out = dir.join("b.tar.gz");
    let run = child.wait_with_output().expect("running lavtrace bundle");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "bundle failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        out.to_str().unwrap()
    );
    let mut files = BTreeMap::new();
    let gz = flate2::read::GzDecoder::new(fs::File::open(&out).unwrap());
    let mut archive = tar::Archive::new(gz);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let (top, name) = path.split_once('/').unwrap();
        assert_eq!(top, "b", "{path}");
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        files.insert(name.to_string(), text);
    }
    (files, stderr)
}

const EVERY_FILE: [&str; 7] = [
    "report.md",
    "report.html",
    "usr1.txt",
    "logs.txt",
    "resources.txt",
    "trace.json",
    "trace.txt",
];

/// `name: value` from resources.txt.
fn figure(resources: &str, name: &str) -> String {
    resources
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {resources}"))
        .to_string()
}

fn status_field(pid: u32, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// `name="value"` of one tag's text (`<rect a="1" ...`), HTML's entity for `"` undone.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(
        tag[start..start + len]
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

/// What the page plotted, from the DOM Chromium rendered: (chart, series) → [(row, value)]
/// for bars and columns, and timeline series → the values of their polyline.
type Plotted = BTreeMap<(String, String), Vec<(String, String)>>;

fn plotted(dom: &str) -> (Plotted, BTreeMap<String, Vec<f64>>) {
    let mut bars = Plotted::new();
    let mut lines = BTreeMap::new();
    for tag in dom
        .split('<')
        .filter_map(|t| t.split_once('>').map(|(t, _)| t))
    {
        let Some(chart) = attr(tag, "data-chart") else {
            continue;
        };
        let series = attr(tag, "data-series").unwrap();
        let value = attr(tag, "data-value").unwrap();
        if tag.starts_with("polyline ") {
            let values = value.split(' ').map(|v| v.parse().unwrap()).collect();
            assert!(lines.insert(series, values).is_none(), "{tag}");
        } else {
            assert!(tag.starts_with("rect "), "{tag}");
            bars.entry((chart, series))
                .or_default()
                .push((attr(tag, "data-row").unwrap(), value));
        }
    }
    (bars, lines)
}

/// A row's `histogram` as the page labels it: (lo_ns, count) as strings.
fn histogram_of(row: &serde_json::Value) -> Vec<(String, String)> {
    row["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["lo_ns"].to_string(), b["count"].to_string()))
        .collect()
}

/// The page in headless Chromium: it renders with nothing in the console, and what it
/// plotted equals the trace's figures (latency and histogram per syscall, histogram per
/// durability call, the four timeline series per interval). Skips (saying so) only when no
/// Chromium is installed.
fn check_in_chromium(html: &str, dir: &Path, records: &[serde_json::Value]) {
    let find = || {
        ["chromium", "chromium-browser"].into_iter().find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    };
    let browser = find().or_else(|| {
        // `cargo xtask setup` installs it; a bare `cargo test` tries once before giving up.
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "chromium",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        find()
    });
    let Some(browser) = browser else {
        eprintln!("SKIPPED: report.html in a browser: chromium cannot be installed here");
        return;
    };
    let page = dir.join("report.html");
    fs::write(&page, html).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let dom = String::from_utf8_lossy(&out.stdout);
    let (bars, lines) = plotted(&dom);
    let summary = records.last().unwrap();

    // Per syscall: its four latency figures and its histogram, for the 20 most called.
    let rows = summary["syscalls"].as_array().unwrap();
    let by_name: BTreeMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r))
        .collect();
    let drawn: Vec<String> = bars
        .keys()
        .filter_map(|(chart, _)| chart.strip_prefix("syscall ").map(str::to_string))
        .collect();
    assert_eq!(drawn.len(), rows.len().min(20), "{drawn:?}");
    let least_drawn = drawn
        .iter()
        .map(|n| by_name[n.as_str()]["count"].as_u64().unwrap())
        .min();
    for name in &drawn {
        let row = by_name[name.as_str()];
        assert!(
            !histogram_of(row).is_empty(),
            "{name}: a syscall seen has buckets"
        );
        assert_eq!(
            bars[&(format!("syscall {name}"), "calls".to_string())],
            histogram_of(row),
            "{name}"
        );
        for series in ["avg", "p50", "p99", "max"] {
            let bar = &bars[&("latency".to_string(), series.to_string())];
            let v = bar.iter().find(|(r, _)| r == name).map(|(_, v)| v.clone());
            assert_eq!(
                v,
                Some(row[format!("{series}_ns")].to_string()),
                "{name} {series}"
            );
        }
    }
    // The most called: none left out was called more than one drawn.
    for r in rows {
        if !drawn.iter().any(|n| r["name"] == n.as_str()) {
            assert!(r["count"].as_u64() <= least_drawn, "{r} left out");
        }
    }

    // Per durability row, in the trace's order: its histogram.
    let fsync = summary["fsync"].as_array().unwrap();
    assert!(!fsync.is_empty(), "the workload made durability calls");
    for (i, row) in fsync.iter().enumerate() {
        assert_eq!(
            bars[&(format!("durability {i}"), "calls".to_string())],
            histogram_of(row),
            "{row}"
        );
    }

    // The timeline: one point per interval record, each series computed here from the record.
    let intervals: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["type"] == "interval").collect();
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let expect: [(&str, Vec<f64>); 4] = [
        (
            "syscalls/s",
            intervals
                .iter()
                .map(|r| {
                    let calls: u64 = r["syscalls"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| u(&s["count"]))
                        .sum();
                    calls as f64 * 1000.0 / u(&r["window_ms"]).max(1) as f64
                })
                .collect(),
        ),
        (
            "syncfs p99",
            intervals
                .iter()
                .map(|r| {
                    r["fsync"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|f| f["syscall"] == "syncfs")
                        .map(|f| u(&f["p99_ns"]))
                        .max()
                        .unwrap_or(0) as f64
                })
                .collect(),
        ),
        (
            "connections",
            intervals
                .iter()
                .map(|r| r["tcp"]["connections"].as_array().unwrap().len() as f64)
                .collect(),
        ),
        (
            "mappings",
            intervals
                .iter()
                .map(|r| u(&r["mmap"]["live_mappings"]) as f64)
                .collect(),
        ),
    ];
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (series, values) in expect {
        assert_eq!(lines[series], values, "{series}");
    }
    assert!(
        lines["syncfs p99"].iter().any(|&v| v > 0.0),
        "the workload's syncfs thread shows"
    );
}

#[test]
fn bundle_of_the_lavinmq_workload_holds_its_dump_resources_and_trace() {
    require_root();
    let mut w = Workload::lavinmq()
        .flag("queues", 3)
        .segments(2)
        .flag("delete", 1)
        .syncfs(5)
        .flag("gc-bursts", 4)
        .switch("wait")
        .spawn();
    w.go();
    let data_dir = w
        .next_line()
        .unwrap()
        .strip_prefix("data-dir ")
        .unwrap()
        .to_string();
    w.wait_done();
    let tmp = tempfile::tempdir().unwrap();
    let (files, stderr) = bundle(
        tmp.path(),
        &["--pid", &w.pid.to_string(), "--duration", "2s"],
    );
    for f in EVERY_FILE {
        assert!(files.contains_key(f), "{f} missing: {:?}", files.keys());
    }
    assert!(files.contains_key("config/NONE.txt"), "{:?}", files.keys());

    // usr1.txt is exactly what the workload wrote to its stdout in the window: one dump.
    let usr1 = files["usr1.txt"]
        .split("\n----- journalctl")
        .next()
        .unwrap();
    let mut written = String::new();
    for _ in 0..6 {
        written.push_str(&w.next_line().unwrap());
        written.push('\n');
    }
    assert_eq!(usr1, written, "stderr: {stderr}");
    assert!(
        usr1.starts_with("GC\n  garbage collection cycle number: 4\n"),
        "{usr1}"
    );

    // Resources equal /proc now (the workload is idle, waiting on stdin).
    let r = &files["resources.txt"];
    let pid = w.pid;
    assert_eq!(figure(r, "data dir"), data_dir);
    assert_eq!(
        figure(r, "fds open"),
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
            .to_string()
    );
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert_eq!(figure(r, "mappings"), maps.lines().count().to_string());
    let shared = maps
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.ends_with('s'))
        })
        .count();
    // 2 kept queues × 2 segments × (msgs + acks) mapped shared.
    assert_eq!(shared, 8);
    assert!(figure(r, "mappings file shared").starts_with("8 "), "{r}");
    assert_eq!(
        figure(r, "max_map_count"),
        fs::read_to_string("/proc/sys/vm/max_map_count")
            .unwrap()
            .trim()
    );
    assert_eq!(figure(r, "VmSize kB"), status_field(pid, "VmSize:"));
    assert_eq!(figure(r, "VmRSS kB"), status_field(pid, "VmRSS:"));
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(figure(r, "open files limit"), soft);
    // The data dir's filesystem and its allocated bytes, from coreutils (stat -f: total
    // blocks and the fundamental block size; du: allocated bytes).
    let stat = Command::new("stat")
        .args(["-f", "-c", "%b %S", &data_dir])
        .output()
        .unwrap();
    let stat = String::from_utf8(stat.stdout).unwrap();
    let (blocks, size) = stat.trim().split_once(' ').unwrap();
    let total = blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap();
    assert_eq!(figure(r, "disk size bytes"), total.to_string());
    let du = Command::new("du")
        .args(["-s", "-B1", &data_dir])
        .output()
        .unwrap();
    let du = String::from_utf8(du.stdout).unwrap();
    assert_eq!(
        figure(r, "data dir bytes"),
        du.split_whitespace().next().unwrap()
    );
    assert!(
        !r.contains("listening: ") && !r.contains("connections "),
        "no sockets: {r}"
    );
    // The largest queues carry their names, not their hashes.
    for q in ["perf-test-2", "perf-test-3"] {
        assert!(r.contains(&format!("queue {q}")), "{r}");
        assert!(r.contains(&format!("queue {q} · msgs.0000000001")), "{r}");
    }
    assert!(!r.contains("perf-test-1"), "deleted queue listed: {r}");

    // The version: the workload's binary is lavtrace-workload, which the report says is not
    // LavinMQ.
    let version = Command::new(common::workload_binary())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let report = &files["report.md"];
    assert!(
        report.contains(&format!("--version` printed `{version}`")),
        "{report}"
    );
    assert!(report.contains("- Version: not LavinMQ"), "{report}");
    for heading in [
        "## Summary",
        "## Environment",
        "## Reproduction Steps",
        "## Expected Behavior",
        "## Actual Behavior",
        "## Logs and Diagnostics",
        "## Stack Trace",
    ] {
        assert!(report.contains(heading), "{heading}");
    }

    // The trace is trace's own JSON: attached, intervals, a summary of this pid with no loss.
    let records: Vec<serde_json::Value> = files["trace.json"]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records[0]["type"], "attached");
    assert_eq!(
        records[0]["probes"],
        serde_json::json!(["syscalls", "fsync", "mmap", "tcp", "amqp", "gc"])
    );
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["pid"], pid);
    assert_eq!(
        summary["mmap"]["live_mappings"],
        maps.lines().count() as u64
    );
    assert!(
        files["trace.txt"].contains("SYSCALL"),
        "{}",
        files["trace.txt"]
    );
    w.finish();
}

#[test]
fn report_html_plots_what_the_trace_measured() {
    require_root();
    // Busy while traced this time: its durability calls, syncfs and mappings are on the page.
    let mut w = Workload::lavinmq()
        .flag("queues", 3)
        .segments(2)
        .syncfs(50)
        .switch("wait")
        .spawn();
    let tmp = tempfile::tempdir().unwrap();
    let child = start_bundle(
        tmp.path(),
        &["--pid", &w.pid.to_string(), "--duration", "4s"],
    );
    wait_for_traces(&child);
    w.go();
    // Its data dir line and the SIGUSR1 dump come before or among the work's output.
    w.lines_until_done();
    let (files, _) = finish_bundle(tmp.path(), child);
    let records: Vec<serde_json::Value> = files["trace.json"]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    check_in_chromium(&files["report.html"], tmp.path(), &records);
    w.finish();
}

#[test]
fn a_target_that_ignores_or_would_die_of_sigusr1_is_not_signalled_and_the_bundle_completes() {
    require_root();
    let version = Command::new("sleep").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    for (script, says) in [
        // Ignored SIGUSR1 survives exec.
        ("trap '' USR1; exec sleep 60", "ignores SIGUSR1"),
        ("exec sleep 60", "does not handle SIGUSR1"),
    ] {
        let mut child = Command::new("sh").args(["-c", script]).spawn().unwrap();
        let pid = child.id();
        // Wait for the exec.
        while fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "sleep\n" {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let tmp = tempfile::tempdir().unwrap();
        let (files, stderr) = bundle(tmp.path(), &["--pid", &pid.to_string(), "--duration", "1s"]);
        assert!(
            alive(pid) && child.try_wait().unwrap().is_none(),
            "{script}: target died"
        );
        for f in EVERY_FILE {
            assert!(files.contains_key(f), "{f} missing");
        }
        assert!(stderr.contains(says), "{stderr}");
        assert!(files["report.md"].contains(says), "{}", files["report.md"]);
        assert!(
            files["report.md"].contains("- Version: not LavinMQ"),
            "{}",
            files["report.md"]
        );
        assert!(
            files["report.md"].contains(&format!("--version` printed `{version}`")),
            "{}",
            files["report.md"]
        );
        let usr1 = files["usr1.txt"]
            .split("\n----- journalctl")
            .next()
            .unwrap();
        assert_eq!(usr1, "");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn no_message_body_password_or_credential_reaches_the_bundle() {
    require_root();
    const BODY: &str = "BODY-MARKER-7f3a";
    const PASSWORD: &str = "PASSWORD-MARKER-91c2";
    let tmp = tempfile::tempdir().unwrap();
    let ini = tmp.path().join("lavinmq.ini");
    fs::write(
        &ini,
        format!(
            "[main]\ndefault_password_hash = {PASSWORD}\ntls_key = /etc/ssl/{PASSWORD}.key\n\
             [clustering]\netcd_endpoints = http://root:{PASSWORD}@127.0.0.1:2379\n[amqp]\nport = 5672\n"
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 65536];
        let mut total = 0usize;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let script = tmp.path().join("broker.py");
    // A broker-like target: catches SIGUSR1 (prints a dump line), sends message bodies on a
    // socket the whole time, and names its config with -c.
    fs::write(
        &script,
        format!(
            "import os, signal, socket, sys, time\n\
             def dump(n, f):\n    print('dump: fine', flush=True)\n    os.writev(1, [b'part one ', b'part two\\n'])\n    os.write(2, b'\\x00\\x01 not text\\n')\n\
             signal.signal(signal.SIGUSR1, dump)\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             l = socket.socket()\n\
             l.bind(('127.0.0.1', 0))\n\
             l.listen()\n\
             print('ready', l.getsockname()[1], flush=True)\n\
             while True:\n    s.sendall(b'{BODY} ' * 64)\n    os.write(1, b'')\n    time.sleep(0.005)\n"
        ),
    )
    .unwrap();
    let mut target = Command::new("python3")
        .arg(&script)
        .arg("-c")
        .arg(&ini)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::Lines::new(target.stdout.take().unwrap());
    let ready = lines.next().unwrap();
    let listening = ready.strip_prefix("ready ").unwrap();
    let pid = target.id();
    let (files, _) = bundle(tmp.path(), &["--pid", &pid.to_string(), "--duration", "2s"]);
    // Its sockets, as it made them: one listener, one connection.
    let r = &files["resources.txt"];
    let tcp: Vec<&str> = r
        .lines()
        .filter(|l| l.starts_with("listening: ") || l.starts_with("connections "))
        .collect();
    assert_eq!(
        tcp,
        [
            format!("listening: 127.0.0.1:{listening}"),
            "connections ESTABLISHED: 1".to_string()
        ],
        "{r}"
    );
    assert_eq!(lines.next().as_deref(), Some("dump: fine"));
    target.kill().unwrap();
    target.wait().unwrap();
    assert!(sink.join().unwrap() > 0, "the target sent bodies");
    let config = &files["config/lavinmq.ini"];
    assert!(config.contains("port = 5672"), "{config}");
    assert_eq!(
        config.matches("[redacted by lavtrace]").count(),
        3,
        "{config}"
    );
    assert!(
        files["usr1.txt"].starts_with("dump: fine\n"),
        "{}",
        files["usr1.txt"]
    );
    for (name, text) in &files {
        assert!(!text.contains(BODY), "a message body in {name}");
        assert!(!text.contains(PASSWORD), "a password in {name}");
    }
}

#[test]
fn a_target_whose_stdout_is_a_tcp_socket_is_neither_signalled_nor_captured() {
    require_root();
    const BODY: &str = "BODY-ON-STDOUT-5e1d";
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = tmp.path().join("relay.py");
    // Its stdout is a client connection: a SIGUSR1 would make it write a body there.
    fs::write(
        &script,
        format!(
            "import os, signal, socket, time\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             signal.signal(signal.SIGUSR1, lambda n, f: os.write(1, b'{BODY}\\n'))\n\
             os.dup2(s.fileno(), 1)\n\
             os.write(1, b'ready\\n')\n\
             while True:\n    time.sleep(0.01)\n"
        ),
    )
    .unwrap();
    let mut target = Command::new("python3").arg(&script).spawn().unwrap();
    let (conn, _) = listener.accept().unwrap();
    let lines = common::Lines::new(conn);
    assert_eq!(lines.next().as_deref(), Some("ready"));
    let pid = target.id();
    let (files, stderr) = bundle(tmp.path(), &["--pid", &pid.to_string(), "--duration", "1s"]);
    assert!(stderr.contains("fd 1 of process"), "{stderr}");
    assert!(stderr.contains("is a TCP socket"), "{stderr}");
    assert!(
        files["report.md"].contains("SIGUSR1 not sent"),
        "{}",
        files["report.md"]
    );
    target.kill().unwrap();
    target.wait().unwrap();
    // Nothing reached the socket after `ready`: the signal was never sent.
    assert_eq!(lines.next(), None);
    for (name, text) in &files {
        assert!(!text.contains(BODY), "a body in {name}");
    }
}

#[test]
fn bad_input_is_one_line_and_its_own_exit_code() {
    let run = |args: &[&str]| {
        Command::new(LAVTRACE)
            .arg("bundle")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--pid", "4294967294", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "lavtrace: error: no process with pid 4294967294\n"
    );
    let out = run(&["--duration", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let me = std::process::id().to_string();
    let out = run(&["--pid", &me, "-o", "/nonexistent-dir/b.tar.gz"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("lavtrace: error: cannot write /nonexistent-dir/b.tar.gz"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn the_dump_is_caught_when_stdout_is_a_file() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("stdout.log");
    let script = tmp.path().join("broker.py");
    fs::write(
        &script,
        "import os, signal, time\n\
         def dump(n, f):\n    os.write(1, b'GC\\n  garbage collection cycle number: 7\\n')\n    \
         os.write(1, b'Fibers:\\n#<Fiber:0x7f03ed046e40: main>\\n')\n\
         signal.signal(signal.SIGUSR1, dump)\n\
         os.write(1, b'started\\n')\n\
         while True:\n    time.sleep(0.01)\n",
    )
    .unwrap();
    let mut target = Command::new("python3")
        .arg(&script)
        .stdout(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = target.id();
    while fs::read_to_string(&log).unwrap() != "started\n" {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (files, _) = bundle(tmp.path(), &["--pid", &pid.to_string(), "--duration", "1s"]);
    target.kill().unwrap();
    target.wait().unwrap();
    let written = fs::read_to_string(&log).unwrap();
    let usr1 = files["usr1.txt"]
        .split("\n----- journalctl")
        .next()
        .unwrap();
    assert_eq!(Some(usr1), written.strip_prefix("started\n"));
    assert!(usr1.starts_with("GC\n"), "{usr1}");
}
