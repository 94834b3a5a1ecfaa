//! Probe family `amqp`: AMQP 0-9-1 frames of the target's AMQP connections, walked in the
//! kernel at syscall exit over the bytes transferred. Only counters and small fixed records
//! of rare events leave the kernel: never a body byte, never a credential.

/// Connections the kernel table holds at once (accepted or seeded; removed at close).
pub const MAX_CONNS: u32 = 4_096;
/// Channels the kernel table holds at once (LRU: a channel of a closed connection goes).
pub const MAX_CHANNELS: u32 = 8_192;
/// Publish (and delivery) times kept per channel: a confirm (ack) of a publish (delivery)
/// more than this many behind the channel's newest is counted as untimed, never guessed.
pub const TIMES_PER_CHANNEL: usize = 32;
pub use crate::syscalls::LATENCY_BUCKETS;
/// Threads with a socket call in progress.
pub const MAX_THREADS: u32 = 8_192;
/// Listening sockets (fds) whose accepts are AMQP connections.
pub const MAX_LISTENERS: u32 = 64;
/// SSL_read/SSL_write calls in progress (LRU: one whose return was never seen goes). A
/// fiber waiting inside SSL_read holds one, so this bounds the waiting AMQPS connections
/// whose next read is walked.
pub const MAX_SSL_CALLS: u32 = 16_384;
/// `SSL *` → fd bindings (LRU).
pub const MAX_SSL_BINDINGS: u32 = 2 * MAX_CONNS;

/// `AMQP_LISTENERS` values: what a connection accepted on the listener carries.
pub mod listener {
    /// AMQP in the clear: the socket calls' bytes are walked.
    pub const PLAIN: u32 = 1;
    /// AMQPS: the socket calls carry TLS records; the plaintext of the target's SSL_read
    /// and SSL_write is walked instead.
    pub const TLS: u32 = 2;
}

/// Steps of the frame walk per program run (a step jumps over the rest of a frame's payload,
/// collects the next frame's header and prefix and counts it; or moves to the next iovec):
/// about one step per frame, so a transfer is walked exactly up to ~2000 frames.
pub const STEPS_PER_RUN: u32 = 64;
/// Program runs per transfer: the first, then tail calls of the walk (the kernel allows 33).
pub const RUNS_PER_TRANSFER: u32 = 32;
/// iovecs of one readv/writev/recvmsg/sendmsg walked (the rest of the transfer is counted as
/// beyond the walk, and the direction loses sync).
pub const MAX_IOVECS: u32 = 256;

pub const RING_BYTES: u32 = 1 << 18;
pub const RING: &str = "AMQP_EVENTS";
pub const CONNS_MAP: &str = "AMQP_CONNS";
pub const WALKS_MAP: &str = "AMQP_WALKS";
pub const LISTEN_MAP: &str = "AMQP_LISTENERS";
pub const WALK_PROGRAMS: &str = "AMQP_WALK_PROGS";
/// The tail-called walk (a kprobe-type program: uprobes and kprobes share the type).
pub const WALK_PROGRAM: &str = "amqp_walk";
/// The same walk as a tracepoint program, for the tracepoint set, in its own array (a
/// program array holds programs of one type).
pub const WALK_PROGRAMS_TP: &str = "AMQP_WALK_PROGS_TP";
pub const WALK_PROGRAM_TP: &str = "amqp_walk_tp";
pub const DIAG_MAP: &str = "AMQP_DIAG";
/// The entry programs of SSL_read, SSL_write, SSL_read_ex and SSL_write_ex, and the one
/// program at each of their `ret` instructions.
pub const SSL_ENTRY_PROGRAMS: [(&str, &str); 4] = [
    ("SSL_read", "amqp_ssl_read"),
    ("SSL_write", "amqp_ssl_write"),
    ("SSL_read_ex", "amqp_ssl_read_ex"),
    ("SSL_write_ex", "amqp_ssl_write_ex"),
];
pub const SSL_RETURN_PROGRAM: &str = "amqp_ssl_return";

/// The per-cpu diagnostic counters (`DIAG_MAP`).
pub mod diag {
    /// A connection accepted while the table was full: not parsed.
    pub const CONNS_FULL: u32 = 0;
    /// A socket call whose entry could not be saved (thread table full).
    pub const THREADS_FULL: u32 = 1;
    /// Transfers whose bytes went past the walk's bound (steps or iovecs).
    pub const WALK_LIMIT: u32 = 2;
    /// SSL_read/SSL_write calls on an `SSL *` not yet seen on an AMQPS socket (no socket
    /// call inside any of its calls since attach): their bytes are not walked.
    pub const SSL_UNBOUND: u32 = 3;
    /// recvmmsg/sendmmsg messages past `MAX_MMSG` of one call: their bytes are not counted.
    pub const MMSG_UNCOUNTED: u32 = 4;
    pub const LEN: u32 = 5;
}

/// Where a direction's walk stands (`Walker::phase`).
pub mod phase {
    /// Not in sync (seeded connection, or lost sync): bytes are counted as unsynced until a
    /// transfer begins with a frame whose end octet checks out.
    pub const UNSYNCED: u32 = 0;
    /// Expecting the 8-byte protocol header (`AMQP\0\0\x09\x01`, client to broker).
    pub const PROTOCOL: u32 = 1;
    /// Walking frames.
    pub const FRAMES: u32 = 2;
}

/// The frame-end octet.
pub const FRAME_END: u8 = 0xCE;
pub mod frame {
    pub const METHOD: u8 = 1;
    pub const HEADER: u8 = 2;
    pub const BODY: u8 = 3;
    pub const HEARTBEAT: u8 = 8;
}
/// A frame size above this is taken as garbage (a resync candidate that is no frame).
pub const MAX_FRAME: u32 = 1 << 24;
/// Bytes of a method frame's payload collected: class, method, then a delivery tag and a bit
/// octet (basic.ack/nack/reject).
pub const METHOD_PREFIX: u32 = 13;
/// Collected bytes: the previous frame's end octet, the 7-byte header, the method prefix.
pub const HDR_BYTES: usize = 64;
/// Bytes of `hdr` ever used (end octet, header, method prefix); the rest is room that lets
/// the verifier prove a read at any `have` below it stays in the buffer.
pub const HDR_USED: u32 = 1 + 7 + METHOD_PREFIX;

/// One direction's carry-over between syscalls.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walker {
    /// Payload bytes of the current frame still to jump over (its end octet excluded).
    pub skip: u64,
    pub phase: u32,
    /// Bytes collected in `hdr` so far and bytes wanted there before the next decision.
    pub have: u32,
    pub need: u32,
    /// `hdr[0]` is the end octet of the previous frame (0 right after the protocol header or
    /// a resync).
    pub with_end: u32,
    pub hdr: [u8; HDR_BYTES],
}

impl Default for Walker {
    fn default() -> Self {
        Walker {
            skip: 0,
            phase: phase::UNSYNCED,
            have: 0,
            need: 0,
            with_end: 0,
            hdr: [0; HDR_BYTES],
        }
    }
}

/// Per-connection counters, cumulative since the connection was first seen. Each field is
/// written by one direction's walk only (the reading thread, or the writing one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub published: u64,
    pub delivered: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    pub acked: u64,
    pub rejected: u64,
    /// [in, out].
    pub unsynced_bytes: [u64; 2],
    pub frames: [u64; 2],
    pub body_bytes: [u64; 2],
    pub heartbeats: [u64; 2],
    /// Frames whose end octet was wrong (the walk lost sync there).
    pub desyncs: [u64; 2],
    /// Bytes beyond the walk's bound (steps or iovecs), not parsed: counted as unsynced too.
    pub beyond_walk: [u64; 2],
    /// A multiple ack/nack on a channel whose start was not seen: its range is unknown.
    pub ranges_unknown: u64,
    /// Publishes on channels in confirm mode (confirm.select seen): in flight is this less
    /// `confirmed` and `nacked`.
    pub confirm_published: u64,
    /// publish → confirm (ack or nack), log2 buckets of ns (`syscalls::latency_bucket`), and
    /// the confirmed publishes whose publish time was not in the channel's ring.
    pub confirm_latency: [u64; LATENCY_BUCKETS],
    pub confirm_untimed: u64,
    /// deliver → ack/nack/reject, likewise.
    pub ack_latency: [u64; LATENCY_BUCKETS],
    pub ack_untimed: u64,
    /// Method frames by `method_slot` ([in, out]).
    pub methods: [[u32; METHOD_SLOTS]; 2],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            published: 0,
            delivered: 0,
            confirmed: 0,
            nacked: 0,
            returned: 0,
            acked: 0,
            rejected: 0,
            unsynced_bytes: [0; 2],
            frames: [0; 2],
            body_bytes: [0; 2],
            heartbeats: [0; 2],
            desyncs: [0; 2],
            beyond_walk: [0; 2],
            ranges_unknown: 0,
            confirm_published: 0,
            confirm_latency: [0; LATENCY_BUCKETS],
            confirm_untimed: 0,
            ack_latency: [0; LATENCY_BUCKETS],
            ack_untimed: 0,
            methods: [[0; METHOD_SLOTS]; 2],
        }
    }
}

/// One connection in the kernel table (key: its fd in the target).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    /// CLOCK_MONOTONIC of the accept, or 0 for a connection seeded from /proc.
    pub since_ns: u64,
    /// `listener::PLAIN` or `listener::TLS`.
    pub kind: u32,
    pub _pad: u32,
    pub counters: Counters,
}

/// One connection's walk state (key: its fd), in a map of its own that userspace never
/// reads: `hdr` holds header and method-argument bytes of the target's traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walks {
    /// [in, out].
    pub walk: [Walker; 2],
}

/// One channel (key: `chan_key(fd, channel)`): the ack ranges of its two sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chan {
    /// Opened while traced (channel.open seen): delivery tags and publish sequence numbers
    /// are known from 1. 0: a multiple ack's range is unknown (counted as such).
    pub known: u32,
    pub confirm_mode: u32,
    /// Highest publish sequence number confirmed by a multiple ack, and single confirms above
    /// it since (broker → client).
    pub confirm_upto: u64,
    pub confirm_singles: u64,
    /// Likewise for the consumer's acks/nacks/rejects (client → broker).
    pub settle_upto: u64,
    pub settle_singles: u64,
    /// Publishes since confirm.select (the next one's sequence number is this + 1), and
    /// deliveries (basic.deliver, basic.get-ok) since channel.open (the delivery tags).
    pub pub_seq: u64,
    pub deliver_seq: u64,
    /// The time of publish (delivery) `n` at `n % TIMES_PER_CHANNEL`, 0 once settled.
    pub pub_ts: [u64; TIMES_PER_CHANNEL],
    pub deliver_ts: [u64; TIMES_PER_CHANNEL],
}

impl Default for Chan {
    fn default() -> Self {
        Chan {
            known: 0,
            confirm_mode: 0,
            confirm_upto: 0,
            confirm_singles: 0,
            settle_upto: 0,
            settle_singles: 0,
            pub_seq: 0,
            deliver_seq: 0,
            pub_ts: [0; TIMES_PER_CHANNEL],
            deliver_ts: [0; TIMES_PER_CHANNEL],
        }
    }
}

pub const fn chan_key(fd: u32, channel: u16) -> u64 {
    ((fd as u64) << 16) | channel as u64
}

/// A socket call in progress (key: tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The buffer, or the iovec array.
    pub ptr: u64,
    /// Its length, or the number of iovecs.
    pub len: u64,
    pub fd: u32,
    /// 0: in (read), 1: out (write).
    pub dir: u32,
    /// `call::*`.
    pub call: u32,
    pub _pad: u32,
}

pub mod call {
    pub const PLAIN: u32 = 1;
    pub const IOV: u32 = 2;
    pub const ACCEPT: u32 = 3;
    /// recvmmsg/sendmmsg: `ptr` is the `struct mmsghdr` array, `len` its length. Their
    /// bytes are counted as unsynced, not walked (see `MAX_MMSG`).
    pub const MMSG: u32 = 4;
}

/// Messages of one recvmmsg/sendmmsg whose byte counts are read (`struct mmsghdr`: 64 bytes,
/// `msg_len` at 56, the userspace ABI of every 64-bit Linux): their bytes are counted as
/// unsynced, and the direction resyncs. Neither LavinMQ nor the AMQP clients call them on a
/// stream socket; counted so that a client that does is never silently missed. Messages past
/// this many: `diag::MMSG_UNCOUNTED`.
pub const MAX_MMSG: u32 = 64;

/// An SSL_read/SSL_write (or `_ex`) call in progress. Key: the stack pointer at its entry,
/// which is the stack pointer again at its `ret`: one key per call even when the thread
/// runs other calls of the same function on other stacks meanwhile (a fiber that waits
/// inside SSL_read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslCall {
    /// The `SSL *`.
    pub ssl: u64,
    pub buf: u64,
    /// The `size_t *` the `_ex` forms return the byte count through; 0 for SSL_read and
    /// SSL_write, which return it.
    pub count_at: u64,
    /// 0: in (SSL_read), 1: out (SSL_write).
    pub dir: u32,
    pub _pad: u32,
}

/// Where one transfer's walk stands, carried across the tail calls (per-cpu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes of the transfer not walked yet (all segments).
    pub left: u64,
    /// The current segment and its bytes not walked yet.
    pub seg: u64,
    pub seg_left: u64,
    /// The iovec array (0 for a plain buffer) and the next iovec's index.
    pub iov: u64,
    pub iov_cnt: u64,
    /// Where `hdr[0]` of the collection in progress would be in the target's memory if it
    /// all came from the current segment (0: unknown).
    pub hdr_at: u64,
    pub iov_next: u32,
    pub fd: u32,
    pub dir: u32,
    pub runs: u32,
    /// Start of the transfer (a resync is only tried there).
    pub at_start: u32,
    /// The current segment has not been collected from yet.
    pub fresh: u32,
    /// Bytes of the collection in progress that came from earlier segments: `hdr_at` is
    /// valid from this offset of `hdr` on.
    pub hdr_from: u32,
    pub _pad: u32,
}

/// Rare events (`Event::kind`).
pub mod event {
    /// A connection accepted on an AMQP listener.
    pub const ACCEPTED: u32 = 1;
    /// connection.open: `text` is the vhost.
    pub const CONN_OPEN: u32 = 2;
    /// connection.close: `code`, `text` is the reply text.
    pub const CONN_CLOSE: u32 = 3;
    pub const BLOCKED: u32 = 4;
    pub const UNBLOCKED: u32 = 5;
    pub const CHANNEL_OPEN: u32 = 6;
    /// channel.close: `code`, `text` is the reply text.
    pub const CHANNEL_CLOSE: u32 = 7;
    /// The fd was closed: `ConnClosed` follows in its own record.
    pub const CLOSED: u32 = 8;
}

/// Bytes of a shortstr kept in an event (vhost, reply text); longer ones are cut.
pub const TEXT_BYTES: usize = 64;

/// A rare event of a connection. Never carries body or credential bytes: `text` is only ever
/// the vhost of connection.open or the reply text of a close.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub fd: u32,
    pub at_ns: u64,
    /// The connection's `since_ns` (its identity with the fd).
    pub since_ns: u64,
    /// 0: in, 1: out.
    pub dir: u32,
    pub channel: u16,
    pub code: u16,
    /// Bytes of `text` valid; the shortstr's own length is `text_full`.
    pub text_len: u32,
    pub text_full: u32,
    pub text: [u8; TEXT_BYTES],
}

/// A connection's last figures, sent at its close.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closed {
    pub kind: u32,
    pub fd: u32,
    pub since_ns: u64,
    pub at_ns: u64,
    pub counters: Counters,
}

/// Slots of `Counters::methods`: see `method_slot`.
pub const METHOD_SLOTS: usize = 112;

/// The counter slot of a method: classes get 3 slots per method tens (method ids are
/// 10*a + b, b ≤ 2 in 0-9-1); slot 0 counts every method of no known class or id.
pub const fn method_slot(class: u16, method: u16) -> usize {
    let base = match class {
        10 => 1,   // connection: 10..61, 18 slots
        20 => 19,  // channel: 10..41, 12 slots
        40 => 31,  // exchange: 10..51, 15 slots
        50 => 46,  // queue: 10..51, 15 slots
        60 => 61,  // basic: 10..120, 36 slots
        85 => 97,  // confirm: 10..11, 3 slots
        90 => 100, // tx: 10..31, 9 slots
        _ => return 0,
    };
    let width = match class {
        10 => 18,
        20 => 12,
        40 | 50 => 15,
        60 => 36,
        85 => 3,
        90 => 9,
        _ => 0,
    };
    let tens = method / 10;
    let unit = method % 10;
    if tens == 0 || unit > 2 {
        return 0;
    }
    let at = (tens as usize - 1) * 3 + unit as usize;
    if at >= width { 0 } else { base + at }
}

/// Class and method ids of the methods the walk acts on.
pub mod method {
    pub const CONNECTION_OPEN: (u16, u16) = (10, 40);
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    pub const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
    pub const CONNECTION_UNBLOCKED: (u16, u16) = (10, 61);
    pub const CHANNEL_OPEN: (u16, u16) = (20, 10);
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
    pub const BASIC_RETURN: (u16, u16) = (60, 50);
    pub const BASIC_DELIVER: (u16, u16) = (60, 60);
    pub const BASIC_GET_OK: (u16, u16) = (60, 71);
    pub const BASIC_ACK: (u16, u16) = (60, 80);
    pub const BASIC_REJECT: (u16, u16) = (60, 90);
    pub const BASIC_NACK: (u16, u16) = (60, 120);
    pub const CONFIRM_SELECT: (u16, u16) = (85, 10);
}

crate::pod!(Walks, Conn, Event, Closed, Pending, Transfer, Chan, SslCall);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Walker>(), 8 + 4 * 4 + HDR_BYTES);
        assert_eq!(
            size_of::<Counters>(),
            7 * 8 + 6 * 16 + 8 + 3 * 8 + 2 * LATENCY_BUCKETS * 8 + METHOD_SLOTS * 8
        );
        assert_eq!(size_of::<Conn>(), 16 + size_of::<Counters>());
        assert_eq!(size_of::<SslCall>(), 32);
        assert_eq!(size_of::<Walks>(), 2 * size_of::<Walker>());
        assert_eq!(size_of::<Event>(), 40 + TEXT_BYTES);
        assert_eq!(size_of::<Closed>(), 24 + size_of::<Counters>());
        assert_eq!(size_of::<Pending>(), 32);
        assert_eq!(size_of::<Transfer>(), 6 * 8 + 8 * 4);
        assert_eq!(size_of::<Chan>(), 8 + 48 + 2 * TIMES_PER_CHANNEL * 8);
    }

    #[test]
    fn method_slots_are_distinct_and_in_range() {
        let ids: &[(u16, &[u16])] = &[
            (10, &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61]),
            (20, &[10, 11, 20, 21, 40, 41]),
            (40, &[10, 11, 20, 21, 30, 31, 40, 51]),
            (50, &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51]),
            (
                60,
                &[
                    10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
                ],
            ),
            (85, &[10, 11]),
            (90, &[10, 11, 20, 21, 30, 31]),
        ];
        let mut seen = [false; METHOD_SLOTS];
        for (class, methods) in ids {
            for &m in *methods {
                let s = method_slot(*class, m);
                assert!(s > 0 && s < METHOD_SLOTS, "{class}.{m}");
                assert!(!seen[s], "{class}.{m} shares slot {s}");
                seen[s] = true;
            }
        }
        assert_eq!(method_slot(99, 10), 0);
        assert_eq!(method_slot(60, 5), 0);
        assert_eq!(method_slot(85, 130), 0);
    }
}
