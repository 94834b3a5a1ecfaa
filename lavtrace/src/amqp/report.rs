//! The `amqp` rows as JSON objects and as a text table.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use lavtrace_common::amqp::{Counters, LATENCY_BUCKETS, METHOD_SLOTS};
use serde::Serialize;

use super::names::slot_names;
use crate::printable::printable;

/// Figures every row, the totals and the vhost roll-up carry.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Figures {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    pub delivered: u64,
    pub acked: u64,
    pub rejected: u64,
    pub unsynced_bytes: u64,
    pub body_bytes_in: u64,
    pub body_bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub heartbeats_in: u64,
    pub heartbeats_out: u64,
    /// Frames whose end octet was not 0xCE (the walk resynced after).
    pub desyncs: u64,
    /// Bytes past the walk's per-transfer bound, not parsed (in `unsynced_bytes` too).
    pub beyond_walk_bytes: u64,
    /// Multiple acks on channels opened before attach: range unknown, not counted.
    pub ranges_unknown: u64,
    /// publish → confirm (the broker's ack or nack) of publishes on confirm channels.
    pub confirm_latency: Latency,
    /// Confirmed publishes not timed: their publish time had left the channel's ring of 32,
    /// or their channel was opened before attach.
    pub confirm_untimed: u64,
    /// deliver (or get-ok) → the client's ack, nack or reject.
    pub ack_latency: Latency,
    pub ack_untimed: u64,
    /// Method frames by name, per direction (client → broker is `in`).
    pub methods: Methods,
}

/// A log2 latency histogram with its percentiles (bucket-interpolated, as the syscall rows').
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Upper bound of the highest bucket with a sample.
    pub max_ns: u64,
    #[serde(rename = "histogram", serialize_with = "crate::syscalls::histogram")]
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for Latency {
    fn default() -> Self {
        Latency::of(&[0; LATENCY_BUCKETS])
    }
}

impl Latency {
    fn of(b: &[u64; LATENCY_BUCKETS]) -> Latency {
        let max_ns = b
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, crate::syscalls::stats::bucket_upper);
        Latency {
            count: b.iter().sum(),
            p50_ns: crate::syscalls::stats::percentile(b, max_ns, 0.50),
            p99_ns: crate::syscalls::stats::percentile(b, max_ns, 0.99),
            max_ns,
            buckets: *b,
        }
    }

    fn add(&mut self, o: &Latency) {
        let mut b = self.buckets;
        for (x, y) in b.iter_mut().zip(o.buckets) {
            *x += y;
        }
        *self = Latency::of(&b);
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Methods {
    #[serde(rename = "in")]
    pub inbound: BTreeMap<&'static str, u64>,
    #[serde(rename = "out")]
    pub outbound: BTreeMap<&'static str, u64>,
}

impl Figures {
    fn of(c: &Counters) -> Figures {
        let names = slot_names();
        let methods = |d: usize| {
            let mut m = BTreeMap::new();
            for (slot, &n) in c.methods[d].iter().enumerate().take(METHOD_SLOTS) {
                if n > 0
                    && let Some(name) = names[slot]
                {
                    *m.entry(name).or_default() += u64::from(n);
                }
            }
            m
        };
        Figures {
            published: c.published,
            confirmed: c.confirmed,
            nacked: c.nacked,
            returned: c.returned,
            delivered: c.delivered,
            acked: c.acked,
            rejected: c.rejected,
            unsynced_bytes: c.unsynced_bytes.iter().sum(),
            body_bytes_in: c.body_bytes[0],
            body_bytes_out: c.body_bytes[1],
            frames_in: c.frames[0],
            frames_out: c.frames[1],
            heartbeats_in: c.heartbeats[0],
            heartbeats_out: c.heartbeats[1],
            desyncs: c.desyncs.iter().sum(),
            beyond_walk_bytes: c.beyond_walk.iter().sum(),
            ranges_unknown: c.ranges_unknown,
            confirm_latency: Latency::of(&c.confirm_latency),
            confirm_untimed: c.confirm_untimed,
            ack_latency: Latency::of(&c.ack_latency),
            ack_untimed: c.ack_untimed,
            methods: Methods {
                inbound: methods(0),
                outbound: methods(1),
            },
        }
    }

    fn add(&mut self, o: &Figures) {
        self.published += o.published;
        self.confirmed += o.confirmed;
        self.nacked += o.nacked;
        self.returned += o.returned;
        self.delivered += o.delivered;
        self.acked += o.acked;
        self.rejected += o.rejected;
        self.unsynced_bytes += o.unsynced_bytes;
        self.body_bytes_in += o.body_bytes_in;
        self.body_bytes_out += o.body_bytes_out;
        self.frames_in += o.frames_in;
        self.frames_out += o.frames_out;
        self.heartbeats_in += o.heartbeats_in;
        self.heartbeats_out += o.heartbeats_out;
        self.desyncs += o.desyncs;
        self.beyond_walk_bytes += o.beyond_walk_bytes;
        self.ranges_unknown += o.ranges_unknown;
        self.confirm_latency.add(&o.confirm_latency);
        self.confirm_untimed += o.confirm_untimed;
        self.ack_latency.add(&o.ack_latency);
        self.ack_untimed += o.ack_untimed;
        for (mine, theirs) in [
            (&mut self.methods.inbound, &o.methods.inbound),
            (&mut self.methods.outbound, &o.methods.outbound),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
    }
}

/// `a - b`, field by field (the window's part of cumulative counters).
pub fn minus(a: &Counters, b: &Counters) -> Counters {
    let s = |x: u64, y: u64| x.saturating_sub(y);
    let s2 = |x: [u64; 2], y: [u64; 2]| [s(x[0], y[0]), s(x[1], y[1])];
    let mut methods = a.methods;
    for (d, row) in methods.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            *v = v.saturating_sub(b.methods[d][i]);
        }
    }
    Counters {
        published: s(a.published, b.published),
        delivered: s(a.delivered, b.delivered),
        confirmed: s(a.confirmed, b.confirmed),
        nacked: s(a.nacked, b.nacked),
        returned: s(a.returned, b.returned),
        acked: s(a.acked, b.acked),
        rejected: s(a.rejected, b.rejected),
        unsynced_bytes: s2(a.unsynced_bytes, b.unsynced_bytes),
        frames: s2(a.frames, b.frames),
        body_bytes: s2(a.body_bytes, b.body_bytes),
        heartbeats: s2(a.heartbeats, b.heartbeats),
        desyncs: s2(a.desyncs, b.desyncs),
        beyond_walk: s2(a.beyond_walk, b.beyond_walk),
        ranges_unknown: s(a.ranges_unknown, b.ranges_unknown),
        confirm_published: s(a.confirm_published, b.confirm_published),
        confirm_latency: std::array::from_fn(|i| s(a.confirm_latency[i], b.confirm_latency[i])),
        confirm_untimed: s(a.confirm_untimed, b.confirm_untimed),
        ack_latency: std::array::from_fn(|i| s(a.ack_latency[i], b.ack_latency[i])),
        ack_untimed: s(a.ack_untimed, b.ack_untimed),
        methods,
    }
}

/// What identifies a row besides its figures.
pub struct Identity<'a> {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub seeded: bool,
    pub tls: bool,
    pub vhost: Option<&'a str>,
    pub close: Option<(u16, &'a str)>,
    pub channels_opened: u64,
    pub channels_closed: u64,
    pub blocked: u64,
    pub unblocked: u64,
    pub blocked_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Close {
    pub code: u16,
    pub text: String,
}

/// One connection over one window.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRow {
    /// As the tcp rows have them (null if /proc no longer showed the socket).
    pub local: Option<String>,
    pub remote: Option<String>,
    pub fd: u32,
    /// Open when lavtrace attached: counted from the first whole frame.
    pub before_attach: bool,
    /// AMQPS: walked from the target's SSL_read/SSL_write plaintext.
    pub tls: bool,
    pub open: bool,
    /// connection.open's virtual host (null: not seen, e.g. opened before attach).
    pub vhost: Option<String>,
    /// connection.close's reply (either side), if seen.
    pub close: Option<Close>,
    /// Since the connection was first seen.
    pub channels_opened: u64,
    pub channels_closed: u64,
    pub blocked: u64,
    pub unblocked: u64,
    /// Time spent blocked (connection.blocked to connection.unblocked, a block still on up
    /// to the end of the window), since the connection was first seen.
    pub blocked_ns: u64,
    /// At the end of the window: publishes on confirm channels not confirmed (nor nacked)
    /// yet, and deliveries not acked, nacked or rejected yet (null for a connection open
    /// before attach: its earlier ones are unknown).
    pub unconfirmed: Option<u64>,
    pub unacked: Option<u64>,
    #[serde(flatten)]
    pub figures: Figures,
}

pub fn conn_row(
    fd: u32,
    id: Identity<'_>,
    c: &Counters,
    cumulative: &Counters,
    open: bool,
) -> ConnRow {
    let k = cumulative;
    let known = !id.seeded;
    ConnRow {
        local: id.local.map(|a| a.to_string()),
        remote: id.remote.map(|a| a.to_string()),
        fd,
        before_attach: id.seeded,
        tls: id.tls,
        open,
        vhost: id.vhost.map(|v| printable(v).into_owned()),
        close: id.close.map(|(code, text)| Close {
            code,
            text: printable(text).into_owned(),
        }),
        channels_opened: id.channels_opened,
        channels_closed: id.channels_closed,
        blocked: id.blocked,
        unblocked: id.unblocked,
        blocked_ns: id.blocked_ns,
        unconfirmed: known.then(|| k.confirm_published.saturating_sub(k.confirmed + k.nacked)),
        unacked: known.then(|| k.delivered.saturating_sub(k.acked + k.rejected)),
        figures: Figures::of(c),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VhostRow {
    /// null: connections whose connection.open was not seen.
    pub vhost: Option<String>,
    pub connections: u64,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelDiag {
    /// Accepts not traced: the connection table was full.
    pub conns_full: u64,
    /// Socket calls not traced: the thread table was full.
    pub threads_full: u64,
    /// Transfers cut short by the walk's bound (their rest is in `beyond_walk_bytes`).
    pub walk_limit: u64,
    /// The target's SSL calls on an `SSL *` not tied to an AMQPS connection: its other TLS
    /// (HTTPS, outbound connections), or an AMQPS connection's calls before its first socket
    /// call since attach (not walked).
    pub ssl_unbound: u64,
    /// recvmmsg/sendmmsg messages past the 64 of a call whose bytes are read (their bytes
    /// are not in `unsynced_bytes`).
    pub mmsg_uncounted: u64,
}

/// What the section says of AMQPS.
#[derive(Debug, Default)]
pub struct Tls {
    pub not_parsed: u64,
    pub parsed_from: Option<String>,
    pub not_parsed_why: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AmqpSection {
    /// `kprobe`, `uprobe`, or `none`.
    pub hooks: &'static str,
    /// Why nothing is traced (no hook set could be had).
    pub not_traced: Option<String>,
    pub ports: Vec<u16>,
    pub connections: Vec<ConnRow>,
    pub totals: Figures,
    pub vhosts: Vec<VhostRow>,
    /// Connections on the AMQPS ports (5671, `--amqps-port`) seen in the window (at attach or
    /// at a poll) while their SSL calls are not probed: TLS, not parsed.
    pub tls_not_parsed: u64,
    /// Why AMQPS is not parsed (null when it is).
    pub tls_not_parsed_why: Option<String>,
    /// The libssl whose SSL calls are probed: AMQPS connections are rows (`tls: true`).
    pub tls_parsed_from: Option<String>,
    pub kernel: KernelDiag,
}

pub fn section(
    hooks: &'static str,
    not_traced: Option<String>,
    ports: &[u16],
    connections: Vec<ConnRow>,
    kernel: KernelDiag,
    tls: Tls,
) -> AmqpSection {
    let mut totals = Figures::default();
    let mut vhosts: BTreeMap<Option<String>, VhostRow> = BTreeMap::new();
    for c in &connections {
        totals.add(&c.figures);
        let v = vhosts.entry(c.vhost.clone()).or_insert_with(|| VhostRow {
            vhost: c.vhost.clone(),
            connections: 0,
            figures: Figures::default(),
        });
        v.connections += 1;
        v.figures.add(&c.figures);
    }
    AmqpSection {
        hooks,
        not_traced,
        ports: ports.to_vec(),
        connections,
        totals,
        vhosts: vhosts.into_values().collect(),
        tls_not_parsed: tls.not_parsed,
        tls_not_parsed_why: tls.not_parsed_why,
        tls_parsed_from: tls.parsed_from,
        kernel,
    }
}

pub fn write_text(out: &mut String, s: &AmqpSection, top: usize) {
    let _ = writeln!(out, "AMQP (ports {:?}, {} hooks)", s.ports, s.hooks);
    if let Some(why) = &s.not_traced {
        let _ = writeln!(out, "  not traced: {why}");
        return;
    }
    let _ = writeln!(
        out,
        "  {:<22} {:<22} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>10}",
        "local",
        "remote",
        "published",
        "confirmed",
        "nacked",
        "delivered",
        "acked",
        "reject",
        "unsynced"
    );
    let mut rows: Vec<&ConnRow> = s.connections.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.figures.frames_in + r.figures.frames_out));
    for r in rows.iter().take(top.max(1)) {
        let f = &r.figures;
        let _ = writeln!(
            out,
            "  {:<22} {:<22} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>10}{}",
            r.local.as_deref().unwrap_or("?"),
            r.remote.as_deref().unwrap_or("?"),
            f.published,
            f.confirmed,
            f.nacked,
            f.delivered,
            f.acked,
            f.rejected,
            f.unsynced_bytes,
            match (r.before_attach, r.tls) {
                (true, true) => "  (TLS, open before attach)",
                (true, false) => "  (open before attach)",
                (false, true) => "  (TLS)",
                (false, false) => "",
            }
        );
    }
    if rows.len() > top.max(1) {
        let _ = writeln!(out, "  ... {} more connections", rows.len() - top.max(1));
    }
    let t = &s.totals;
    let _ = writeln!(
        out,
        "  total: {} connections, published {}, confirmed {}, nacked {}, returned {}, delivered {}, acked {}, rejected {}, body bytes in {} out {}, unsynced bytes {}",
        s.connections.len(),
        t.published,
        t.confirmed,
        t.nacked,
        t.returned,
        t.delivered,
        t.acked,
        t.rejected,
        t.body_bytes_in,
        t.body_bytes_out,
        t.unsynced_bytes
    );
    for (what, l, untimed) in [
        ("publish→confirm", &t.confirm_latency, t.confirm_untimed),
        ("deliver→ack", &t.ack_latency, t.ack_untimed),
    ] {
        if l.count + untimed > 0 {
            let _ = writeln!(
                out,
                "  {what}: p50 {} p99 {} max ≤{} ({} timed, {} untimed)",
                crate::units::ns(l.p50_ns),
                crate::units::ns(l.p99_ns),
                crate::units::ns(l.max_ns),
                l.count,
                untimed
            );
        }
    }
    // Blocked connections: the broker's flow control (a resource alarm), by time blocked.
    let mut blocked: Vec<&ConnRow> = s.connections.iter().filter(|r| r.blocked > 0).collect();
    blocked.sort_by_key(|r| std::cmp::Reverse(r.blocked_ns));
    for r in blocked.iter().take(top.max(1)) {
        let _ = writeln!(
            out,
            "  blocked: {} → {} {} in {} blocks{}",
            r.local.as_deref().unwrap_or("?"),
            r.remote.as_deref().unwrap_or("?"),
            crate::units::ns(r.blocked_ns),
            r.blocked,
            if r.blocked > r.unblocked {
                " (still blocked)"
            } else {
                ""
            }
        );
    }
    for v in &s.vhosts {
        let _ = writeln!(
            out,
            "  vhost {}: {} connections, published {}, delivered {}",
            v.vhost.as_deref().unwrap_or("(not seen)"),
            v.connections,
            v.figures.published,
            v.figures.delivered
        );
    }
    if s.tls_not_parsed > 0 {
        let _ = writeln!(
            out,
            "  {} connections on the AMQPS port: TLS, not parsed ({})",
            s.tls_not_parsed,
            s.tls_not_parsed_why.as_deref().unwrap_or("?")
        );
    }
    if let Some(lib) = &s.tls_parsed_from {
        let n = s.connections.iter().filter(|r| r.tls).count();
        let _ = writeln!(
            out,
            "  AMQPS: {n} connections, parsed from the SSL calls of {lib}"
        );
    }
    let k = &s.kernel;
    if k.conns_full + k.threads_full + k.walk_limit > 0 {
        let _ = writeln!(
            out,
            "  not walked: {} accepts (table full), {} calls (thread table full), {} transfers past the walk's bound",
            k.conns_full, k.threads_full, k.walk_limit
        );
    }
}
