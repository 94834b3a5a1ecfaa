//! `--metrics ADDR` against the real kernel: the endpoint is scraped over HTTP while the
//! target lives, and its figures must match what the workload did exactly, and what the JSON
//! intervals said. A port that cannot be listened on is one line and exit 6, before attaching.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use common::{LAVTRACE, Trace, Workload, free_port, require_root};
use serde_json::Value;

const SEGMENT: u64 = 8 << 20;
const ACKS: u64 = 1_597_832;

/// GET /metrics (HTTP/1.0, so the server closes after the body): (head, body).
fn scrape(port: u16, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    (head.to_string(), body.to_string())
}

/// The value of the sample `name{labels...}` (those labels among others), if exactly one.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().unwrap())
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied()
}

fn get(body: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let v = sample(body, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}:\n{body}"));
    assert_eq!(v.fract(), 0.0, "{name} {labels:?} = {v}");
    v as u64
}

/// Reads interval records until `done(sums)` holds, `sums` adding up `key(record)` per name.
fn until(
    trace: &Trace,
    key: impl Fn(&Value) -> Vec<(String, u64)>,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    // lavtrace reports every interval, so a figure that never comes in would loop forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done(&sums) {
        assert!(
            std::time::Instant::now() < deadline,
            "the figures did not come in within 30 s: {sums:?}"
        );
        let line = trace.lines.next().expect("lavtrace ended early");
        let r: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(
            r["type"], "summary",
            "ended before the figures were in: {sums:?}"
        );
        if r["type"] == "interval" {
            for (k, n) in key(&r) {
                *sums.entry(k).or_default() += n;
            }
        }
    }
    sums
}

/// Traces `target` (`--probes PROBES`, 100 ms intervals) serving `--metrics` on a free port, in
/// the address form `addr` writes.
fn with_metrics(target: &Workload, probes: &str, addr: fn(u16) -> String) -> (Trace, u16) {
    let port = free_port();
    let trace = Trace::of(target)
        .probes(probes)
        .interval("100ms")
        .flag("metrics", addr(port))
        .spawn();
    (trace, port)
}

#[test]
fn syscall_counters_and_histograms_match_the_workload() {
    require_root();
    // The sleep keeps the target alive (and idle) while we scrape.
    let mut target = Workload::syscalls()
        .getppid(5000)
        .bad_close(37)
        .sleep("3s")
        .spawn();
    let (trace, port) = with_metrics(&target, "syscalls", |port| format!("127.0.0.1:{port}"));
    let pid = target.pid.to_string();
    target.go();
    let sums = until(
        &trace,
        |r| {
            let mut out = vec![("intervals".to_string(), 1)];
            for row in r["syscalls"].as_array().unwrap() {
                let name = row["name"].as_str().unwrap();
                out.push((name.to_string(), row["count"].as_u64().unwrap()));
                out.push((format!("{name}.errors"), row["errors"].as_u64().unwrap()));
                out.push((format!("{name}.ns"), row["total_ns"].as_u64().unwrap()));
            }
            out
        },
        |s| s.get("getppid") == Some(&5000) && s.get("close.errors") == Some(&37),
    );

    let (head, body) = scrape(port, Some("application/openmetrics-text"));
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let comm = trace.attached["target"]["comm"]
        .as_str()
        .unwrap()
        .to_string();
    let of = |syscall: &'static str| [("comm", comm.as_str()), ("syscall", syscall)];

    assert_eq!(get(&body, "lavtrace_syscalls_total", &of("getppid")), 5000);
    assert_eq!(
        get(&body, "lavtrace_syscall_errors_total", &of("getppid")),
        0
    );
    assert_eq!(
        get(&body, "lavtrace_syscall_errors_total", &of("close")),
        37
    );
    assert!(get(&body, "lavtrace_syscalls_total", &of("close")) >= 37);
    // The histogram holds every call: _count, the +Inf bucket, and buckets never decrease.
    let hist = "lavtrace_syscall_latency_seconds";
    assert_eq!(get(&body, &format!("{hist}_count"), &of("getppid")), 5000);
    let inf = [
        ("le", "+Inf"),
        ("comm", comm.as_str()),
        ("syscall", "getppid"),
    ];
    assert_eq!(get(&body, &format!("{hist}_bucket"), &inf), 5000);
    let buckets: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{hist}_bucket{{")) && l.contains("\"getppid\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 32, "one per kernel log2 bucket");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert!(buckets[0] < 5000.0, "a getppid does not take 2ns");
    // _sum: the same nanoseconds the intervals reported.
    let sum = sample(&body, &format!("{hist}_sum"), &of("getppid")).unwrap();
    let ns = sums["getppid.ns"] as f64;
    assert!(
        (sum * 1e9 - ns).abs() <= ns * 1e-9 + 1.0,
        "{sum} s vs {ns} ns"
    );

    let labels = [("comm", comm.as_str())];
    assert!(get(&body, "lavtrace_intervals_total", &labels) >= sums["intervals"]);
    let info = [("comm", comm.as_str()), ("pid", pid.as_str())];
    assert_eq!(get(&body, "lavtrace_target_info", &info), 1);
    let lost = [("comm", comm.as_str()), ("family", "syscalls")];
    assert_eq!(get(&body, "lavtrace_lost_events_total", &lost), 0);
    assert!(sample(&body, "lavtrace_rss_bytes", &labels).unwrap() > 0.0);
    assert!(sample(&body, "lavtrace_cpu_seconds_total", &labels).is_some());
    let enter = [("comm", comm.as_str()), ("program", "syscalls_enter_raw")];
    assert!(get(&body, "lavtrace_bpf_program_runs_total", &enter) >= 5037);

    // The classic text format for clients that do not ask for OpenMetrics: same figures.
    let (head, plain) = scrape(port, None);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(get(&plain, "lavtrace_syscalls_total", &of("getppid")), 5000);
    assert_eq!(
        get(&plain, "lavtrace_syscall_errors_total", &of("close")),
        37
    );

    target.wait_done();
    let records = trace.records();
    assert_eq!(
        common::count(records.last().unwrap(), "getppid"),
        5000,
        "the summary agrees"
    );
}

#[test]
fn durability_and_mapping_series_match_the_workload() {
    require_root();
    const N: u64 = 2;
    let mut target = Workload::storage()
        .segments(N)
        .syncfs(50)
        .fsyncs(3)
        .linger("4s")
        .spawn();
    let (trace, port) = with_metrics(&target, "fsync,mmap", |port| port.to_string());
    let pid = target.pid.to_string();
    target.go();
    let sums = until(
        &trace,
        |r| {
            let mut out = Vec::new();
            for row in r["fsync"].as_array().unwrap() {
                let s = row["syscall"].as_str().unwrap();
                out.push((format!("fsync {s}"), row["count"].as_u64().unwrap()));
            }
            for row in r["mmap"]["syscalls"].as_array().unwrap() {
                let s = row["syscall"].as_str().unwrap();
                out.push((format!("mmap {s}"), row["count"].as_u64().unwrap()));
                out.push((format!("mmap {s} bytes"), row["bytes"].as_u64().unwrap()));
            }
            out
        },
        |s| {
            let n = |k: &str| s.get(k).copied().unwrap_or(0);
            n("fsync syncfs") == 50 && n("fsync msync") == 2 * N && n("mmap munmap") == 2 * N
        },
    );

    // A bare port: served on 127.0.0.1.
    let (_, body) = scrape(port, Some("application/openmetrics-text"));
    let comm = trace.attached["target"]["comm"].as_str().unwrap();
    let p = comm;
    assert_eq!(
        get(&body, "lavtrace_target_info", &[("comm", p), ("pid", &pid)]),
        1
    );
    let hist = "lavtrace_durability_call_latency_seconds_count";
    let dur = |syscall, class| [("comm", p), ("syscall", syscall), ("file_class", class)];
    assert_eq!(get(&body, hist, &dur("syncfs", "data_dir")), 50);
    assert_eq!(get(&body, hist, &dur("fsync", "definitions")), 3);
    assert_eq!(get(&body, hist, &dur("fdatasync", "definitions")), 1);
    let sfr = [
        ("comm", p),
        ("syscall", "sync_file_range"),
        ("flags", "WRITE"),
    ];
    assert_eq!(get(&body, hist, &sfr), 1);
    for flags in ["MS_ASYNC", "MS_SYNC"] {
        let msync = [
            ("comm", p),
            ("syscall", "msync"),
            ("file_class", "segment"),
            ("flags", flags),
        ];
        assert_eq!(get(&body, hist, &msync), N);
    }
    let inf = [
        ("le", "+Inf"),
        ("comm", p),
        ("syscall", "syncfs"),
        ("file_class", "data_dir"),
    ];
    assert_eq!(
        get(
            &body,
            "lavtrace_durability_call_latency_seconds_bucket",
            &inf
        ),
        50
    );
    let errors = "lavtrace_durability_call_errors_total";
    assert_eq!(get(&body, errors, &dur("syncfs", "data_dir")), 0);

    // Mapping calls: N segments and their ack files mapped, grown, advised and unmapped.
    let acks_grown = 2 * ACKS;
    let call = |s| [("comm", p), ("syscall", s)];
    let mmap = |s| {
        (
            get(&body, "lavtrace_mmap_calls_total", &call(s)),
            get(&body, "lavtrace_mmap_errors_total", &call(s)),
            get(&body, "lavtrace_mmap_bytes_total", &call(s)),
        )
    };
    assert_eq!(mmap("mmap"), (2 * N, 0, N * (SEGMENT + ACKS)));
    assert_eq!(mmap("mremap"), (N, 0, N * acks_grown));
    assert_eq!(mmap("munmap"), (2 * N, 0, N * (SEGMENT + acks_grown)));
    assert_eq!(mmap("madvise"), (2 * N, 0, 2 * N * SEGMENT));
    for s in ["mmap", "mremap", "munmap", "madvise"] {
        assert_eq!(
            mmap(s).0,
            sums[&format!("mmap {s}")],
            "{s}: as the intervals said"
        );
        assert_eq!(mmap(s).2, sums[&format!("mmap {s} bytes")], "{s} bytes");
    }
    let max: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let labels = [("comm", p)];
    assert_eq!(get(&body, "lavtrace_vm_max_map_limit", &labels), max);
    assert!(get(&body, "lavtrace_live_mappings", &labels) > 0);
    for family in ["fsync", "mmap"] {
        let lost = [("comm", p), ("family", family)];
        assert_eq!(get(&body, "lavtrace_lost_events_total", &lost), 0);
    }
    // Only the families asked for.
    assert!(!body.contains("lavtrace_syscalls_total"));
    assert!(!body.contains("lavtrace_tcp_"));

    target.wait_done();
    drop(trace);
}

#[test]
fn tcp_gauges_and_counters_match_the_workload() {
    require_root();
    // Connections with known histories (see lavtrace/src/workload/tcp.rs); G stays open and
    // the workload waits for its stdin to close after `done`.
    let mut target = Workload::tcp().spawn();
    let (trace, port) = with_metrics(&target, "tcp", |port| format!(":{port}"));
    let pid = target.pid.to_string();
    target.go();
    target.lines_until_done();
    let listening = std::cell::Cell::new(0);
    let sums = until(
        &trace,
        |r| {
            let tcp = &r["tcp"];
            listening.set(tcp["listening"].as_array().unwrap().len() as u64);
            let mut out = vec![
                ("opened".to_string(), tcp["opened"].as_u64().unwrap()),
                ("closed".to_string(), tcp["closed"].as_u64().unwrap()),
            ];
            for (pair, n) in tcp["transitions"].as_object().unwrap() {
                out.push((pair.clone(), n.as_u64().unwrap()));
            }
            for c in tcp["connections"].as_array().unwrap() {
                out.push(("retransmits".into(), c["retransmits"].as_u64().unwrap()));
            }
            out
        },
        // Everything but G destroyed: the last events are in.
        |s| s.get("opened") == Some(&6) && s.get("closed") == Some(&8),
    );

    let (_, body) = scrape(port, Some("application/openmetrics-text"));
    let comm = trace.attached["target"]["comm"].as_str().unwrap();
    let p = comm;
    assert_eq!(
        get(&body, "lavtrace_target_info", &[("comm", p), ("pid", &pid)]),
        1
    );
    assert!(listening.get() >= 1);
    // Connections by state: G stays ESTABLISHED, the listeners LISTEN, nothing else is open.
    for (s, want) in [
        ("ESTABLISHED", 1),
        ("LISTEN", listening.get()),
        ("SYN_SENT", 0),
        ("SYN_RECV", 0),
        ("FIN_WAIT1", 0),
        ("CLOSE_WAIT", 0),
        ("LAST_ACK", 0),
        ("CLOSE", 0),
    ] {
        let state = [("comm", p), ("state", s)];
        assert_eq!(get(&body, "lavtrace_tcp_connections", &state), want, "{s}");
    }
    let labels = [("comm", p)];
    assert_eq!(
        get(&body, "lavtrace_tcp_connections_opened_total", &labels),
        6
    );
    assert_eq!(
        get(&body, "lavtrace_tcp_connections_closed_total", &labels),
        8
    );
    // A 3000 + G 123 + C 4096 + O 500 sent; A 2000 + C 1024 + D 10 + O 700 received.
    assert_eq!(get(&body, "lavtrace_tcp_sent_bytes_total", &labels), 7719);
    assert_eq!(
        get(&body, "lavtrace_tcp_received_bytes_total", &labels),
        3734
    );
    let resets = |d| [("comm", p), ("direction", d)];
    assert_eq!(
        get(&body, "lavtrace_tcp_resets_total", &resets("sent")),
        1,
        "E"
    );
    assert_eq!(
        get(&body, "lavtrace_tcp_resets_total", &resets("received")),
        1,
        "F"
    );
    let retransmits = get(&body, "lavtrace_tcp_retransmits_total", &labels);
    assert!(retransmits >= 1, "R's SYN");
    assert_eq!(retransmits, sums["retransmits"]);
    // Every transition, as the intervals counted them.
    let mut exposed = 0;
    for (pair, &n) in sums.iter().filter(|(k, _)| k.contains("->")) {
        let (from, to) = pair.split_once("->").unwrap();
        let t = [("comm", p), ("from", from), ("to", to)];
        assert_eq!(
            get(&body, "lavtrace_tcp_transitions_total", &t),
            n,
            "{pair}"
        );
        exposed += 1;
    }
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("lavtrace_tcp_transitions_total{"))
            .count(),
        exposed
    );
    let accepted = [("comm", p), ("from", "SYN_RECV"), ("to", "ESTABLISHED")];
    assert_eq!(
        get(&body, "lavtrace_tcp_transitions_total", &accepted),
        4,
        "C D E F"
    );
    let connected = [("comm", p), ("from", "CLOSE"), ("to", "SYN_SENT")];
    assert_eq!(
        get(&body, "lavtrace_tcp_transitions_total", &connected),
        2,
        "O R"
    );

    assert_eq!(
        get(&body, "lavtrace_tcp_connections_evicted_total", &labels),
        0,
        "nine connections: none dropped from the table"
    );

    drop(trace);
    target.finish();
}

/// Many short connections, 20 ms intervals: the counters are the exact sums of what happened
/// (openings drained after their interval was reported count in the next one, not in none),
/// and the closed connections dropped from lavtrace's table are counted.
#[test]
fn tcp_counters_stay_exact_under_connection_churn() {
    require_root();
    // Both ends are the target's: 2 sockets per connection (lavtrace-workload/src/churn.rs).
    let n = 600;
    let mut target = Workload::tcp_churn(n).switch("hold").spawn();
    let port = free_port();
    let trace = Trace::of(&target)
        .probes("tcp")
        .interval("20ms")
        .flag("metrics", format!(":{port}"))
        .spawn();
    target.go();
    target.wait_done();
    let sums = until(
        &trace,
        |r| {
            let tcp = &r["tcp"];
            let mut out: Vec<(String, u64)> = ["opened", "closed", "evicted"]
                .iter()
                .map(|k| (k.to_string(), tcp[k].as_u64().unwrap()))
                .collect();
            for (pair, n) in tcp["transitions"].as_object().unwrap() {
                out.push((pair.clone(), n.as_u64().unwrap()));
            }
            out
        },
        |s| s.get("closed") == Some(&(2 * n)),
    );
    let (_, body) = scrape(port, None);
    let comm = trace.attached["target"]["comm"].as_str().unwrap();
    let labels = [("comm", comm)];
    let total = |name| get(&body, name, &labels);
    assert_eq!(total("lavtrace_tcp_connections_opened_total"), 2 * n);
    assert_eq!(total("lavtrace_tcp_connections_closed_total"), 2 * n);
    assert_eq!(sums["opened"], 2 * n);
    let transition = |from, to| {
        get(
            &body,
            "lavtrace_tcp_transitions_total",
            &[("comm", comm), ("from", from), ("to", to)],
        )
    };
    // The openings are exactly the connect and accept transitions.
    assert_eq!(transition("CLOSE", "SYN_SENT"), n);
    assert_eq!(transition("SYN_RECV", "ESTABLISHED"), n);
    assert_eq!(
        transition("ESTABLISHED", "CLOSE"),
        n,
        "the reset half, both ends"
    );
    assert_eq!(transition("LAST_ACK", "CLOSE"), n / 2);
    let evicted = total("lavtrace_tcp_connections_evicted_total");
    assert_eq!(evicted, sums["evicted"]);
    // CLOSED_KEPT (256) stay listed; the rest went once an interval had listed them.
    assert_eq!(evicted, 2 * n - 256);
    let established = [("comm", comm), ("state", "ESTABLISHED")];
    assert_eq!(get(&body, "lavtrace_tcp_connections", &established), 0);
    drop(trace);
    target.finish();
}

/// The next record of type `kind`, skipping others.
fn next_of(trace: &Trace, kind: &str) -> Value {
    loop {
        let line = trace.lines.next().expect("lavtrace ended early");
        let r: Value = serde_json::from_str(&line).unwrap();
        if r["type"] == kind {
            return r;
        }
    }
}

/// Intervals until their getppid counts add up to `n`.
fn getppid_until(trace: &Trace, n: u64) {
    let mut seen = 0;
    while seen < n {
        seen += common::count(&next_of(trace, "interval"), "getppid");
    }
    assert_eq!(seen, n);
}

#[test]
fn follow_keeps_the_series_across_a_restart_with_the_new_pid_in_the_info() {
    require_root();
    let name = format!("lvt-met{}", std::process::id() % 100_000);
    let spawn = |getppid: u64| {
        Workload::syscalls()
            .named(&name)
            .getppid(getppid)
            .sleep("1s")
            .spawn()
    };
    // The same series before and after the restart; only the info metric's pid changes.
    let calls = |body: &str, pid: u32| {
        let pid = pid.to_string();
        let info = sample(
            body,
            "lavtrace_target_info",
            &[("comm", &name), ("pid", &pid)],
        );
        assert_eq!(info, Some(1.0), "{body}");
        sample(
            body,
            "lavtrace_syscalls_total",
            &[("comm", &name), ("syscall", "getppid")],
        )
    };
    let mut first = spawn(100);
    let port = free_port();
    let trace = Trace::comm(&name)
        .switch("follow")
        .probes("syscalls")
        .interval("100ms")
        .flag("metrics", port)
        .spawn();
    first.go();
    getppid_until(&trace, 100);
    let (_, body) = scrape(port, None);
    assert_eq!(calls(&body, first.pid), Some(100.0));
    first.wait_done();
    let first_pid = first.pid;
    first.finish();

    // The broker restarts: same name, new pid.
    let mut second = spawn(200);
    let restart = next_of(&trace, "restart");
    assert_eq!(restart["pid"], second.pid);
    next_of(&trace, "attached");
    second.go();
    getppid_until(&trace, 200);
    let (_, body) = scrape(port, None);
    assert_eq!(calls(&body, second.pid), Some(200.0), "counted from 0");
    let old = first_pid.to_string();
    assert_eq!(
        sample(&body, "lavtrace_target_info", &[("pid", &old)]),
        None,
        "the old pid is gone"
    );
    second.wait_done();
    drop(trace);
}

fn run_with_metrics(addr: &str) -> (i32, String, String) {
    let out = Command::new(LAVTRACE)
        .args(["trace", "--pid", &std::process::id().to_string()])
        .args(["--duration", "2s", "--metrics", addr])
        .output()
        .expect("running lavtrace");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_taken_metrics_port_is_one_line_and_exit_6_before_attaching() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stdout, stderr) = run_with_metrics(&addr);
    assert_eq!(code, 6, "{stderr}");
    assert_eq!(stdout, "", "nothing attached, nothing reported");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [format!(
            "lavtrace: error: --metrics {addr}: cannot listen: Address already in use (os error 98)"
        )]
    );
    // An address of no interface of this host: same.
    let (code, _, stderr) = run_with_metrics("192.0.2.1:9464");
    assert_eq!(code, 6, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot listen: Cannot assign requested address"),
        "{stderr}"
    );
    drop(taken);
}

#[test]
fn a_malformed_metrics_address_is_bad_usage() {
    let (code, stdout, stderr) = run_with_metrics("localhost:http");
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("expected PORT, :PORT or ADDRESS:PORT"),
        "{stderr}"
    );
}
