//! The `tcp` section: JSON rows and the text views (an ss-like table with rates and time in
//! state, a tcpstates-like line per transition, and the summary figures).

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use serde::Serialize;

use super::table::{Conn, LifetimeStats, Origin, Side, service, state_name};
use crate::units;
use crate::units::bytes;

#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub from: String,
    pub to: String,
    /// Since tracing started.
    pub at_ns: u64,
    /// Time spent in `from`; null when its start was not seen.
    pub prev_state_ns: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnRow {
    pub local: String,
    pub remote: String,
    /// LavinMQ name of the local or else the remote port (AMQP, MQTT, HTTP...).
    pub service: Option<&'static str>,
    pub state: String,
    /// `connect` (outgoing), `accept` (incoming), `preexisting` (open before tracing).
    pub origin: &'static str,
    pub open: bool,
    /// Since tracing started; null for pre-existing connections.
    pub opened_at_ns: Option<u64>,
    pub closed_at_ns: Option<u64>,
    /// Open connections: time since opened (null if unknown).
    pub age_ns: Option<u64>,
    /// Closed connections: opened → destroyed (null if opened before tracing).
    pub lifetime_ns: Option<u64>,
    /// Time in the current state (null if its start was not seen).
    pub state_ns: Option<u64>,
    pub transitions: Vec<TransitionRow>,
    /// Payload bytes the peer acknowledged (tcpi_bytes_acked less the SYN and FIN), not bytes
    /// written: what the target wrote and the peer has not acknowledged yet counts later.
    pub bytes_sent: u64,
    /// Payload bytes received in sequence (tcpi_bytes_received less the peer's FIN), read or
    /// not by the target.
    pub bytes_received: u64,
    /// Bytes per second over the window.
    pub send_rate: u64,
    pub receive_rate: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// `local` (the target closed first: FIN_WAIT1, or it reset), `peer` (CLOSE_WAIT, or
    /// a reset received), or null while nobody has.
    pub closed_by: Option<&'static str>,
    /// Smoothed RTT (tcpi_rtt) at the last poll, µs; null when never polled.
    pub rtt_us: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenRow {
    pub local: String,
    pub service: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lifetimes {
    pub count: u64,
    pub min_ns: u64,
    pub avg_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpSection {
    /// Which hook set is in use: `kprobe`, `tracepoint` or `mixed`.
    pub hooks: &'static str,
    pub listening: Vec<ListenRow>,
    pub connections: Vec<ConnRow>,
    /// Transitions in the window, `FROM->TO`.
    pub transitions: BTreeMap<String, u64>,
    /// Connections opened (first seen in SYN_SENT/SYN_RECV) and closed in the window.
    pub opened: u64,
    pub closed: u64,
    /// Of the connections closed in the window whose opening was seen.
    pub lifetimes: Option<Lifetimes>,
    /// Closed connections dropped from the table (after an interval listed them) and kept
    /// only in the counts: in an interval, those dropped after it listed them; in the
    /// summary, all of the run (its `connections` lack them; `opened`, `closed`,
    /// `transitions` and `lifetimes` include them).
    pub evicted: u64,
}

/// The window a row describes: `[start, end]` in CLOCK_MONOTONIC ns; `t0` is the attach time.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub t0: u64,
    pub start: u64,
    pub end: u64,
    /// The whole run (counters since tracking started, every transition).
    pub whole: bool,
}

pub fn conn_row(c: &Conn, w: &Window) -> ConnRow {
    let rel = |t: u64| t.saturating_sub(w.t0);
    let first = if w.whole { 0 } else { c.reported_transitions };
    let base = if w.whole {
        Default::default()
    } else {
        c.reported
    };
    let secs = (w.end.saturating_sub(w.start) as f64 / 1e9).max(1e-9);
    let sent = c.counters.bytes_acked.saturating_sub(base.bytes_acked);
    let received = c
        .counters
        .bytes_received
        .saturating_sub(base.bytes_received);
    let closed_by = c.closed_by().map(|s| match s {
        Side::Local => "local",
        Side::Peer => "peer",
    });
    ConnRow {
        local: c.local.to_string(),
        remote: c.remote.to_string(),
        service: service(c.local.port()).or_else(|| service(c.remote.port())),
        state: state_name(c.state),
        origin: match c.origin {
            Origin::Connect => "connect",
            Origin::Accept => "accept",
            Origin::Preexisting => "preexisting",
        },
        open: c.closed.is_none(),
        opened_at_ns: c.opened.map(rel),
        closed_at_ns: c.closed.map(rel),
        age_ns: match (c.opened, c.closed) {
            (Some(o), None) => Some(w.end.saturating_sub(o)),
            _ => None,
        },
        lifetime_ns: match (c.opened, c.closed) {
            (Some(o), Some(d)) => Some(d.saturating_sub(o)),
            _ => None,
        },
        state_ns: c
            .state_since
            .map(|s| c.closed.unwrap_or(w.end).saturating_sub(s)),
        transitions: c.transitions[first.min(c.transitions.len())..]
            .iter()
            .map(|t| TransitionRow {
                from: state_name(t.from),
                to: state_name(t.to),
                at_ns: rel(t.at),
                prev_state_ns: t.prev_state_ns,
            })
            .collect(),
        bytes_sent: sent,
        bytes_received: received,
        send_rate: (sent as f64 / secs) as u64,
        receive_rate: (received as f64 / secs) as u64,
        retransmits: c.counters.retransmits.saturating_sub(base.retransmits),
        resets_sent: c.counters.resets_sent.saturating_sub(base.resets_sent),
        resets_received: c
            .counters
            .resets_received
            .saturating_sub(base.resets_received),
        closed_by,
        rtt_us: c.rtt_us,
    }
}

pub fn listen_row(addr: &SocketAddr) -> ListenRow {
    ListenRow {
        local: addr.to_string(),
        service: service(addr.port()),
    }
}

impl Lifetimes {
    pub fn of(s: &LifetimeStats) -> Option<Lifetimes> {
        (s.count > 0).then(|| Lifetimes {
            count: s.count,
            min_ns: s.min_ns,
            avg_ns: s.sum_ns / s.count,
            max_ns: s.max_ns,
        })
    }
}

/// `addr`, with the LavinMQ name of its port if it has one.
fn endpoint(addr: &str) -> String {
    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
    match port.and_then(service) {
        Some(s) => format!("{addr} ({s})"),
        None => addr.to_string(),
    }
}

fn opt_ns(v: Option<u64>) -> String {
    v.map_or_else(|| "?".to_string(), units::ns)
}

/// Interval: one line per transition (like tcpstates), then the live table (like ss, with
/// rates and time in state). Summary: every connection of the run with its lifetime, then the
/// transition counts.
/// The open connections: how many, and by state (`CLOSE_WAIT 1, ESTABLISHED 999`); None when
/// none is open.
pub fn open_by_state(s: &TcpSection) -> Option<(usize, String)> {
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for c in s.connections.iter().filter(|c| c.open) {
        *by_state.entry(c.state.as_str()).or_default() += 1;
    }
    let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
    (!states.is_empty()).then(|| (by_state.values().sum(), states.join(", ")))
}

pub fn write_text(out: &mut String, s: &TcpSection, summary: bool, top: usize) {
    let listening: Vec<String> = s.listening.iter().map(|l| endpoint(&l.local)).collect();
    let _ = writeln!(
        out,
        "TCP ({} hooks) · listening: {} · opened {} · closed {}{}",
        s.hooks,
        if listening.is_empty() {
            "-".to_string()
        } else {
            listening.join(", ")
        },
        s.opened,
        s.closed,
        if s.evicted > 0 {
            format!(" · evicted {} (closed, counted, not listed)", s.evicted)
        } else {
            String::new()
        }
    );
    // At a glance with a thousand connections: how many are open, in which state.
    if let Some((n, states)) = open_by_state(s) {
        let _ = writeln!(out, "open: {n} ({states})");
    }
    if !summary {
        let mut lines: Vec<(u64, String)> = Vec::new();
        for c in &s.connections {
            for t in &c.transitions {
                lines.push((
                    t.at_ns,
                    format!(
                        "  t+{:<9} {:<28} {:<24} {:>11} -> {:<11} {:>9}",
                        format!("{:.3}s", t.at_ns as f64 / 1e9),
                        endpoint(&c.local),
                        endpoint(&c.remote),
                        t.from,
                        t.to,
                        opt_ns(t.prev_state_ns)
                    ),
                ));
            }
        }
        lines.sort();
        // A churn of thousands of connections would bury the table: the newest `top`.
        let hidden = lines.len().saturating_sub(top);
        if hidden > 0 {
            let _ = writeln!(out, "  ({hidden} earlier transitions not shown; --top)");
        }
        for (_, l) in lines.into_iter().skip(hidden) {
            let _ = writeln!(out, "{l}");
        }
    }
    let _ = writeln!(
        out,
        "{:<28} {:<24} {:<11} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>4} {:>7} {:<6}",
        "LOCAL",
        "REMOTE",
        "STATE",
        "IN STATE",
        if summary { "LIFETIME" } else { "AGE" },
        "SENT",
        "RECEIVED",
        "SENT/s",
        "RECV/s",
        "RETR",
        "RST o/i",
        "CLOSED"
    );
    let mut rows: Vec<&ConnRow> = s
        .connections
        .iter()
        .filter(|c| summary || c.open || !c.transitions.is_empty())
        .collect();
    if rows.len() > top {
        // More than fit: the top talkers (bytes both ways), open ones first.
        rows.sort_by_key(|c| {
            (
                !c.open,
                std::cmp::Reverse(c.bytes_sent.saturating_add(c.bytes_received)),
            )
        });
    } else {
        // Open connections first (stable: oldest first within each group).
        rows.sort_by_key(|c| !c.open);
    }
    for c in rows.iter().take(top) {
        let age = if summary && !c.open {
            opt_ns(c.lifetime_ns)
        } else {
            opt_ns(c.age_ns)
        };
        let _ = writeln!(
            out,
            "{:<28} {:<24} {:<11} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>4} {:>7} {:<6}",
            endpoint(&c.local),
            endpoint(&c.remote),
            if c.open {
                c.state.clone()
            } else {
                format!("{} (gone)", c.state)
            },
            opt_ns(c.state_ns),
            age,
            bytes(c.bytes_sent),
            bytes(c.bytes_received),
            if summary {
                "-".into()
            } else {
                bytes(c.send_rate)
            },
            if summary {
                "-".into()
            } else {
                bytes(c.receive_rate)
            },
            c.retransmits,
            format!("{}/{}", c.resets_sent, c.resets_received),
            c.closed_by.unwrap_or("-"),
        );
    }
    if rows.len() > top {
        let _ = writeln!(
            out,
            "({} more connections not shown, fewer bytes than these; --top)",
            rows.len() - top
        );
    }
    if summary {
        if !s.transitions.is_empty() {
            let counts: Vec<String> = s
                .transitions
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "transitions: {}", counts.join(", "));
        }
        if let Some(l) = &s.lifetimes {
            let _ = writeln!(
                out,
                "lifetimes of {} closed connections: min {} avg {} max {}",
                l.count,
                units::ns(l.min_ns),
                units::ns(l.avg_ns),
                units::ns(l.max_ns)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_at_a_glance() {
        assert_eq!(bytes(999), "999B");
        assert_eq!(bytes(4096), "4.0KiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5MiB");
    }

    fn conn(port: u16, state: &str, bytes: u64, transitions: usize) -> ConnRow {
        ConnRow {
            local: "127.0.0.1:5672".into(),
            remote: format!("127.0.0.1:{port}"),
            service: None,
            state: state.into(),
            origin: "preexisting",
            open: true,
            opened_at_ns: None,
            closed_at_ns: None,
            age_ns: None,
            lifetime_ns: None,
            state_ns: None,
            transitions: (0..transitions)
                .map(|i| TransitionRow {
                    from: "SYN_RECV".into(),
                    to: "ESTABLISHED".into(),
                    at_ns: u64::from(port) * 1000 + i as u64,
                    prev_state_ns: None,
                })
                .collect(),
            bytes_sent: bytes,
            bytes_received: 0,
            rtt_us: None,
            send_rate: 0,
            receive_rate: 0,
            retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            closed_by: None,
        }
    }

    /// A thousand connections read at a glance: the open ones by state, the `top` talkers,
    /// the newest `top` transitions.
    #[test]
    fn many_connections_show_states_and_the_top_talkers() {
        let mut connections: Vec<ConnRow> = (0..1000u16)
            .map(|i| conn(20000 + i, "ESTABLISHED", u64::from(i), 1))
            .collect();
        connections[3].state = "CLOSE_WAIT".into();
        let s = TcpSection {
            hooks: "tracepoint",
            listening: Vec::new(),
            connections,
            transitions: BTreeMap::new(),
            opened: 1000,
            closed: 0,
            lifetimes: None,
            evicted: 0,
        };
        let mut out = String::new();
        write_text(&mut out, &s, false, 5);
        assert!(
            out.contains("\nopen: 1000 (CLOSE_WAIT 1, ESTABLISHED 999)\n"),
            "{out}"
        );
        assert!(
            out.contains("(995 earlier transitions not shown; --top)"),
            "{out}"
        );
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("127.0.0.1:5672"))
            .collect();
        // The five with the most bytes, most first.
        let ports: Vec<&str> = rows
            .iter()
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(
            ports,
            [
                "127.0.0.1:20999",
                "127.0.0.1:20998",
                "127.0.0.1:20997",
                "127.0.0.1:20996",
                "127.0.0.1:20995"
            ]
        );
        assert!(out.contains("(995 more connections not shown, fewer bytes than these; --top)"));
        // Short of `top`, the table keeps its order and shows every transition.
        let mut few = String::new();
        let s = TcpSection {
            connections: s.connections[..3].to_vec(),
            ..s
        };
        write_text(&mut few, &s, false, 5);
        assert!(!few.contains("not shown"), "{few}");
        assert!(few.find("127.0.0.1:20000 ").unwrap() < few.find("127.0.0.1:20002 ").unwrap());
    }

    #[test]
    fn lifetimes_summarise() {
        let s = LifetimeStats {
            count: 3,
            min_ns: 10,
            max_ns: 30,
            sum_ns: 60,
        };
        let l = Lifetimes::of(&s).unwrap();
        assert_eq!((l.count, l.min_ns, l.avg_ns, l.max_ns), (3, 10, 20, 30));
        assert!(Lifetimes::of(&LifetimeStats::default()).is_none());
    }
}
