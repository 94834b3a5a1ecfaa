//! The kernel's own per-socket counters, read the way `ss -ti` reads them: one
//! NETLINK_SOCK_DIAG / INET_DIAG dump per address family with `tcp_info` (INET_DIAG_INFO),
//! polled once per interval. This replaces hooks on every send and receive of every process
//! on the host: the only cost is lavtrace's own dump, once per interval.
//!
//! The dump lists every TCP socket of the network namespace; the target's are those whose
//! `idiag_inode` is one of the socket inodes in `/proc/PID/fd`. A socket the target no longer
//! holds (closed, still in FIN_WAIT1 or LAST_ACK) has inode 0 there: its last figures come from
//! the destroy hook instead (`lavtrace-ebpf/src/tcp.rs`).

use std::{collections::HashSet, net::SocketAddr, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};
use tracing::debug;

use lavtrace_common::tcp::state;

/// The counters of `struct tcp_info` (include/uapi/linux/tcp.h) that lavtrace reports. The
/// uapi layout is fixed (fields are only ever appended), so these offsets hold on every kernel
/// that sends a `tcp_info` at least as long as the field's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// tcpi_bytes_acked (4.1+): bytes the peer acknowledged, SYN and FIN included (one
    /// sequence number each), not bytes written.
    pub bytes_acked: u64,
    /// tcpi_bytes_received (4.2+): bytes received in sequence, the peer's FIN included.
    pub bytes_received: u64,
    pub total_retrans: u32,
    /// tcpi_rtt: smoothed RTT, µs.
    pub rtt_us: u32,
}

const RTT: usize = 68;
const TOTAL_RETRANS: usize = 100;
const BYTES_ACKED: usize = 120;
const BYTES_RECEIVED: usize = 128;

impl TcpCounters {
    /// None when the kernel's tcp_info is too short to hold the byte counters (before 4.2).
    pub fn parse(info: &[u8]) -> Option<TcpCounters> {
        let u32_at = |at: usize| Some(u32::from_ne_bytes(info.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_ne_bytes(info.get(at..at + 8)?.try_into().ok()?));
        Some(TcpCounters {
            bytes_acked: u64_at(BYTES_ACKED)?,
            bytes_received: u64_at(BYTES_RECEIVED)?,
            total_retrans: u32_at(TOTAL_RETRANS)?,
            rtt_us: u32_at(RTT)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSock {
    pub family: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u32,
    pub inode: u64,
    /// None for sockets without tcp_info (LISTEN sockets have one, TIME_WAIT and
    /// NEW_SYN_RECV mini-sockets do not) or with one too short.
    pub counters: Option<TcpCounters>,
}

impl DiagSock {
    /// What /proc would show of it.
    pub fn proc_sock(&self) -> super::procfs::ProcSock {
        super::procfs::ProcSock {
            family: self.family,
            local: self.local,
            remote: self.remote,
            state: self.state,
            inode: self.inode,
        }
    }
}

/// A sock_diag socket in the target's network namespace.
pub struct Diag {
    socket: Socket,
    buf: Vec<u8>,
    /// Netlink messages that could not be decoded (counted, skipped).
    pub malformed: u64,
}

impl Diag {
    /// Opens the socket in the network namespace of `pid` (the dump lists that namespace's
    /// sockets only), from a short-lived thread so no thread of lavtrace changes namespace.
    pub fn open(pid: u32) -> Result<Diag> {
        let same = match (
            std::fs::read_link(format!("/proc/{pid}/ns/net")),
            std::fs::read_link("/proc/self/ns/net"),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => true, // cannot tell: stay in ours
        };
        let socket = if same {
            new_socket()?
        } else {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .with_context(|| format!("opening the network namespace of {pid}"))?;
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: setns on this thread only, with an fd we own; the thread ends
                    // right after, so nothing else runs in that namespace.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .context("entering the target's network namespace");
                    }
                    new_socket()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("sock_diag thread panicked"))?
            })?
        };
        Ok(Diag {
            socket,
            buf: vec![0; 64 << 10],
            malformed: 0,
        })
    }

    /// One dump, for `lavtrace check`: Err says why the kernel answers none (e.g. tcp_diag
    /// is a module that cannot be loaded).
    pub fn check(&mut self) -> Result<()> {
        self.dump(AF_INET, &HashSet::new(), &mut Vec::new())
    }

    /// The TCP sockets (both families, every state) whose inode is in `inodes`.
    pub fn target_sockets(&mut self, inodes: &HashSet<u64>) -> Vec<DiagSock> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            if let Err(e) = self.dump(family, inodes, &mut out) {
                debug!("tcp: sock_diag dump (family {family}) failed: {e:#}");
            }
        }
        out
    }

    fn dump(&mut self, family: u8, inodes: &HashSet<u64>, out: &mut Vec<DiagSock>) -> Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                // TIME_WAIT sockets belong to no process (no inode to match), and a host can
                // hold tens of thousands: the kernel then skips them, unsent.
                states: StateFlags::all() - StateFlags::TIME_WAIT,
                socket_id: if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                },
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        self.socket.send(&req, 0).context("sock_diag request")?;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .context("sock_diag reply")?;
            let n = n.min(self.buf.len());
            match parse_datagram(&self.buf[..n], inodes, out, &mut self.malformed) {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(e).context("the kernel refused the sock_diag dump"),
                None => {}
            }
        }
    }
}

fn new_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&NlAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    Ok(socket)
}

/// Parses one datagram of a dump into `out`; Some when the dump is over (done, or the
/// kernel's error). A message that does not decode is counted in `malformed` and skipped.
pub fn parse_datagram(
    mut data: &[u8],
    inodes: &HashSet<u64>,
    out: &mut Vec<DiagSock>,
    malformed: &mut u64,
) -> Option<std::io::Result<()>> {
    while data.len() >= 16 {
        // nlmsg_len, to step to the next message even when this one does not decode.
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            *malformed += 1;
            return None;
        }
        match NetlinkMessage::<SockDiagMessage>::deserialize(&data[..len]) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::Done(_) => return Some(Ok(())),
                NetlinkPayload::Error(e) if e.code.is_some() => return Some(Err(e.to_io())),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let inode = u64::from(h.inode);
                    if inode != 0 && inodes.contains(&inode) {
                        let id = &h.socket_id;
                        let counters = r.nlas.iter().find_map(|nla| match nla {
                            Nla::TcpInfo(info) => TcpCounters::parse(info),
                            _ => None,
                        });
                        out.push(DiagSock {
                            family: u16::from(h.family),
                            local: SocketAddr::new(id.source_address, id.source_port),
                            remote: SocketAddr::new(id.destination_address, id.destination_port),
                            state: u32::from(h.state),
                            inode,
                            counters,
                        });
                    }
                }
                _ => {}
            },
            Err(_) => *malformed += 1,
        }
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or_default();
    }
    None
}

/// The target's listening sockets among `socks`.
pub fn listeners(socks: &[DiagSock]) -> impl Iterator<Item = &DiagSock> {
    socks.iter().filter(|s| s.state == state::LISTEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };

    fn inode_of(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let s = link.to_str().unwrap();
        s.strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Against this kernel: our own sockets, found by inode, with the bytes each side
    /// had acknowledged and received (the SYN and the FIN count one each, as the kernel
    /// counts them).
    #[test]
    fn reads_its_own_sockets_counters() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[1; 300]).unwrap();
        let mut buf = [0; 300];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&[2; 40]).unwrap();
        c.read_exact(&mut buf[..40]).unwrap();
        let inodes: HashSet<u64> = [&l.as_raw_fd(), &c.as_raw_fd(), &s.as_raw_fd()]
            .iter()
            .map(|&&fd| inode_of(fd))
            .collect();
        let Ok(mut diag) = Diag::open(std::process::id()) else {
            return; // no sock_diag here (module not loaded): nothing to compare with
        };
        // The last ACK may still be on its way on a loaded machine: a few polls.
        let mut socks = Vec::new();
        for _ in 0..100 {
            socks = diag.target_sockets(&inodes);
            let client = socks.iter().find(|d| d.inode == inode_of(c.as_raw_fd()));
            if client.and_then(|d| d.counters).map(|c| c.bytes_acked) == Some(301) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(diag.malformed, 0);
        assert_eq!(socks.len(), 3, "{socks:?}");
        assert_eq!(listeners(&socks).count(), 1);
        let by = |fd: i32| {
            socks
                .iter()
                .find(|d| d.inode == inode_of(fd))
                .unwrap()
                .clone()
        };
        let client = by(c.as_raw_fd());
        assert_eq!(client.local, c.local_addr().unwrap());
        assert_eq!(client.remote, l.local_addr().unwrap());
        assert_eq!(client.state, state::ESTABLISHED);
        let cc = client.counters.unwrap();
        assert_eq!((cc.bytes_acked, cc.bytes_received), (301, 40), "SYN acked");
        let sc = by(s.as_raw_fd()).counters.unwrap();
        assert_eq!((sc.bytes_acked, sc.bytes_received), (40, 300));
    }

    #[test]
    fn garbage_is_counted_not_a_panic() {
        let inodes = HashSet::new();
        let mut out = Vec::new();
        let mut bad = 0;
        assert!(parse_datagram(&[0xff; 40], &inodes, &mut out, &mut bad).is_none());
        assert_eq!(bad, 1);
        // A well-framed message of an unknown type with a junk body.
        let mut msg = vec![0u8; 24];
        msg[..4].copy_from_slice(&24u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&20u16.to_ne_bytes()); // SOCK_DIAG_BY_FAMILY
        let mut twice = msg.clone();
        twice.extend(&msg);
        assert!(parse_datagram(&twice, &inodes, &mut out, &mut bad).is_none());
        assert_eq!(bad, 3, "both counted, the second one reached");
        assert!(out.is_empty());
        assert_eq!(TcpCounters::parse(&[0; 100]), None, "too short");
    }
}
