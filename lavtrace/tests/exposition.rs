//! The `--metrics` exposition checked by Prometheus's own tools against a live
//! `lavtrace demo --metrics`: `promtool check metrics` finds nothing to say, and every PromQL
//! expression of the packaged Grafana dashboard returns data from a real Prometheus
//! (Debian's `prometheus`, run directly with a throwaway config and TSDB) scraping it.
//! Every wait is bounded, and every child is killed when the test ends, pass or fail.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const LAVTRACE: &str = env!("CARGO_BIN_EXE_lavtrace");
const GET_METRICS: &str = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/grafana/lavtrace.json"
);

fn require_root() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests load eBPF programs: run them as root");
}

/// A child killed (and reaped) on drop, so a failed assertion leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One HTTP/1.0 request to 127.0.0.1:port; the body of a 200, else None.
fn http(port: u16, request: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.split(' ')
        .nth(1)
        .is_some_and(|c| c == "200")
        .then(|| body.to_string())
}

/// Polls `f` until it gives a value or `within` passes.
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `lavtrace demo --metrics` for long enough, once its endpoint shows every family.
fn demo() -> (Killed, u16) {
    let port = free_port();
    let child = Command::new(LAVTRACE)
        .args(["demo", "--duration", "120s", "--no-tui", "--format", "json"])
        .args([
            "--interval",
            "500ms",
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting lavtrace demo");
    let child = Killed(child);
    wait_for(Duration::from_secs(30), "every family on /metrics", || {
        let body = http(port, GET_METRICS)?;
        [
            "lavtrace_syscall_latency_seconds_bucket",
            "lavtrace_durability_call_latency_seconds_bucket",
            "lavtrace_live_mappings",
            "lavtrace_tcp_connections",
            "lavtrace_bpf_program_run_seconds_total",
        ]
        .iter()
        .all(|f| body.contains(f))
        .then_some(())
    });
    (child, port)
}

#[test]
fn promtool_finds_nothing_to_fix_in_a_live_scrape() {
    require_root();
    let (_demo, port) = demo();
    // promtool parses the classic text format; OpenMetrics is the same families.
    let body =
        http(port, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("scraping /metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (Debian's prometheus package; `cargo xtask setup --test`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{body}");
    assert_eq!(said.trim(), "", "promtool has remarks on:\n{body}");
    // The pid is an info sample, not a label of every series.
    let info: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("lavtrace_target_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{body}");
    assert!(
        info[0].contains("pid=\"") && info[0].ends_with(" 1"),
        "{}",
        info[0]
    );
    let with_pid = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("lavtrace_target_info"))
        .filter(|l| l.contains("pid=\""))
        .count();
    assert_eq!(with_pid, 0, "only the info sample names the pid:\n{body}");
}

/// Every `expr` in the dashboard, with Grafana's variables as a query would see them.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(DASHBOARD).expect("reading the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target without expr");
            let promql = expr
                .replace("$__rate_interval", "10s")
                .replace("$comm", ".*")
                .replace("$instance", ".*");
            assert!(!promql.contains('$'), "unknown variable in {expr}");
            out.push((panel["title"].as_str().unwrap().to_string(), promql));
        }
    }
    out
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instant-query result of `promql`: its samples' values (NaN kept as NaN).
fn query(port: u16, promql: &str) -> Option<Vec<f64>> {
    let form = format!("query={}", form_encode(promql));
    let body = http(
        port,
        &format!(
            "POST /api/v1/query HTTP/1.0\r\nHost: localhost\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )?;
    let v: Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["status"], "success", "{promql}: {body}");
    Some(
        v["data"]["result"]
            .as_array()?
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect(),
    )
}

#[test]
fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    require_root();
    let exprs = dashboard_expressions();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    let (_demo, metrics) = demo();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: lavtrace\n    static_configs:\n      \
             - targets: ['127.0.0.1:{metrics}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running prometheus (Debian's package; `cargo xtask setup --test`)");
    let _prometheus = Killed(prometheus);
    wait_for(
        Duration::from_secs(30),
        "prometheus scraping lavtrace",
        || query(port, "up{job=\"lavtrace\"} == 1").filter(|v| !v.is_empty()),
    );

    // A rate needs two scrapes in its window and a quantile a window with calls in it: each
    // expression gets until the shared deadline to show a real number.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut empty = Vec::new();
    for (title, promql) in &exprs {
        let got = loop {
            let values = query(port, promql).unwrap_or_default();
            if values.iter().any(|v| v.is_finite()) || Instant::now() > deadline {
                break values;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        if !got.iter().any(|v| v.is_finite()) {
            empty.push(format!("{title}: {promql} -> {got:?}"));
        }
    }
    assert!(empty.is_empty(), "no data for:\n{}", empty.join("\n"));
}
