//! Family `amqp` against the real kernel: the frames of a broker-shaped server of known
//! traffic (`lavtrace-workload amqp-frames`) must come out exactly, per connection and
//! method, through every socket call it uses, with frames split down to one byte per
//! syscall and 16 KiB writes of hundreds of frames; a connection open before attach is
//! counted from its first whole frame with its unsynced bytes reported; recvmmsg/sendmmsg
//! bytes are counted as unsynced; AMQPS is parsed from the SSL calls, of a Rust server and
//! of a Crystal one on fibers; and no body byte or password reaches the output.
//!
//! `LAVTRACE_AMQP_HOOKS` (kprobe|uprobe|tracepoint|auto, default auto) is passed as `--amqp-hooks`, so the
//! same binary checks the kprobe set on kernels that have kprobes.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{Trace, Workload, free_port, require_root};
use lavtrace_common::start;
use serde_json::Value;

const MARKER: &str = "LAVTRACE-BODY-MARKER-7f3a";

fn hooks_mode() -> String {
    std::env::var("LAVTRACE_AMQP_HOOKS").unwrap_or_else(|_| "auto".into())
}

/// The JSON after `prefix` on the workload's line that starts with it.
fn json_line(lines: &[String], prefix: &str) -> Value {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"));
    serde_json::from_str(line).unwrap()
}

fn row(summary: &Value, pred: impl Fn(&Value) -> bool) -> &Value {
    let conns = summary["amqp"]["connections"]
        .as_array()
        .expect("amqp.connections");
    let found: Vec<&Value> = conns.iter().filter(|c| pred(c)).collect();
    assert_eq!(found.len(), 1, "rows: {conns:#?}");
    found[0]
}

#[test]
fn a_broker_shaped_server_is_counted_frame_by_frame() {
    require_root();
    broker_shaped_server_exact("amqp", &hooks_mode(), false);
}

/// The same server over TLS (AMQPS through the workload's libssl, as LavinMQ links it): the
/// plaintext of its SSL_read/SSL_write and _ex calls gives the same figures exactly, with
/// uprobes at the functions' entries and `ret`s (no uretprobe), and no body byte or password
/// in any output.
#[test]
fn an_amqps_server_is_counted_from_its_ssl_calls_exactly() {
    require_root();
    let vias = broker_shaped_server_exact("amqp", &hooks_mode(), true);
    for f in ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"] {
        assert!(
            vias.iter()
                .any(|v| v.starts_with("uprobe ") && v.contains(&format!(":{f} ("))),
            "no entry probe on {f}: {vias:?}"
        );
        assert!(
            vias.iter().any(|v| v.contains(&format!(":{f}+0x"))),
            "no ret probe in {f}: {vias:?}"
        );
    }
    assert!(
        !vias
            .iter()
            .any(|v| v.starts_with("uretprobe") && v.contains("SSL_")),
        "{vias:?}"
    );
}

/// With the syscalls family on, the session pays the syscall slow path anyway and auto takes
/// the `syscalls:` tracepoints (a program run per data call, where a uprobe traps): the same
/// figures, exactly.
#[test]
fn with_the_syscalls_family_on_auto_takes_the_syscall_tracepoints_and_stays_exact() {
    require_root();
    let vias = broker_shaped_server_exact("syscalls,amqp", "auto", false);
    // The socket calls; the workload's SSL calls are uprobes in every set.
    assert!(
        vias.iter()
            .filter(|v| !v.contains(":SSL_"))
            .all(|v| v.starts_with("tracepoint syscalls:")),
        "{vias:?}"
    );
}

/// The tracepoint set forced on its own (every thread of the host on the slow path).
#[test]
fn the_forced_tracepoint_set_is_exact() {
    require_root();
    broker_shaped_server_exact("amqp", "tracepoint", false);
}

/// `--no-ssl-probes`: the same AMQPS server's connections are counted as TLS, not parsed,
/// with the reason, and no SSL call is probed.
#[test]
fn with_no_ssl_probes_amqps_is_counted_not_parsed() {
    require_root();
    let port = free_port();
    let mut w = Workload::amqp_frames(port)
        .flag("marker", MARKER)
        .switch("tls")
        .spawn();
    let trace = Trace::of(&w)
        .probes("amqp")
        .flag("amqps-port", port)
        .switch("no-ssl-probes")
        .interval("200ms")
        .spawn();
    let vias: Vec<String> = trace
        .hooks(Some("amqp"))
        .into_iter()
        .map(|(_, via)| via.to_string())
        .collect();
    assert!(!vias.iter().any(|v| v.contains("SSL_")), "{vias:?}");
    w.go();
    w.lines_until_done();
    let records = trace.records();
    let amqp = &records.last().unwrap()["amqp"];
    // The pre connection, seen at attach; the main one at a poll while it lived.
    assert!(amqp["tls_not_parsed"].as_u64().unwrap() >= 1, "{amqp:#}");
    assert_eq!(amqp["tls_not_parsed_why"], "--no-ssl-probes", "{amqp:#}");
    assert_eq!(amqp["tls_parsed_from"], Value::Null, "{amqp:#}");
    assert_eq!(amqp["connections"].as_array().unwrap().len(), 0, "{amqp:#}");
}

/// LavinMQ's own shape of AMQPS: a Crystal server (Debian's `crystal`, its OpenSSL::SSL
/// sockets on the system's libssl) with every connection on a fiber of one thread, each
/// waiting inside SSL_read while the others run (`tests/amqp/tls_server.cr`). Its client
/// fibers, in the same process, make SSL calls on sockets that are no AMQPS connection. Every
/// connection's figures are exact, none takes another's bytes, and the server is unharmed
/// (a uretprobe on SSL_read would get it killed).
#[test]
fn a_crystal_amqps_server_on_fibers_is_counted_exactly_and_unharmed() {
    require_root();
    const CONNECTIONS: u64 = 8;
    const PUBLISHES: u64 = 20;
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (cert, key) = (tmp.join("amqps-cert.pem"), tmp.join("amqps-key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (is it installed? cargo xtask setup --test)");
    assert!(made.status.success(), "openssl req: {made:?}");
    let program = tmp.join("amqps-crystal");
    let built = Command::new("crystal")
        .args(["build", "-o"])
        .arg(&program)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/amqp/tls_server.cr"))
        .env("CRYSTAL_CACHE_DIR", tmp.join("crystal-cache"))
        .status()
        .expect("running crystal (is it installed? cargo xtask setup --test)");
    assert!(built.success(), "crystal could not build tls_server.cr");
    let port = free_port();
    let mut cmd = Command::new(&program);
    cmd.arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(CONNECTIONS.to_string())
        .arg(PUBLISHES.to_string())
        .arg(MARKER);
    let mut server = start::spawn(&mut cmd, Duration::from_secs(30)).expect("starting it");
    let trace = Trace::pid(server.pid())
        .probes("amqp")
        .flag("amqps-port", port)
        .spawn();
    server.go().unwrap();
    server.wait_done(Duration::from_secs(60)).unwrap();
    let status = server.child().wait().unwrap();
    assert!(status.success(), "the traced server ended with {status}");
    let records = trace.records();
    let text: String = records.iter().map(|r| r.to_string()).collect();
    assert!(!text.contains(MARKER), "a body reached the output");
    let amqp = &records.last().unwrap()["amqp"];
    assert_eq!(amqp["lost"].as_u64().unwrap_or(0), 0, "{amqp:#}");
    assert_eq!(amqp["tls_not_parsed"], 0, "{amqp:#}");
    let rows = amqp["connections"].as_array().unwrap();
    assert_eq!(rows.len() as u64, CONNECTIONS, "{amqp:#}");
    for c in rows {
        assert_eq!(c["tls"], true, "{c:#}");
        assert_eq!(c["published"], PUBLISHES, "{c:#}");
        assert_eq!(c["confirmed"], PUBLISHES, "{c:#}");
        // channel.open, confirm.select, 3 frames a publish, connection.close; an ack each
        // and close-ok.
        assert_eq!(c["frames_in"], 3 * PUBLISHES + 3, "{c:#}");
        assert_eq!(c["frames_out"], PUBLISHES + 1, "{c:#}");
        assert_eq!(c["methods"]["in"]["basic.publish"], PUBLISHES, "{c:#}");
        assert_eq!(c["methods"]["out"]["basic.ack"], PUBLISHES, "{c:#}");
        assert_eq!(c["methods"]["in"].as_object().unwrap().len(), 4, "{c:#}");
        assert_eq!(c["methods"]["out"].as_object().unwrap().len(), 2, "{c:#}");
        assert_eq!(
            (c["unsynced_bytes"].as_u64(), c["desyncs"].as_u64()),
            (Some(0), Some(0)),
            "{c:#}"
        );
        assert_eq!(c["unconfirmed"], 0, "{c:#}");
    }
}

/// Runs `lavtrace-workload amqp-frames` (`--tls`: over TLS) under `--probes probes
/// --amqp-hooks hooks`, checks every figure against the workload's own account, and returns
/// how the amqp hooks were attached.
fn broker_shaped_server_exact(probes: &str, hooks: &str, tls: bool) -> Vec<String> {
    let (port, tls_port) = (free_port(), free_port());
    let w = Workload::amqp_frames(port).flag("marker", MARKER);
    let mut w = if tls {
        w.switch("tls")
    } else {
        w.flag("tls-port", tls_port)
    }
    .spawn();
    let trace = Trace::of(&w)
        .probes(probes)
        .flag(if tls { "amqps-port" } else { "amqp-port" }, port)
        .flag("amqps-port", tls_port)
        .flag("amqp-hooks", hooks)
        .spawn();
    let vias: Vec<String> = trace
        .hooks(Some("amqp"))
        .into_iter()
        .map(|(_, via)| via.to_string())
        .collect();
    assert!(!vias.is_empty(), "no amqp hooks: {:?}", trace.attached);
    w.go();
    let lines = w.lines_until_done();
    let stats: Value = json_line(&lines, "stats ");
    let records = trace.records();
    let summary = records.last().unwrap();
    let text: String = records.iter().map(|r| r.to_string()).collect();
    assert!(
        !text.contains(MARKER),
        "the body/password marker reached the output"
    );
    assert!(!text.contains("guest"), "the PLAIN user reached the output");
    let amqp = &summary["amqp"];
    assert_eq!(amqp["lost"].as_u64().unwrap_or(0), 0, "{amqp:#}");
    assert_eq!(amqp["kernel"]["walk_limit"], 0, "{amqp:#}");
    // The workload maps libssl: its AMQPS connections are parsed from its SSL calls.
    assert_eq!(amqp["tls_not_parsed"], 0, "{amqp:#}");
    assert!(
        amqp["tls_parsed_from"]
            .as_str()
            .is_some_and(|l| l.contains("libssl.so")),
        "{amqp:#}"
    );
    if !tls {
        // The plain run's AMQPS connection sends a ClientHello and makes no SSL call: a row
        // with nothing walked.
        let hello = row(summary, |c| c["tls"] == true);
        assert_eq!(
            (hello["frames_in"].as_u64(), hello["frames_out"].as_u64()),
            (Some(0), Some(0)),
            "{hello:#}"
        );
    }
    assert_eq!(
        amqp["connections"].as_array().unwrap().len(),
        if tls { 2 } else { 4 }
    );
    if !tls {
        // recvmmsg/sendmmsg: their bytes unsynced, everything after them counted.
        let ms: Value = json_line(&lines, "mmsg ");
        let m = row(summary, |c| c["vhost"] == ms["vhost"]);
        for k in ["published", "unsynced_bytes", "frames_in", "frames_out"] {
            assert_eq!(m[k], ms[k], "{k}: {m:#}");
        }
        assert_eq!(m["desyncs"], 0, "{m:#}");
        assert_eq!(amqp["kernel"]["mmsg_uncounted"], 0, "{amqp:#}");
    }

    // The main connection, accepted while traced.
    let main = row(summary, |c| {
        c["before_attach"] == false && c["tls"] == tls && c["vhost"] == stats["vhost"]
    });
    let ex = &stats["main"];
    for k in [
        "published",
        "confirmed",
        "nacked",
        "returned",
        "delivered",
        "acked",
        "rejected",
    ] {
        assert_eq!(main[k], ex[k], "{k}: {main:#}");
    }
    assert_eq!(main["unsynced_bytes"], 0, "{main:#}");
    assert_eq!(main["desyncs"], 0);
    assert_eq!(main["frames_in"], stats["main_in"]["frames"], "{main:#}");
    assert_eq!(main["frames_out"], stats["main_out"]["frames"], "{main:#}");
    assert_eq!(main["body_bytes_in"], stats["main_in"]["body_bytes"]);
    assert_eq!(main["body_bytes_out"], stats["main_out"]["body_bytes"]);
    assert_eq!(
        main["methods"]["in"], stats["main_in"]["methods"],
        "{main:#}"
    );
    assert_eq!(
        main["methods"]["out"], stats["main_out"]["methods"],
        "{main:#}"
    );
    assert_eq!(main["heartbeats_in"], 1);
    assert_eq!(main["heartbeats_out"], 1);
    assert_eq!(main["vhost"], stats["vhost"]);
    assert_eq!(main["close"]["code"], 200);
    assert_eq!(main["close"]["text"], stats["close_text"]);
    assert_eq!(main["channels_opened"], 1);
    // Time blocked, from the kernel's clock at the two writes' exits, against the
    // workload's clock (the same CLOCK_MONOTONIC) around the two writes: between the bounds
    // (a slow guest preempted the workload for 6 ms after a write's return).
    assert_eq!(
        (main["blocked"].as_u64(), main["unblocked"].as_u64()),
        (Some(1), Some(1))
    );
    let (seen, wrote) = (
        main["blocked_ns"].as_u64().unwrap(),
        stats["blocked_ns"].as_u64().unwrap(),
    );
    let (min, max) = (
        stats["blocked_ns_min"].as_u64().unwrap(),
        stats["blocked_ns_max"].as_u64().unwrap(),
    );
    assert!(wrote >= 40_000_000, "{wrote}");
    assert!(
        (min..=max).contains(&seen),
        "blocked {seen} ns, the writes bound it to {min}..={max} ns ({wrote} between returns)"
    );
    // publish → confirm: the server confirms after reading all 100 publishes, so only the
    // last 32 (the channel's ring) have their publish time: exactly those are timed, the
    // other confirmed or nacked ones untimed, none guessed.
    assert_eq!(main["confirm_latency"]["count"], 32, "{main:#}");
    assert_eq!(
        main["confirm_untimed"].as_u64().unwrap(),
        ex["confirmed"].as_u64().unwrap() + ex["nacked"].as_u64().unwrap() - 32
    );
    // The peer's acks were read before the deliveries were written: none is timed.
    assert_eq!(main["ack_latency"]["count"], 0);
    assert_eq!(
        main["ack_untimed"].as_u64().unwrap(),
        ex["acked"].as_u64().unwrap() + ex["rejected"].as_u64().unwrap()
    );
    assert_eq!(main["unconfirmed"], 0);
    assert_eq!(main["unacked"], 0);
    assert_eq!(main["open"], false);
    assert!(
        main["local"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}")),
        "{main:#}"
    );

    // The connection open before attach: counted from its first whole frame.
    let pre = row(summary, |c| c["before_attach"] == true && c["tls"] == tls);
    assert_eq!(pre["published"], stats["pre_published"], "{pre:#}");
    assert_eq!(
        pre["unsynced_bytes"], stats["pre_unsynced_bytes"],
        "{pre:#}"
    );
    assert_eq!(
        pre["methods"]["in"]["basic.publish"],
        stats["pre_published"]
    );
    assert_eq!(pre["open"], false);
    assert_eq!(pre["vhost"], Value::Null);
    assert_eq!(pre["unconfirmed"], Value::Null);

    let totals = &amqp["totals"];
    // The mmsg connection's 3 (the plain run only).
    let mmsg_published = if tls { 0 } else { 3 };
    assert_eq!(
        totals["published"].as_u64().unwrap(),
        ex["published"].as_u64().unwrap()
            + stats["pre_published"].as_u64().unwrap()
            + mmsg_published
    );
    assert_eq!(totals["delivered"], ex["delivered"]);
    let vh = amqp["vhosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vhost"] == stats["vhost"])
        .expect("the vhost roll-up");
    assert_eq!(vh["connections"], 1);
    assert_eq!(vh["published"], ex["published"]);
    vias
}

/// RabbitMQ (Debian's package) under the project's own lapin client: N persistent publishes
/// in confirm mode with a window of W, then all N consumed with manual acks, on one
/// connection opened after attach; then (`--extras`) 3 publishes to a queue with
/// x-max-length 1 and x-overflow reject-publish (1 confirmed, 2 nacked by the broker), 3 more
/// publishes, and 4 basic.gets: 2 acked, 1 rejected, 1 nacked.
#[test]
fn rabbitmq_publishes_confirms_deliveries_and_acks_are_exact() {
    require_root();
    const N: u64 = 300;
    let broker = common::rabbitmq::RabbitMq::start_with_management();
    let mut client = Workload::amqp(&broker.url())
        .flag("connections", 1)
        .flag("messages", N)
        .flag("size", 512)
        .flag("confirm-window", 25)
        .switch("extras")
        .spawn();
    let trace = Trace::pid(broker.pid)
        .probes("amqp")
        .flag("amqp-port", broker.port)
        .flag("amqp-hooks", hooks_mode())
        .spawn();
    client.go();
    let stats: Value = serde_json::from_str(
        client
            .next_line()
            .expect("client stats")
            .strip_prefix("stats ")
            .expect("stats line"),
    )
    .unwrap();
    client.wait_done();
    client.finish();
    // The client's own view: the broker nacked 2 (the overflow), 4 gets came back.
    assert_eq!(stats["published"], N + 6);
    assert_eq!(stats["confirmed"], N + 4);
    assert_eq!(stats["nacked"], 2);
    assert_eq!(stats["consumed"], N);
    assert_eq!(stats["got"], 4);
    assert_eq!(stats["get_acked"], 2);
    assert_eq!(stats["get_rejected"], 2);
    trace.signal(libc::SIGINT);
    let records = trace.records();
    let summary = records.last().unwrap();
    let conn = row(summary, |c| c["before_attach"] == false);
    assert_eq!(conn["published"], N + 6, "{conn:#}");
    assert_eq!(conn["confirmed"], N + 4, "{conn:#}");
    assert_eq!(conn["nacked"], 2, "{conn:#}");
    assert_eq!(conn["delivered"], N + 4, "{conn:#}");
    assert_eq!(conn["acked"], N + 2, "{conn:#}");
    assert_eq!(conn["rejected"], 2, "{conn:#}");
    assert_eq!(conn["unsynced_bytes"], 0, "{conn:#}");
    assert_eq!(conn["desyncs"], 0);
    let (m_in, m_out) = (&conn["methods"]["in"], &conn["methods"]["out"]);
    assert_eq!(m_in["basic.publish"], N + 6);
    assert_eq!(m_in["basic.get"], 4);
    assert_eq!(m_in["basic.reject"], 1);
    assert_eq!(m_in["basic.nack"], 1);
    assert_eq!(m_out["basic.deliver"], N);
    assert_eq!(m_out["basic.get-ok"], 4);
    assert_eq!(conn["body_bytes_in"], (N + 6) * 512);
    assert_eq!(conn["body_bytes_out"], (N + 4) * 512);
    assert_eq!(conn["vhost"], "/");
    assert_eq!(conn["methods"]["in"]["connection.start-ok"], 1);
    // A window of 25 stays inside the channel's ring of 32 publish times: every confirm is
    // timed. The consumer's prefetch of 100 can outrun the ring: timed + untimed = acked.
    assert_eq!(conn["confirm_latency"]["count"], N + 6, "{conn:#}");
    assert_eq!(conn["confirm_untimed"], 0);
    assert_eq!(
        conn["ack_latency"]["count"].as_u64().unwrap() + conn["ack_untimed"].as_u64().unwrap(),
        N + 4
    );
    assert_eq!(conn["unconfirmed"], 0);
    assert_eq!(conn["unacked"], 0);
    let text: String = records.iter().map(|r| r.to_string()).collect();
    assert!(
        !text.contains("guest"),
        "the PLAIN credentials reached the output"
    );
}
