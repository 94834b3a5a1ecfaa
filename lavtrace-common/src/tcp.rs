//! Probe family `tcp`: the target's TCP sockets, their state transitions and counters.
//!
//! The kernel keeps the target's sockets in `TCP_SOCKS` (sock pointer → [`SockInfo`]) and sends
//! one [`TcpEvent`] per state transition, per socket it starts tracking and per socket it
//! forgets (with its final counters). Reset counts stay in the map; bytes and retransmits are
//! the kernel's own `tcp_sock` counters, polled by userspace through sock_diag and read once
//! more by the destroy hook (the delta since the last poll of a socket that is gone).

use crate::field::FieldSpec;

/// Sockets tracked at once (connections and listeners of the target).
pub const MAX_SOCKS: u32 = 65_536;
/// Local ports the target listens on.
pub const MAX_LISTEN_PORTS: u32 = 1_024;
/// Pre-existing connections announced by userspace at start, matched by 4-tuple.
pub const MAX_SEEDS: u32 = 65_536;
/// Threads inside tcp_v{4,6}_connect / inet_csk_listen_start at once (kprobe set: entry →
/// return).
pub const MAX_INFLIGHT: u32 = 16_384;

/// The event ring, and its size: churn sends about five records per socket (136 bytes each
/// with the ring's header), so 4 MiB hold ~30,000 of them, seconds of a thousand connections
/// a second while lavtrace waits for a CPU (the ring is drained on one thread).
pub const RING: &str = "TCP_EVENTS";
pub const RING_BYTES: u32 = 4 << 20;

/// Address families (linux/socket.h).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// TCP states (include/net/tcp_states.h). Userspace matches on these values, never transmutes.
pub mod state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
}

/// `TcpEvent::kind` values.
pub mod kind {
    /// A tracked socket changed state (`old_state` → `new_state`).
    pub const STATE: u32 = 1;
    /// The kernel started tracking a socket whose earlier life it did not see (kprobe set: one
    /// the target's accept returned untracked); `new_state` is its state now.
    pub const ADOPT: u32 = 2;
    /// A tracked socket is gone (destroyed): final counters in the event.
    pub const DESTROY: u32 = 3;
    /// The target closed a tracked socket (close(2) → tcp_close), in state `new_state`.
    pub const APP_CLOSE: u32 = 5;
    /// tcp_v{4,6}_connect failed synchronously; `origin` holds the positive errno.
    pub const CONNECT_ERROR: u32 = 6;
}

/// Why a socket is tracked (`SockInfo::origin`, `TcpEvent::origin`).
pub mod origin {
    /// The target connected it (CLOSE → SYN_SENT in the target's own context).
    pub const CONNECT: u32 = 1;
    /// Accepted on a port the target listens on (SYN_RECV → ESTABLISHED), or by accept(2).
    pub const ACCEPT: u32 = 2;
    /// A connection userspace found in /proc at start, matched by its 4-tuple.
    pub const SEED: u32 = 3;
    /// One of the target's listening sockets.
    pub const LISTENER: u32 = 5;
}

/// Value of `TCP_SOCKS`: per-socket counters, updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// `tcp_sock.bytes_acked` and `.bytes_received` as read at the CLOSE transition and at
    /// destroy, the larger of the two (DESTROY events, when `sock_read` is 1; in the map from
    /// the CLOSE transition on: tcp_disconnect zeroes the sock's between the two). Userspace
    /// keeps its own figures here:
    /// the payload acknowledged and received, without the SYN and FIN sequence numbers.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// `tcp_sock.total_retrans`, read like the byte counters.
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Last state seen (the kprobe on tcp_set_state only gets the new one).
    pub state: u32,
    pub origin: u32,
    /// 1 when the byte and retransmit counters were read from the sock (their
    /// offsets in `struct tcp_sock` were found in the kernel's BTF).
    pub sock_read: u32,
    pub _pad: u32,
}

/// Key of `TCP_SEEDS`: a connection's 4-tuple as the state tracepoint reports it. IPv4
/// addresses sit in the first 4 bytes of the 16, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// One record of the `TCP_EVENTS` ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The socket's kernel address: the connection's identity while it lives.
    pub sk: u64,
    pub kind: u32,
    pub old_state: u32,
    pub new_state: u32,
    pub origin: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    /// The task the event happened in (0 when not meaningful, e.g. softirq).
    pub tgid: u32,
    pub _reserved: u32,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Final counters (DESTROY only).
    pub info: SockInfo,
}

const SS: (&str, &str) = ("sock", "inet_sock_set_state");

const fn ss(global: &'static str, field: &'static str, size: u32) -> FieldSpec {
    FieldSpec::new(global, SS.0, SS.1, field, size)
}

/// The record fields of the tracepoint set (the kprobe set reads `sock_offsets` instead).
pub const FIELDS: &[FieldSpec] = &[
    ss("TCP_SS_SKADDR", "skaddr", 8),
    ss("TCP_SS_OLDSTATE", "oldstate", 4),
    ss("TCP_SS_NEWSTATE", "newstate", 4),
    ss("TCP_SS_SPORT", "sport", 2),
    ss("TCP_SS_DPORT", "dport", 2),
    ss("TCP_SS_FAMILY", "family", 2),
    ss("TCP_SS_PROTOCOL", "protocol", 2),
    ss("TCP_SS_SADDR", "saddr", 4),
    ss("TCP_SS_DADDR", "daddr", 4),
    ss("TCP_SS_SADDR_V6", "saddr_v6", 16),
    ss("TCP_SS_DADDR_V6", "daddr_v6", 16),
    FieldSpec::new("TCP_DESTROY_SKADDR", "tcp", "tcp_destroy_sock", "skaddr", 8),
    FieldSpec::new(
        "TCP_SEND_RESET_SKADDR",
        "tcp",
        "tcp_send_reset",
        "skaddr",
        8,
    ),
    FieldSpec::new(
        "TCP_RECEIVE_RESET_SKADDR",
        "tcp",
        "tcp_receive_reset",
        "skaddr",
        8,
    ),
];

/// Byte offsets in `struct sock_common`, read by the kprobe set (which has no tracepoint
/// record). This head of the struct is laid
/// out for the socket lookup hash (`skc_addrpair` then `skc_hash`, `skc_portpair`) and has not
/// moved since Linux 2.6.x; userspace checks these against the running kernel's BTF before
/// loading anything that reads them (`lavtrace/src/tcp/btf.rs`).
pub mod sock_offsets {
    pub const DADDR: usize = 0;
    pub const RCV_SADDR: usize = 4;
    pub const DPORT: usize = 12;
    pub const NUM: usize = 14;
    pub const FAMILY: usize = 16;
    pub const STATE: usize = 18;
    /// Bytes read at once from the start of the sock.
    pub const HEAD_LEN: usize = 20;
}

/// Globals userspace sets at load: the offsets of `bytes_acked`, `bytes_received` (u64) and
/// `total_retrans` (u32) in this kernel's `struct tcp_sock`, from its BTF (`lavtrace/src/tcp/btf.rs`; 0 = not known, then the
/// destroy hook reads nothing). Unlike the sock head, `tcp_sock` moves between versions and
/// configs, so these are never written down.
pub const SK_BYTES_ACKED: &str = "TCP_SK_BYTES_ACKED";
pub const SK_BYTES_RECEIVED: &str = "TCP_SK_BYTES_RECEIVED";
pub const SK_TOTAL_RETRANS: &str = "TCP_SK_TOTAL_RETRANS";
/// Globals userspace sets at load: the offsets of `skc_v6_daddr` and `skc_v6_rcv_saddr` in this
/// kernel's `struct sock_common`, from its BTF (0 = not known: the kprobe set then shows IPv6
/// connections as `[::]` and matches their seeds on ports only). They sit after fields that
/// depend on the config, so, unlike the head, they are never written down.
pub const SK_V6_DADDR: &str = "TCP_SK_V6_DADDR";
pub const SK_V6_RCV_SADDR: &str = "TCP_SK_V6_RCV_SADDR";
/// Globals userspace sets at load, from BTF: the offset of the `struct net *` in a sock
/// (`skc_net.net`) and of the namespace's inode number in `struct net` (`ns.inum`); 0 = not
/// known, then listening ports match in every network namespace. The value of
/// `TCP_LISTEN_PORTS` is the listener's namespace inode number (0 = any), so that a connection
/// accepted on the same port number in another namespace (a container) is not the target's.
pub const SK_NET: &str = "TCP_SK_NET";
pub const NET_INUM: &str = "TCP_NET_INUM";

crate::pod!(SockInfo, FlowKey, TcpEvent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<SockInfo>(), 5 * 8 + 4 * 4);
        assert_eq!(core::mem::size_of::<FlowKey>(), 4 * 2 + 32);
        assert_eq!(
            core::mem::size_of::<TcpEvent>(),
            8 + 8 + 4 * 4 + 4 * 2 + 8 + 32 + core::mem::size_of::<SockInfo>()
        );
        assert_eq!(core::mem::align_of::<TcpEvent>(), 8);
        assert_eq!(core::mem::offset_of!(TcpEvent, info) % 8, 0);
    }
}
