//! End to end against a real broker: RabbitMQ (Debian's package), traced while a real AMQP
//! client (lapin, in the workload's `amqp` mode) publishes persistent messages with confirms
//! and consumes them.

mod common;

use common::{Trace, Workload, count, rabbitmq::RabbitMq, require_root};
use serde_json::Value;

const CONNECTIONS: u32 = 3;
const MESSAGES: u64 = 600;
const MARKER: u64 = 4242;

#[test]
fn traces_a_real_broker_under_a_real_client() {
    require_root();
    let broker = RabbitMq::start();
    let mut client = Workload::amqp(&broker.url())
        .flag("connections", CONNECTIONS)
        .flag("messages", MESSAGES)
        .flag("size", 2048)
        .flag("marker-getppid", MARKER)
        .spawn();
    let trace = Trace::pid(broker.pid).interval("500ms").spawn();
    assert_eq!(trace.attached["target"]["comm"], "beam.smp");

    client.go();
    let stats = client.next_line().expect("client stats");
    let stats: Value = serde_json::from_str(stats.strip_prefix("stats ").expect("stats line"))
        .expect("stats JSON");
    client.wait_done();
    assert_eq!(stats["connections"], CONNECTIONS);
    assert_eq!(stats["published"], MESSAGES);
    assert_eq!(
        stats["confirmed"], MESSAGES,
        "every persistent publish confirmed"
    );
    assert_eq!(stats["consumed"], MESSAGES);
    client.finish();

    trace.signal(libc::SIGINT);
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "signal");

    // The client's marker calls are its own: none may be counted as the broker's.
    assert_eq!(
        count(summary, "getppid"),
        0,
        "client syscalls leaked into the broker's"
    );
    // Confirms of persistent messages force the broker to sync to disk.
    let syncs = count(summary, "fsync") + count(summary, "fdatasync");
    assert!(
        syncs > 0,
        "no fsync/fdatasync from a broker confirming persistent messages"
    );
    // The broker did the network side of the exchange.
    let socket_io: u64 = ["recvfrom", "writev", "sendmsg", "sendto", "read", "write"]
        .iter()
        .map(|s| count(summary, s))
        .sum();
    assert!(
        socket_io >= MESSAGES,
        "{socket_io} socket calls for {MESSAGES} messages"
    );
    // Exactly the client's connections, accepted on the broker's AMQP port, each opened and
    // closed while traced, carrying the messages' bytes.
    let port = format!(":{}", broker.port);
    let tcp = &summary["tcp"];
    let amqp: Vec<&Value> = tcp["connections"]
        .as_array()
        .expect("tcp connections")
        .iter()
        .filter(|c| c["local"].as_str().unwrap().ends_with(&port))
        .collect();
    assert_eq!(amqp.len(), CONNECTIONS as usize, "connections: {amqp:#?}");
    let body = MESSAGES * 2048;
    let mut received = 0;
    for c in &amqp {
        assert_eq!(c["origin"], "accept", "{c}");
        let transitions: Vec<String> = c["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}->{}",
                    t["from"].as_str().unwrap(),
                    t["to"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            transitions.first().map(String::as_str),
            Some("SYN_RECV->ESTABLISHED"),
            "{c}"
        );
        assert_eq!(c["state"], "CLOSE", "closed at the end: {c}");
        assert!(!c["closed_by"].is_null(), "who closed is known: {c}");
        received += c["bytes_received"].as_u64().unwrap();
        assert!(c["bytes_sent"].as_u64().unwrap() > 0, "{c}");
    }
    // Every body crossed one of them once, plus AMQP framing: same order of magnitude.
    assert!(
        (body..3 * body).contains(&received),
        "{received} bytes received for {body} bytes of bodies: {amqp:#?}"
    );
    for (family, lost) in summary["lost_events"].as_object().unwrap() {
        assert_eq!(lost, 0, "{family} lost events at this rate");
    }
    drop(broker);
}

#[test]
fn demo_traces_the_broker_behind_an_amqp_url() {
    require_root();
    let broker = RabbitMq::start();
    let records = common::lavtrace_json(&["demo", "--amqp", &broker.url(), "--duration", "4s"]);
    assert_eq!(records[0]["target"]["pid"], broker.pid);
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "duration");
    // The built-in client connected at least once and published persistent messages.
    let port = format!(":{}", broker.port);
    let accepted = summary["tcp"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["local"].as_str().unwrap().ends_with(&port) && c["origin"] == "accept")
        .count();
    assert!(accepted >= 3, "{accepted} client connections");
    assert!(count(summary, "fsync") + count(summary, "fdatasync") > 0);
}

/// Client ports of `pid`'s TCP connections to `port`, from /proc: its socket inodes
/// (/proc/PID/fd) looked up in its network namespace's /proc/PID/net/tcp.
fn client_ports(pid: u32, port: u16) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let mut ports: Vec<u16> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex_port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            (inodes.contains(f[9]) && hex_port(f[2])? == port)
                .then(|| hex_port(f[1]))
                .flatten()
        })
        .collect();
    ports.sort_unstable();
    ports
}

/// Many long-lived connections, opened before lavtrace attaches, a persistent confirm load on
/// a few of them: the broker's connection table lists each of them exactly once, by its
/// client port, with nothing lost and lavtrace's memory bounded. (CI size; `HELD` can go to
/// thousands by hand.)
#[test]
fn a_thousand_connections_held_through_attach_are_each_listed_once() {
    require_root();
    const HELD: u32 = 1000;
    const LOADED: u32 = 10;
    const MESSAGES: u64 = 2000;
    let broker = RabbitMq::start();
    let mut client = Workload::amqp(&broker.url())
        .flag("held", HELD)
        .flag("connections", LOADED)
        .flag("messages", MESSAGES)
        .flag("confirm-window", 100)
        .switch("wait-before-close")
        .spawn();
    // Ground truth, before anyone traces: the client's own sockets to the broker.
    let ports = client_ports(client.pid, broker.port);
    assert_eq!(ports.len(), HELD as usize, "client sockets from /proc");
    let trace = Trace::pid(broker.pid).interval("1s").spawn();
    client.go();
    let stats = client.next_line().expect("client stats");
    let stats: Value = serde_json::from_str(stats.strip_prefix("stats ").unwrap()).unwrap();
    assert_eq!(stats["confirmed"], MESSAGES, "{stats}");
    assert_eq!(stats["connections"], LOADED);
    // Every connection still open: the trace ends here.
    trace.signal(libc::SIGINT);
    let records = trace.records();
    client.finish();
    let summary = records.last().unwrap();
    let suffix = format!(":{}", broker.port);
    let mut listed: Vec<u16> = summary["tcp"]["connections"]
        .as_array()
        .expect("tcp connections")
        .iter()
        .filter(|c| c["local"].as_str().unwrap().ends_with(&suffix))
        .map(|c| {
            let remote = c["remote"].as_str().unwrap();
            remote.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ports, "each client connection exactly once");
    for (family, lost) in summary["lost_events"].as_object().unwrap() {
        assert_eq!(lost, 0, "{family} lost events");
    }
    let rss = summary["overhead"]["lavtrace_rss_bytes"].as_u64().unwrap();
    eprintln!(
        "lavtrace with {HELD} connections: RSS {rss} B, CPU {} ns over {} ms",
        summary["overhead"]["lavtrace_cpu_ns"], summary["duration_ms"]
    );
    assert!(
        rss < 64 << 20,
        "lavtrace RSS {rss} bytes with {HELD} connections"
    );
    drop(broker);
}
