//! Mode `amqp-frames`: a broker-shaped AMQP 0-9-1 server of known frames, for exact figures
//! of the `amqp` family. It listens on `--port`; its peer is a plain TCP client in the same
//! process (its fd is not an accepted one, so not the target's AMQP connection).
//!
//! - Before `ready`, the **pre** connection is accepted and carries a protocol header, a
//!   connection.open and `--pre-publishes` publishes, read by the server, then the first part
//!   of one more publish. After `go` the server reads the rest of that publish (`split_rest`
//!   bytes: the unsynced bytes a tracer attached meanwhile must report), then
//!   `--pre-publishes` more publishes.
//! - After `go`, the **main** connection: the peer sends the handshake, a channel in confirm
//!   mode, `--publishes` publishes, a basic.get, consumer acks (singles and one multiple), a
//!   reject, a nack and a connection.close; the server reads the handshake in one read(2),
//!   the next `--one-byte` bytes one byte per read(2), then with readv, recvmsg and 16 KiB
//!   reads. It answers with
//!   connection.start/tune/open-ok, confirms (a nack, a single ack, two multiple acks),
//!   `--deliveries` deliveries of small bodies (LavinMQ-sized batches: hundreds of frames per
//!   16 KiB write), a get-ok, a return, a delivery of a body larger than frame_max, and
//!   close-ok: the first `--one-byte` bytes one byte per write(2), then writev, sendmsg and
//!   16 KiB writes. Before all that, one connection.blocked, 40 ms, one
//!   connection.unblocked (`blocked_ns` in the stats: between the two writes' returns).
//!
//! - Then the **mmsg** connection: part of each direction moved by recvmmsg/sendmmsg (counted
//!   as unsynced), the rest by read(2)/write(2); it prints `mmsg {json}`.
//! - `--tls`: the pre and main connections over TLS through the process's libssl (tls.rs),
//!   the same bytes through SSL_read/SSL_write and their _ex forms (no mmsg connection).
//!
//! Every body (and the PLAIN password of start-ok) holds `--marker`. Prints `stats {json}`
//! with the frames and methods of each direction as built, then `done`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use serde::Serialize;

use crate::tls;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value_t = 100)]
    pub publishes: u64,
    #[arg(long, default_value_t = 600)]
    pub deliveries: u64,
    #[arg(long, default_value_t = 5)]
    pub pre_publishes: u64,
    /// Bytes of each direction moved one byte per syscall.
    #[arg(long, default_value_t = 300)]
    pub one_byte: usize,
    #[arg(long, default_value = "LAVTRACE-BODY-MARKER-7f3a")]
    pub marker: String,
    /// Also hold, from before `ready` to the end, one connection accepted on this port that
    /// carries TLS records (an AMQPS connection: to be counted, not parsed).
    #[arg(long)]
    pub tls_port: Option<u16>,
    /// AMQPS: both connections on `--port` over TLS through the process's libssl (see
    /// tls.rs); the figures are the same as in the clear.
    #[arg(long, conflicts_with = "tls_port")]
    pub tls: bool,
}

const FRAME_MAX: usize = 131_072;
const BIG_BODY: usize = 300_000;
const CHUNK: usize = 16_384;

/// A byte stream of frames, and what it holds.
#[derive(Default, Serialize)]
struct Stream {
    #[serde(skip)]
    bytes: Vec<u8>,
    /// Bytes up to the end of connection.open (read in one call: its vhost is kept).
    #[serde(skip)]
    handshake: usize,
    frames: u64,
    body_bytes: u64,
    methods: BTreeMap<&'static str, u64>,
}

impl Stream {
    fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        self.bytes.push(kind);
        self.bytes.extend(channel.to_be_bytes());
        self.bytes.extend((payload.len() as u32).to_be_bytes());
        self.bytes.extend(payload);
        self.bytes.push(0xCE);
        self.frames += 1;
        if kind == 3 {
            self.body_bytes += payload.len() as u64;
        }
    }

    fn method(&mut self, name: &'static str, channel: u16, class: u16, id: u16, args: &[u8]) {
        let mut p = Vec::with_capacity(4 + args.len());
        p.extend(class.to_be_bytes());
        p.extend(id.to_be_bytes());
        p.extend(args);
        self.frame(1, channel, &p);
        *self.methods.entry(name).or_default() += 1;
    }

    /// A content header and the body in frames of at most frame_max.
    fn content(&mut self, channel: u16, body: &[u8]) {
        let mut h = Vec::new();
        h.extend(60u16.to_be_bytes());
        h.extend(0u16.to_be_bytes());
        h.extend((body.len() as u64).to_be_bytes());
        h.extend(0x1000u16.to_be_bytes()); // delivery-mode present
        h.push(2); // persistent
        self.frame(2, channel, &h);
        for part in body.chunks(FRAME_MAX - 8) {
            self.frame(3, channel, part);
        }
    }
}

fn shortstr(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend(s.as_bytes());
    v
}

fn longstr(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend(b);
    v
}

fn tag_args(tag: u64, bits: u8) -> Vec<u8> {
    let mut v = tag.to_be_bytes().to_vec();
    v.push(bits);
    v
}

fn publish(s: &mut Stream, body: &[u8]) {
    let mut a = 0u16.to_be_bytes().to_vec();
    a.extend(shortstr(""));
    a.extend(shortstr("lavtrace-q"));
    a.push(0);
    s.method("basic.publish", 1, 60, 40, &a);
    s.content(1, body);
}

fn body(marker: &str, n: usize) -> Vec<u8> {
    let mut b = marker.as_bytes().to_vec();
    b.resize(n.max(marker.len()), b'x');
    b
}

/// What the figures must be, as built.
#[derive(Default, Serialize)]
struct Expected {
    published: u64,
    confirmed: u64,
    nacked: u64,
    returned: u64,
    delivered: u64,
    acked: u64,
    rejected: u64,
}

#[derive(Serialize)]
struct Stats {
    port: u16,
    main_in: Stream,
    main_out: Stream,
    main: Expected,
    pre_published: u64,
    pre_unsynced_bytes: u64,
    vhost: &'static str,
    close_text: &'static str,
    /// Between the returns of the connection.blocked and connection.unblocked writes.
    blocked_ns: u64,
    /// From the blocked write's return to the unblocked write's call, and from the blocked
    /// write's call to the unblocked write's return: the bounds of a time stamped inside each.
    blocked_ns_min: u64,
    blocked_ns_max: u64,
}

const VHOST: &str = "/lavtrace-vh";
const CLOSE_TEXT: &str = "bye from the peer";

fn client_stream(a: &Args) -> (Stream, Expected) {
    let mut s = Stream::default();
    let mut x = Expected::default();
    s.bytes.extend(b"AMQP\x00\x00\x09\x01");
    let mut start_ok = Vec::new();
    start_ok.extend(0u32.to_be_bytes()); // empty client-properties
    start_ok.extend(shortstr("PLAIN"));
    start_ok.extend(longstr(format!("\0guest\0{}", a.marker).as_bytes()));
    start_ok.extend(shortstr("en_US"));
    s.method("connection.start-ok", 0, 10, 11, &start_ok);
    let mut tune = 2047u16.to_be_bytes().to_vec();
    tune.extend((FRAME_MAX as u32).to_be_bytes());
    tune.extend(60u16.to_be_bytes());
    s.method("connection.tune-ok", 0, 10, 31, &tune);
    let mut open = shortstr(VHOST);
    open.extend(shortstr(""));
    open.push(0);
    s.method("connection.open", 0, 10, 40, &open);
    s.handshake = s.bytes.len();
    s.method("channel.open", 1, 20, 10, &shortstr(""));
    s.method("confirm.select", 1, 85, 10, &[0]);
    let b = body(&a.marker, 900);
    for _ in 0..a.publishes {
        publish(&mut s, &b);
    }
    x.published = a.publishes;
    s.frame(8, 0, &[]);
    let mut get = 0u16.to_be_bytes().to_vec();
    get.extend(shortstr("lavtrace-q"));
    get.push(0);
    s.method("basic.get", 1, 60, 70, &get);
    // Consumer side: tags 1..=K+2 (K deliveries, the get-ok, the big delivery). Singles
    // 1..=10, a multiple up to K, a reject of K+1, a nack of K+2.
    let k = a.deliveries;
    for tag in 1..=10 {
        s.method("basic.ack", 1, 60, 80, &tag_args(tag, 0));
    }
    s.method("basic.ack", 1, 60, 80, &tag_args(k, 1));
    x.acked = k;
    s.method("basic.reject", 1, 60, 90, &tag_args(k + 1, 0));
    s.method("basic.nack", 1, 60, 120, &tag_args(k + 2, 0));
    x.rejected = 2;
    let mut close = 200u16.to_be_bytes().to_vec();
    close.extend(shortstr(CLOSE_TEXT));
    close.extend(0u32.to_be_bytes());
    s.method("connection.close", 0, 10, 50, &close);
    (s, x)
}

fn server_stream(a: &Args, x: &mut Expected) -> Stream {
    let mut s = Stream::default();
    let mut start = vec![0, 9];
    start.extend(0u32.to_be_bytes());
    start.extend(longstr(b"PLAIN"));
    start.extend(longstr(b"en_US"));
    s.method("connection.start", 0, 10, 10, &start);
    let mut tune = 2047u16.to_be_bytes().to_vec();
    tune.extend((FRAME_MAX as u32).to_be_bytes());
    tune.extend(60u16.to_be_bytes());
    s.method("connection.tune", 0, 10, 30, &tune);
    s.method("connection.open-ok", 0, 10, 41, &shortstr(""));
    s.method("channel.open-ok", 1, 20, 11, &longstr(b""));
    s.method("confirm.select-ok", 1, 85, 11, &[]);
    // Confirms of publishes 1..=N: a nack of 1, an ack of 2, multiple acks of N/2 and N.
    let n = a.publishes;
    assert!(n >= 4, "--publishes must be at least 4");
    s.method("basic.nack", 1, 60, 120, &tag_args(1, 0));
    s.method("basic.ack", 1, 60, 80, &tag_args(2, 0));
    s.method("basic.ack", 1, 60, 80, &tag_args(n / 2, 1));
    s.method("basic.ack", 1, 60, 80, &tag_args(n, 1));
    x.nacked = 1;
    x.confirmed = n - 1;
    let small = body(&a.marker, 28);
    for tag in 1..=a.deliveries {
        let mut d = shortstr("ctag-1");
        d.extend(tag.to_be_bytes());
        d.push(0);
        d.extend(shortstr(""));
        d.extend(shortstr("lavtrace-q"));
        s.method("basic.deliver", 1, 60, 60, &d);
        s.content(1, &small);
    }
    let mut get_ok = (a.deliveries + 1).to_be_bytes().to_vec();
    get_ok.push(0);
    get_ok.extend(shortstr(""));
    get_ok.extend(shortstr("lavtrace-q"));
    get_ok.extend(0u32.to_be_bytes());
    s.method("basic.get-ok", 1, 60, 71, &get_ok);
    s.content(1, &small);
    let mut ret = 312u16.to_be_bytes().to_vec();
    ret.extend(shortstr("NO_ROUTE"));
    ret.extend(shortstr(""));
    ret.extend(shortstr("nowhere"));
    s.method("basic.return", 1, 60, 50, &ret);
    s.content(1, &small);
    x.returned = 1;
    let mut d = shortstr("ctag-1");
    d.extend((a.deliveries + 2).to_be_bytes());
    d.push(0);
    d.extend(shortstr(""));
    d.extend(shortstr("lavtrace-q"));
    s.method("basic.deliver", 1, 60, 60, &d);
    s.content(1, &body(&a.marker, BIG_BODY));
    x.delivered = a.deliveries + 2;
    s.frame(8, 0, &[]);
    s.method("connection.close-ok", 0, 10, 51, &[]);
    s
}

fn check(r: isize) -> std::io::Result<usize> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Reads exactly `buf.len()` bytes with read(2) calls of at most `max` bytes.
fn read_exact_with(fd: i32, buf: &mut [u8], max: usize) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let n = (buf.len() - at).min(max);
        // SAFETY: `buf[at..at + n]` is writable memory of this process.
        let got = check(unsafe { libc::read(fd, buf[at..].as_mut_ptr().cast(), n) })?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        at += got;
    }
    Ok(())
}

fn iovecs(parts: &mut [&mut [u8]]) -> Vec<libc::iovec> {
    parts
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect()
}

/// The server's side of the main connection's inbound bytes: the handshake in one read, then
/// 1-byte reads, then one readv
/// and one recvmsg of three and two iovecs (looping until each has all it asked), then
/// 16 KiB reads.
fn server_reads(fd: i32, total: usize, handshake: usize, one_byte: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; total];
    read_exact_with(fd, &mut buf[..handshake], handshake)?;
    read_exact_with(fd, &mut buf[handshake..handshake + one_byte], 1)?;
    let mut at = handshake + one_byte;
    for (use_msg, sizes) in [(false, [7usize, 1000, 333]), (true, [2500, 99, 0])] {
        let want: usize = sizes.iter().sum::<usize>().min(total - at);
        let mut got = 0;
        while got < want {
            // The rest of this call's span, cut at the same points.
            let span = &mut buf[at + got..at + want];
            let mut cuts = Vec::new();
            let mut edge = 0;
            for s in sizes {
                edge += s;
                if edge > got && edge - got <= span.len() {
                    cuts.push(edge - got);
                }
            }
            let mut parts: Vec<&mut [u8]> = Vec::new();
            let mut rest = span;
            let mut last = 0;
            for c in cuts {
                let (a, b) = rest.split_at_mut(c - last);
                if !a.is_empty() {
                    parts.push(a);
                }
                rest = b;
                last = c;
            }
            if !rest.is_empty() {
                parts.push(rest);
            }
            let iov = iovecs(&mut parts);
            let n = if use_msg {
                // SAFETY: zeroed msghdr is valid; it points at live iovecs.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_ptr().cast_mut();
                msg.msg_iovlen = iov.len();
                // SAFETY: as above.
                check(unsafe { libc::recvmsg(fd, &mut msg, 0) })?
            } else {
                // SAFETY: live iovecs into `buf`.
                check(unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as i32) })?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        at += want;
    }
    read_exact_with(fd, &mut buf[at..], CHUNK)
}

fn write_all_with(fd: i32, buf: &[u8], max: usize) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let n = (buf.len() - at).min(max);
        // SAFETY: `buf[at..at + n]` is readable memory of this process.
        at += check(unsafe { libc::write(fd, buf[at..].as_ptr().cast(), n) })?;
    }
    Ok(())
}

/// Writes through `writev` (or `sendmsg`) with iovecs cut at `sizes`, looping on short writes.
fn write_vectored(fd: i32, buf: &[u8], sizes: &[usize], use_msg: bool) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let mut iov = Vec::new();
        let mut edge = 0;
        for &s in sizes {
            let (lo, hi) = (edge.max(at), (edge + s).min(buf.len()));
            if hi > lo {
                iov.push(libc::iovec {
                    iov_base: buf[lo..].as_ptr().cast_mut().cast(),
                    iov_len: hi - lo,
                });
            }
            edge += s;
        }
        let n = if use_msg {
            // SAFETY: zeroed msghdr is valid; it points at live iovecs.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            // SAFETY: as above.
            check(unsafe { libc::sendmsg(fd, &msg, 0) })?
        } else {
            // SAFETY: live iovecs into `buf`.
            check(unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) })?
        };
        at += n;
    }
    Ok(())
}

fn server_writes(fd: i32, out: &[u8], one_byte: usize) -> std::io::Result<()> {
    write_all_with(fd, &out[..one_byte], 1)?;
    let v_end = (one_byte + 900).min(out.len());
    write_vectored(fd, &out[one_byte..v_end], &[5, 301, 17, 577], false)?;
    let m_end = (v_end + 1500).min(out.len());
    write_vectored(fd, &out[v_end..m_end], &[1000, 500], true)?;
    write_all_with(fd, &out[m_end..], CHUNK)
}

/// Reads and drops everything until EOF (the peer's side of the server's writes).
fn drain(mut s: TcpStream) -> std::thread::JoinHandle<std::io::Result<u64>> {
    std::thread::spawn(move || std::io::copy(&mut s, &mut std::io::sink()))
}

/// A connection accepted on `port` whose peer sends the start of a TLS ClientHello, read by
/// the server; both ends held by the caller.
fn tls_connection(port: u16) -> std::io::Result<(TcpListener, TcpStream, TcpStream)> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut peer = TcpStream::connect(("127.0.0.1", port))?;
    let (mut conn, _) = listener.accept()?;
    peer.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00])?;
    let mut hello = [0u8; 9];
    conn.read_exact(&mut hello)?;
    Ok((listener, peer, conn))
}

/// The pre connection's inbound bytes, and where it is split: (stream, the bytes read
/// before ready, the end of the split publish).
fn pre_stream(a: &Args) -> (Stream, usize, usize) {
    let mut pre_in = Stream::default();
    pre_in.bytes.extend(b"AMQP\x00\x00\x09\x01");
    pre_in.method("connection.open", 0, 10, 40, &shortstr(VHOST));
    pre_in.method("channel.open", 1, 20, 10, &shortstr(""));
    let b = body(&a.marker, 700);
    for _ in 0..a.pre_publishes {
        publish(&mut pre_in, &b);
    }
    let before = pre_in.bytes.len();
    // One more publish, whose first part is read before ready.
    publish(&mut pre_in, &b);
    let split_at = before + 20;
    let after = pre_in.bytes.len();
    for _ in 0..a.pre_publishes {
        publish(&mut pre_in, &b);
    }
    (pre_in, split_at, after)
}

/// connection.blocked and connection.unblocked, and where the first ends.
fn gate() -> (Stream, usize) {
    let mut gate = Stream::default();
    gate.method("connection.blocked", 0, 10, 60, &shortstr("low on disk"));
    let blocked_len = gate.bytes.len();
    gate.method("connection.unblocked", 0, 10, 61, &[]);
    (gate, blocked_len)
}

/// The two gate writes (the gate's bytes up to `blocked_len`, then the rest) around a 40 ms
/// pause, each by `write`: (`blocked_ns`, its min, its max) as in `Stats`.
fn blocked_writes(
    gate: &Stream,
    blocked_len: usize,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<(u64, u64, u64)> {
    let before_blocked = std::time::Instant::now();
    write(&gate.bytes[..blocked_len])?;
    let blocked_at = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(40));
    let before_unblocked = std::time::Instant::now();
    write(&gate.bytes[blocked_len..])?;
    let blocked_ns = blocked_at.elapsed().as_nanos() as u64;
    // A tracer stamps each write somewhere inside it: its figure lies between these, however
    // long this thread waited for a CPU around the writes.
    let min = before_unblocked.duration_since(blocked_at).as_nanos() as u64;
    let max = before_blocked.elapsed().as_nanos() as u64;
    Ok((blocked_ns, min, max))
}

pub fn run(a: &Args) -> std::io::Result<()> {
    if a.tls {
        return run_tls(a);
    }
    let listener = TcpListener::bind(("127.0.0.1", a.port))?;
    // The pre connection, before ready.
    let mut pre_peer = TcpStream::connect(("127.0.0.1", a.port))?;
    let (pre, _) = listener.accept()?;
    let pre_fd = pre.as_raw_fd();
    let (pre_in, split_at, after) = pre_stream(a);
    let split_rest = (after - split_at) as u64;
    pre_peer.write_all(&pre_in.bytes[..split_at])?;
    let mut sink = vec![0u8; split_at];
    read_exact_with(pre_fd, &mut sink, CHUNK)?;

    let _tls = a.tls_port.map(tls_connection).transpose()?;

    lavtrace_common::start::announce_ready_then_wait_go()?;

    pre_peer.write_all(&pre_in.bytes[split_at..])?;
    let mut rest = vec![0u8; after - split_at];
    // Exactly the rest of the split publish first: the next read starts at a frame.
    read_exact_with(pre_fd, &mut rest, after - split_at)?;
    let mut more = vec![0u8; pre_in.bytes.len() - after];
    read_exact_with(pre_fd, &mut more, CHUNK)?;
    drop(pre);
    drop(pre_peer);

    // The main connection.
    let (inbound, mut expected) = client_stream(a);
    let outbound = server_stream(a, &mut expected);
    let peer = TcpStream::connect(("127.0.0.1", a.port))?;
    let (conn, _) = listener.accept()?;
    let fd = conn.as_raw_fd();
    let mut peer_w = peer.try_clone()?;
    let bytes = inbound.bytes.clone();
    let writer = std::thread::spawn(move || peer_w.write_all(&bytes));
    let reader = drain(peer);
    server_reads(fd, inbound.bytes.len(), inbound.handshake, a.one_byte)?;
    // Flow control first: connection.blocked, a pause, connection.unblocked, one write each.
    // The time between the two writes' returns is the time blocked a tracer must report.
    let (gate, blocked_len) = gate();
    let blocked = blocked_writes(&gate, blocked_len, |part| write_all_with(fd, part, CHUNK))?;
    server_writes(fd, &outbound.bytes, a.one_byte)?;
    writer
        .join()
        .map_err(|_| std::io::Error::other("peer writer panicked"))??;
    drop(conn);
    let got = reader
        .join()
        .map_err(|_| std::io::Error::other("peer reader panicked"))??;
    mmsg_connection(&listener, a)?;
    report(
        a, got, inbound, outbound, gate, expected, split_rest, blocked,
    )
}

/// Checks the peer read all that was sent, then prints the stats and `done`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per transport, each part named"
)]
fn report(
    a: &Args,
    got: u64,
    inbound: Stream,
    mut outbound: Stream,
    gate: Stream,
    expected: Expected,
    split_rest: u64,
    (blocked_ns, blocked_ns_min, blocked_ns_max): (u64, u64, u64),
) -> std::io::Result<()> {
    let sent = (outbound.bytes.len() + gate.bytes.len()) as u64;
    if got != sent {
        return Err(std::io::Error::other(format!(
            "the peer read {got} of {sent} bytes"
        )));
    }
    outbound.frames += gate.frames;
    for (name, n) in gate.methods {
        *outbound.methods.entry(name).or_default() += n;
    }
    let stats = Stats {
        port: a.port,
        main_in: inbound,
        main_out: outbound,
        main: expected,
        pre_published: a.pre_publishes,
        pre_unsynced_bytes: split_rest,
        vhost: VHOST,
        close_text: CLOSE_TEXT,
        blocked_ns,
        blocked_ns_min,
        blocked_ns_max,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "stats {}", serde_json::to_string(&stats)?)?;
    stdout.flush()?;
    drop(stdout);
    lavtrace_common::start::announce_done()
}

/// `run` over TLS: the same connections and bytes, through SSL calls (see tls.rs). The
/// gate's two writes are one SSL_write each; the bytes before ready are read as in the clear.
fn run_tls(a: &Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", a.port))?;
    let acceptor = tls::acceptor()?;
    let (mut pre, mut pre_peer) = tls::pair(&acceptor, &listener)?;
    let (pre_in, split_at, after) = pre_stream(a);
    let split_rest = (after - split_at) as u64;
    pre_peer.write_all(&pre_in.bytes[..split_at])?;
    let mut sink = vec![0u8; split_at];
    tls::read_exact_with(&mut pre, &mut sink, CHUNK, false)?;

    lavtrace_common::start::announce_ready_then_wait_go()?;

    pre_peer.write_all(&pre_in.bytes[split_at..])?;
    let mut rest = vec![0u8; after - split_at];
    tls::read_exact_with(&mut pre, &mut rest, after - split_at, true)?;
    let mut more = vec![0u8; pre_in.bytes.len() - after];
    tls::read_exact_with(&mut pre, &mut more, CHUNK, false)?;
    drop(pre);
    drop(pre_peer);

    let (inbound, mut expected) = client_stream(a);
    let outbound = server_stream(a, &mut expected);
    let (mut conn, peer) = tls::pair(&acceptor, &listener)?;
    let peer = tls::peer(peer, inbound.bytes.clone());
    tls::server_reads(
        &mut conn,
        inbound.bytes.len(),
        inbound.handshake,
        a.one_byte,
        CHUNK,
    )?;
    let (gate, blocked_len) = gate();
    let blocked = blocked_writes(&gate, blocked_len, |part| {
        tls::write_all_with(&mut conn, part, CHUNK, true)
    })?;
    tls::server_writes(&mut conn, &outbound.bytes, a.one_byte, CHUNK)?;
    let got = peer
        .join()
        .map_err(|_| std::io::Error::other("the TLS peer panicked"))??;
    drop(conn);
    report(
        a, got, inbound, outbound, gate, expected, split_rest, blocked,
    )
}

/// What the mmsg connection's figures must be.
#[derive(Serialize)]
struct MmsgStats {
    vhost: &'static str,
    /// In the inbound bytes read by read(2) after the recvmmsg calls.
    published: u64,
    /// The bytes of the recvmmsg and sendmmsg calls, both ways.
    unsynced_bytes: u64,
    frames_in: u64,
    frames_out: u64,
}

const MMSG_VHOST: &str = "/lavtrace-mmsg";

/// One more connection, after the main one: the protocol header, connection.open and
/// channel.open read with read(2); two publishes with recvmmsg calls (two messages each);
/// three more publishes with read(2). Out: connection.open-ok with sendmmsg, then
/// channel.open-ok with write(2). Prints `mmsg {json}`: the mmsg calls' bytes are the
/// unsynced ones, and everything read or written after them is counted.
fn mmsg_connection(listener: &TcpListener, a: &Args) -> std::io::Result<()> {
    let mut sync_in = Stream::default();
    sync_in.bytes.extend(b"AMQP\x00\x00\x09\x01");
    sync_in.method("connection.open", 0, 10, 40, &shortstr(MMSG_VHOST));
    sync_in.method("channel.open", 1, 20, 10, &shortstr(""));
    let mut skipped_in = Stream::default();
    let b = body(&a.marker, 500);
    for _ in 0..2 {
        publish(&mut skipped_in, &b);
    }
    let mut after_in = Stream::default();
    for _ in 0..3 {
        publish(&mut after_in, &b);
    }
    let mut skipped_out = Stream::default();
    skipped_out.method("connection.open-ok", 0, 10, 41, &shortstr(""));
    let mut after_out = Stream::default();
    after_out.method("channel.open-ok", 1, 20, 11, &longstr(b""));

    let mut peer = TcpStream::connect(listener.local_addr()?)?;
    let (conn, _) = listener.accept()?;
    let fd = conn.as_raw_fd();
    let all_in = [&sync_in.bytes[..], &skipped_in.bytes, &after_in.bytes].concat();
    peer.write_all(&all_in)?;
    let mut buf = vec![0u8; sync_in.bytes.len()];
    read_exact_with(fd, &mut buf, sync_in.bytes.len())?;
    let mut skipped = vec![0u8; skipped_in.bytes.len()];
    let mut got = 0;
    while got < skipped.len() {
        let rest = &mut skipped[got..];
        let half = rest.len() / 2;
        let (x, y) = rest.split_at_mut(half.max(1).min(rest.len()));
        got += mmsg(fd, &mut [x, y], false)?;
    }
    let mut after = vec![0u8; after_in.bytes.len()];
    read_exact_with(fd, &mut after, CHUNK)?;
    let mut out = skipped_out.bytes.clone();
    let mut sent = 0;
    while sent < out.len() {
        let rest = &mut out[sent..];
        sent += mmsg(fd, &mut [rest], true)?;
    }
    write_all_with(fd, &after_out.bytes, CHUNK)?;
    drop(conn);
    let mut sink = Vec::new();
    peer.read_to_end(&mut sink)?;
    let stats = MmsgStats {
        vhost: MMSG_VHOST,
        published: 3,
        unsynced_bytes: (skipped_in.bytes.len() + skipped_out.bytes.len()) as u64,
        frames_in: sync_in.frames + after_in.frames,
        frames_out: after_out.frames,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "mmsg {}", serde_json::to_string(&stats)?)?;
    stdout.flush()
}

/// One recvmmsg (`send`: sendmmsg) of one message per part (empty parts left out); the
/// bytes moved.
fn mmsg(fd: i32, parts: &mut [&mut [u8]], send: bool) -> std::io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = parts
        .iter_mut()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed mmsghdr is valid; it points at a live iovec.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let n = msgs.len() as u32;
    let r = if send {
        // SAFETY: live mmsghdrs over live iovecs into `parts`.
        unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n, 0) }
    } else {
        // SAFETY: as above; MSG_WAITFORONE: block for the first message only.
        unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                n,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        }
    };
    let done = check(r as isize)?;
    Ok(msgs[..done].iter().map(|m| m.msg_len as usize).sum())
}
