//! Probe family `tcp`: the target's TCP sockets, their state transitions and counters.
//!
//! State changes mostly run in softirq context, where the current task is whoever the CPU
//! interrupted, so sockets are attributed by pointer, not by pid: `TCP_SOCKS` holds the
//! target's sockets. A socket enters it when
//! - the target itself moves it CLOSE → SYN_SENT (connect) or to LISTEN (process context),
//! - it goes SYN_RECV → ESTABLISHED with a local port the target listens on (`TCP_LISTEN_PORTS`,
//!   filled here on the target's listen, by userspace from /proc at start and from the
//!   sock_diag poll of each interval),
//! - its 4-tuple is one of the pre-existing connections userspace found at start (`TCP_SEEDS`),
//! - (kprobe set) the target's accept returns it, or its listen succeeds on it.
//!
//! Two hook sets feed the same logic: tracepoints (fields read from the record) and kprobes
//! (the sock read at the `sock_offsets` of `lavtrace_common::tcp`). Userspace loads only the
//! programs of the set it picked (`lavtrace/src/tcp/hooks.rs`).
//!
//! Cost: nothing runs on a send or receive, nor on any syscall: bytes and RTT are the kernel's
//! own socket counters, which userspace reads through sock_diag once per interval. The state
//! hook runs on every TCP state change on the host: one hash lookup, then at most one more
//! lookup for sockets that are not the target's. The other hooks run on rare events (connect,
//! accept, listen, close, destroy, reset), one hash lookup for other processes. Retransmits,
//! like bytes, are the socket's own counter (`total_retrans`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use lavtrace_common::{
    ring::{DEFAULT_RING_BYTES, lost},
    tcp::{
        AF_INET, AF_INET6, FlowKey, IPPROTO_TCP, MAX_INFLIGHT, MAX_LISTEN_PORTS, MAX_SEEDS,
        MAX_SOCKS, SockInfo, TcpEvent, kind, origin, sock_offsets as so, state,
    },
};

use crate::{
    field,
    filter::current_target_task,
    ring::{count_lost, send},
};

#[map]
static TCP_SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(MAX_SOCKS, 0);

/// Local port → the listener's network namespace (inode number; 0 = any), for the ports the
/// target listens on.
#[map]
static TCP_LISTEN_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

#[map]
static TCP_SEEDS: HashMap<FlowKey, u32> = HashMap::with_max_entries(MAX_SEEDS, 0);

#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// tid → sock, between the entry and the return of tcp_v{4,6}_connect (kprobe set).
#[map]
static TCP_CONNECT_ARGS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

/// tid → sock, between the entry and the return of inet_csk_listen_start (kprobe set).
#[map]
static TCP_LISTEN_ARGS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

/// See `lavtrace_common::tcp::SK_BYTES_ACKED`.
#[unsafe(no_mangle)]
static TCP_SK_BYTES_ACKED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SK_BYTES_RECEIVED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SK_TOTAL_RETRANS: u32 = 0;

/// See `lavtrace_common::tcp::SK_V6_DADDR`.
#[unsafe(no_mangle)]
static TCP_SK_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SK_V6_RCV_SADDR: u32 = 0;

/// See `lavtrace_common::tcp::SK_NET`.
#[unsafe(no_mangle)]
static TCP_SK_NET: u32 = 0;
#[unsafe(no_mangle)]
static TCP_NET_INUM: u32 = 0;

/// The network namespace of the sock at `sk` (its inode number), 0 where the offsets are not
/// known or the read fails.
#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    // SAFETY: reads of read-only globals (volatile: set at load time).
    let (net_at, inum_at) = unsafe {
        (
            core::ptr::read_volatile(&TCP_SK_NET),
            core::ptr::read_volatile(&TCP_NET_INUM),
        )
    };
    if inum_at == 0 {
        return 0;
    }
    let Some(net) = sock_read::<u64>(sk, net_at) else {
        return 0;
    };
    sock_read::<u32>(net, inum_at).unwrap_or(0)
}

/// A connection's addresses as the hooks know them.
#[derive(Clone, Copy, Default)]
struct Tuple {
    family: u16,
    lport: u16,
    rport: u16,
    laddr: [u8; 16],
    raddr: [u8; 16],
}

impl Tuple {
    #[inline(always)]
    fn key(&self) -> FlowKey {
        FlowKey {
            family: self.family,
            lport: self.lport,
            rport: self.rport,
            _pad: 0,
            laddr: self.laddr,
            raddr: self.raddr,
        }
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn emit(kind: u32, sk: u64, old: u32, new: u32, origin: u32, t: &Tuple, info: Option<&SockInfo>) {
    let event = TcpEvent {
        ts_ns: now(),
        sk,
        kind,
        old_state: old,
        new_state: new,
        origin,
        family: t.family,
        lport: t.lport,
        rport: t.rport,
        _pad: 0,
        tgid: current_tgid(),
        _reserved: 0,
        laddr: t.laddr,
        raddr: t.raddr,
        info: match info {
            Some(i) => *i,
            None => SockInfo::default(),
        },
    };
    send(&TCP_EVENTS, lost::TCP, &event);
}

#[inline(always)]
fn track(sk: u64, st: u32, how: u32) -> bool {
    let info = SockInfo {
        state: st,
        origin: how,
        ..SockInfo::default()
    };
    if TCP_SOCKS.insert(sk, info, 0).is_err() {
        count_lost(lost::TCP);
        return false;
    }
    true
}

/// Adds `n` to a counter of a map value that other CPUs may update at the same time.
#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    // core's AtomicU64 has no fetch_add for the BPF target; the intrinsic lowers to the BPF
    // atomic add (the result is unused, so no BPF_FETCH: any kernel with eBPF has it).
    // SAFETY: `counter` points into a live map value (8-byte aligned u64).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// One state change of any TCP socket on the host: `tuple` is only evaluated when needed.
#[inline(always)]
fn on_state(sk: u64, old: u32, new: u32, tuple: impl Fn() -> Tuple) {
    if let Some(info) = TCP_SOCKS.get_ptr_mut(sk) {
        // SAFETY: map value slot, valid for this program run.
        let info = unsafe { &mut *info };
        info.state = new;
        if new == state::CLOSE {
            // Final here: a close with SO_LINGER 0 (RabbitMQ's default) goes through
            // tcp_disconnect, which zeroes the counters after this transition and before
            // the destroy hook runs.
            read_counters(sk, info);
        } else if old == state::CLOSE {
            // The socket is used again (a connect after a failed one): its counters restart.
            info.bytes_acked = 0;
            info.bytes_received = 0;
            info.retransmits = 0;
            info.sock_read = 0;
        }
        let t = tuple();
        if new == state::CLOSE && info.origin == origin::LISTENER {
            let port = u32::from(t.lport);
            let _ = TCP_LISTEN_PORTS.remove(port);
        }
        emit(kind::STATE, sk, old, new, info.origin, &t, None);
        return;
    }
    let how = if old == state::CLOSE && new == state::SYN_SENT {
        // connect(2) runs in the caller's context.
        if current_target_task().is_none() {
            return;
        }
        origin::CONNECT
    } else if new == state::LISTEN {
        // listen(2) likewise.
        if current_target_task().is_none() {
            return;
        }
        let t = tuple();
        if t.lport != 0 {
            let _ = TCP_LISTEN_PORTS.insert(u32::from(t.lport), netns_of(sk), 0);
        }
        origin::LISTENER
    } else if old == state::SYN_RECV && new == state::ESTABLISHED {
        // The handshake of an incoming connection completes in softirq; the child carries
        // the listener's local port.
        let port = u32::from(tuple().lport);
        // SAFETY: read-only use of the value.
        let Some(&netns) = (unsafe { TCP_LISTEN_PORTS.get(port) }) else {
            return;
        };
        // The same port number in another network namespace (a container) is not the
        // target's listener.
        if netns != 0 && netns_of(sk) != netns {
            return;
        }
        origin::ACCEPT
    } else if old == state::CLOSE
        || old == state::SYN_SENT
        || old == state::LISTEN
        || old == state::NEW_SYN_RECV
        || old == state::SYN_RECV
    {
        return; // connection set-up of another process: no pre-existing connection is here
    } else {
        let key = tuple().key();
        // SAFETY: read-only use of the value.
        if unsafe { TCP_SEEDS.get(key) }.is_none() {
            return;
        }
        let _ = TCP_SEEDS.remove(key);
        origin::SEED
    };
    if track(sk, new, how) {
        emit(kind::STATE, sk, old, new, how, &tuple(), None);
    }
}

/// The head of `struct sock_common` at `sk` (kprobe set).
#[derive(Clone, Copy)]
struct Head {
    tuple: Tuple,
    state: u32,
}

#[inline(always)]
fn read_head(sk: u64) -> Option<Head> {
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one only fails.
    let raw: [u8; so::HEAD_LEN] =
        unsafe { bpf_probe_read_kernel(sk as *const [u8; so::HEAD_LEN]) }.ok()?;
    let family = u16::from_ne_bytes([raw[so::FAMILY], raw[so::FAMILY + 1]]);
    let mut tuple = Tuple {
        family,
        lport: u16::from_ne_bytes([raw[so::NUM], raw[so::NUM + 1]]),
        // skc_dport is in network order.
        rport: u16::from_be_bytes([raw[so::DPORT], raw[so::DPORT + 1]]),
        ..Tuple::default()
    };
    if family == AF_INET {
        tuple.laddr[..4].copy_from_slice(&raw[so::RCV_SADDR..so::RCV_SADDR + 4]);
        tuple.raddr[..4].copy_from_slice(&raw[so::DADDR..so::DADDR + 4]);
    } else if family == AF_INET6 {
        // SAFETY: reads of read-only globals (volatile: set at load time).
        let (daddr_at, saddr_at) = unsafe {
            (
                core::ptr::read_volatile(&TCP_SK_V6_DADDR),
                core::ptr::read_volatile(&TCP_SK_V6_RCV_SADDR),
            )
        };
        if let Some(a) = sock_read::<[u8; 16]>(sk, daddr_at) {
            tuple.raddr = a;
        }
        if let Some(a) = sock_read::<[u8; 16]>(sk, saddr_at) {
            tuple.laddr = a;
        }
    } else {
        return None;
    }
    Some(Head {
        tuple,
        state: u32::from(raw[so::STATE]),
    })
}

#[derive(Clone, Copy)]
enum Counter {
    ResetsSent,
    ResetsReceived,
}

#[inline(always)]
fn bump(sk: u64, counter: Counter) {
    if let Some(info) = TCP_SOCKS.get_ptr_mut(sk) {
        // SAFETY: map value slot; the field pointers stay inside it.
        unsafe {
            match counter {
                Counter::ResetsSent => add(&raw mut (*info).resets_sent, 1),
                Counter::ResetsReceived => add(&raw mut (*info).resets_received, 1),
            }
        }
    }
}

/// A `T` of the sock at `off` bytes (0: offset not known, nothing read).
#[inline(always)]
fn sock_read<T>(sk: u64, off: u32) -> Option<T> {
    if off == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one only fails.
    unsafe { bpf_probe_read_kernel((sk + u64::from(off)) as *const T) }.ok()
}

/// Reads the sock's byte and retransmit counters into `info`, never below what an earlier read
/// (at the CLOSE transition) found: tcp_disconnect zeroes them before the sock is destroyed.
#[inline(always)]
fn read_counters(sk: u64, info: &mut SockInfo) {
    // SAFETY: reads of read-only globals (volatile: set at load time).
    let (acked_at, received_at, retrans_at) = unsafe {
        (
            core::ptr::read_volatile(&TCP_SK_BYTES_ACKED),
            core::ptr::read_volatile(&TCP_SK_BYTES_RECEIVED),
            core::ptr::read_volatile(&TCP_SK_TOTAL_RETRANS),
        )
    };
    if let (Some(acked), Some(received), Some(retrans)) = (
        sock_read::<u64>(sk, acked_at),
        sock_read::<u64>(sk, received_at),
        sock_read::<u32>(sk, retrans_at),
    ) {
        info.bytes_acked = info.bytes_acked.max(acked);
        info.bytes_received = info.bytes_received.max(received);
        info.retransmits = info.retransmits.max(u64::from(retrans));
        info.sock_read = 1;
    }
}

/// A tracked socket is gone: its final counters go to userspace and its slot is freed (the
/// kernel may reuse the address for a new socket). The byte counters are read from the sock
/// here, where they are final: userspace polls them once per interval, and this is what a
/// socket that closed since the last poll did meanwhile.
#[inline(always)]
fn on_destroy(sk: u64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(mut info) = (unsafe { TCP_SOCKS.get(sk) }).copied() else {
        return;
    };
    let _ = TCP_SOCKS.remove(sk);
    read_counters(sk, &mut info);
    emit(
        kind::DESTROY,
        sk,
        info.state,
        info.state,
        info.origin,
        &Tuple::default(),
        Some(&info),
    );
}

// ---- tracepoint set: record fields at the offsets of this kernel's format files ---------

field::offsets!(
    // sock:inet_sock_set_state
    TCP_SS_SKADDR,
    TCP_SS_OLDSTATE,
    TCP_SS_NEWSTATE,
    TCP_SS_SPORT,
    TCP_SS_DPORT,
    TCP_SS_FAMILY,
    TCP_SS_PROTOCOL,
    TCP_SS_SADDR,
    TCP_SS_DADDR,
    TCP_SS_SADDR_V6,
    TCP_SS_DADDR_V6,
    /// tcp:tcp_destroy_sock `skaddr`.
    TCP_DESTROY_SKADDR,
    /// tcp:tcp_send_reset `skaddr` (NULL for resets sent without a socket).
    TCP_SEND_RESET_SKADDR,
    /// tcp:tcp_receive_reset `skaddr`.
    TCP_RECEIVE_RESET_SKADDR,
);

#[tracepoint]
pub fn tcp_state_tp(ctx: TracePointContext) -> u32 {
    if field::read::<u16>(&ctx, &TCP_SS_PROTOCOL) != IPPROTO_TCP {
        return 0;
    }
    let sk: u64 = field::read(&ctx, &TCP_SS_SKADDR);
    let old = field::read::<i32>(&ctx, &TCP_SS_OLDSTATE) as u32;
    let new = field::read::<i32>(&ctx, &TCP_SS_NEWSTATE) as u32;
    on_state(sk, old, new, || {
        let family: u16 = field::read(&ctx, &TCP_SS_FAMILY);
        let mut t = Tuple {
            family,
            lport: field::read(&ctx, &TCP_SS_SPORT),
            rport: field::read(&ctx, &TCP_SS_DPORT),
            ..Tuple::default()
        };
        if family == AF_INET6 {
            t.laddr = field::read(&ctx, &TCP_SS_SADDR_V6);
            t.raddr = field::read(&ctx, &TCP_SS_DADDR_V6);
        } else {
            t.laddr[..4].copy_from_slice(&field::read::<[u8; 4]>(&ctx, &TCP_SS_SADDR));
            t.raddr[..4].copy_from_slice(&field::read::<[u8; 4]>(&ctx, &TCP_SS_DADDR));
        }
        t
    });
    0
}

#[tracepoint]
pub fn tcp_destroy_tp(ctx: TracePointContext) -> u32 {
    on_destroy(field::read(&ctx, &TCP_DESTROY_SKADDR));
    0
}

#[tracepoint]
pub fn tcp_send_reset_tp(ctx: TracePointContext) -> u32 {
    bump(
        field::read(&ctx, &TCP_SEND_RESET_SKADDR),
        Counter::ResetsSent,
    );
    0
}

#[tracepoint]
pub fn tcp_receive_reset_tp(ctx: TracePointContext) -> u32 {
    bump(
        field::read(&ctx, &TCP_RECEIVE_RESET_SKADDR),
        Counter::ResetsReceived,
    );
    0
}

// ---- kprobe set ----------------------------------------------------------------------------

#[inline(always)]
fn arg_sk(ctx: &ProbeContext) -> Option<u64> {
    let sk: *const u8 = ctx.arg(0)?;
    (!sk.is_null()).then_some(sk as u64)
}

/// tcp_set_state(struct sock *sk, int state): runs before the store, so the sock still holds
/// the old state.
#[kprobe]
pub fn tcp_set_state_kp(ctx: ProbeContext) -> u32 {
    let Some(sk) = arg_sk(&ctx) else { return 0 };
    let Some(new) = ctx.arg::<i32>(1) else {
        return 0;
    };
    let Some(head) = read_head(sk) else { return 0 };
    on_state(sk, head.state, new as u32, || head.tuple);
    0
}

/// tcp_v4_connect / tcp_v6_connect(struct sock *sk, ...): track the socket before its
/// CLOSE → SYN_SENT, remember it for the return.
#[kprobe]
pub fn tcp_connect_kp(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let Some(sk) = arg_sk(&ctx) else { return 0 };
    // SAFETY: read-only lookup.
    if unsafe { TCP_SOCKS.get(sk) }.is_none() && !track(sk, state::CLOSE, origin::CONNECT) {
        return 0;
    }
    if TCP_CONNECT_ARGS.insert(tid, sk, 0).is_err() {
        count_lost(lost::TCP);
    }
    0
}

/// Return of tcp_v{4,6}_connect: a synchronous failure (no route, no port) is reported and
/// the socket, still CLOSE, forgotten.
#[kretprobe]
pub fn tcp_connect_ret_kp(ctx: RetProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(sk) = (unsafe { TCP_CONNECT_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = TCP_CONNECT_ARGS.remove(tid);
    let ret: i32 = ctx.ret();
    if ret >= 0 {
        return 0;
    }
    // SAFETY: read-only lookup, value copied.
    if let Some(info) = unsafe { TCP_SOCKS.get(sk) }.copied()
        && info.state == state::CLOSE
    {
        let _ = TCP_SOCKS.remove(sk);
    }
    let tuple = read_head(sk).map_or(Tuple::default(), |h| h.tuple);
    emit(
        kind::CONNECT_ERROR,
        sk,
        state::CLOSE,
        state::CLOSE,
        ret.unsigned_abs(),
        &tuple,
        None,
    );
    0
}

/// Return of inet_csk_accept: the accepted sock, in the accepting task's context. Usually
/// already tracked (SYN_RECV → ESTABLISHED on a known port); this catches the rest.
#[kretprobe]
pub fn tcp_accept_ret_kp(ctx: RetProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0;
    }
    let sk: *const u8 = ctx.ret();
    if sk.is_null() {
        return 0;
    }
    let sk = sk as u64;
    // SAFETY: read-only lookup.
    if unsafe { TCP_SOCKS.get(sk) }.is_some() {
        return 0;
    }
    let Some(head) = read_head(sk) else { return 0 };
    if track(sk, head.state, origin::ACCEPT) {
        emit(
            kind::ADOPT,
            sk,
            head.state,
            head.state,
            origin::ACCEPT,
            &head.tuple,
            None,
        );
    }
    0
}

/// tcp_close(struct sock *sk, long timeout): the target closed the socket.
#[kprobe]
pub fn tcp_close_kp(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0;
    }
    let Some(sk) = arg_sk(&ctx) else { return 0 };
    // SAFETY: read-only lookup, value copied.
    if let Some(info) = unsafe { TCP_SOCKS.get(sk) }.copied() {
        emit(
            kind::APP_CLOSE,
            sk,
            info.state,
            info.state,
            info.origin,
            &Tuple::default(),
            None,
        );
    }
    0
}

/// tcp_v4_destroy_sock(struct sock *sk) (IPv6 sockets end there too).
#[kprobe]
pub fn tcp_destroy_kp(ctx: ProbeContext) -> u32 {
    if let Some(sk) = arg_sk(&ctx) {
        on_destroy(sk);
    }
    0
}

/// tcp_send_active_reset(struct sock *sk, ...): resets the socket sends on abort/linger 0.
#[kprobe]
pub fn tcp_send_reset_kp(ctx: ProbeContext) -> u32 {
    if let Some(sk) = arg_sk(&ctx) {
        bump(sk, Counter::ResetsSent);
    }
    0
}

/// tcp_reset(struct sock *sk, struct sk_buff *skb): a reset arrived on the socket.
#[kprobe]
pub fn tcp_receive_reset_kp(ctx: ProbeContext) -> u32 {
    if let Some(sk) = arg_sk(&ctx) {
        bump(sk, Counter::ResetsReceived);
    }
    0
}

/// inet_csk_listen_start(struct sock *sk, ...): the target's listen(2). tcp_set_state never
/// sees a LISTEN (it is set with inet_sk_set_state), so this is how the kprobe set learns of a
/// listener opened after attach; remember the socket for the return, where its port is set.
#[kprobe]
pub fn tcp_listen_kp(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    if let Some(sk) = arg_sk(&ctx)
        && TCP_LISTEN_ARGS.insert(tid, sk, 0).is_err()
    {
        count_lost(lost::TCP);
    }
    0
}

/// Return of inet_csk_listen_start: on success the port is bound (even a listen without bind
/// has had one picked by now): the accepts on it are the target's from here on.
#[kretprobe]
pub fn tcp_listen_ret_kp(ctx: RetProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(sk) = (unsafe { TCP_LISTEN_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = TCP_LISTEN_ARGS.remove(tid);
    let ret: i32 = ctx.ret();
    if ret != 0 {
        return 0;
    }
    let Some(head) = read_head(sk) else { return 0 };
    if head.tuple.lport != 0 {
        let _ = TCP_LISTEN_PORTS.insert(u32::from(head.tuple.lport), netns_of(sk), 0);
    }
    // SAFETY: read-only lookup.
    if unsafe { TCP_SOCKS.get(sk) }.is_none() && track(sk, state::LISTEN, origin::LISTENER) {
        emit(
            kind::STATE,
            sk,
            state::CLOSE,
            state::LISTEN,
            origin::LISTENER,
            &head.tuple,
            None,
        );
    }
    0
}
