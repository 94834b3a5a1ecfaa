//! The target's TCP sockets as /proc shows them: its socket inodes (/proc/PID/fd) joined with
//! /proc/PID/net/tcp{,6} (the target's network namespace). Used at start for the connections
//! that already exist and the ports it listens on, and again when it calls listen(2).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lavtrace_common::tcp::{AF_INET, AF_INET6, FlowKey, state};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSock {
    pub family: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u32,
    pub inode: u64,
}

impl ProcSock {
    pub fn key(&self) -> FlowKey {
        flow_key(self.family, self.local, self.remote)
    }
}

/// The 4-tuple as the kernel programs key it (IPv4 in the first 4 bytes).
pub fn flow_key(family: u16, local: SocketAddr, remote: SocketAddr) -> FlowKey {
    FlowKey {
        family,
        lport: local.port(),
        rport: remote.port(),
        _pad: 0,
        laddr: addr_bytes(local.ip()),
        raddr: addr_bytes(remote.ip()),
    }
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address from the kernel's bytes (as in `FlowKey`).
pub fn sock_addr(family: u16, bytes: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    };
    SocketAddr::new(ip, port)
}

/// Inodes of the sockets in the target's fd table.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|link| {
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Reads /proc/.../net/tcp{,6} in large reads: the kernel walks its socket hash again for each
/// read(2), so on a host with tens of thousands of sockets (TIME_WAIT ones too) reading the
/// file in 8 KiB reads took about a second of system time.
fn read_table(path: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::with_capacity(1 << 20);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The target's TCP sockets (listeners and connections) in its own network namespace.
pub fn target_sockets(pid: u32) -> Vec<ProcSock> {
    let inodes = socket_inodes(pid);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
        let Ok(text) = read_table(&format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        out.extend(sockets_of(&text, family, &inodes, &mut seen));
    }
    out
}

/// The lines of one /proc/net/tcp{,6} text whose inode is in `inodes`, each socket once.
/// The file is no snapshot: while other sockets come and go, the kernel resumes each read(2)
/// by position in its hash and can print a socket again (a churn beside a pre-existing
/// connection once listed it 43 times).
fn sockets_of<'a>(
    text: &'a str,
    family: u16,
    inodes: &'a HashSet<u64>,
    seen: &'a mut HashSet<u64>,
) -> impl Iterator<Item = ProcSock> + 'a {
    text.lines()
        .skip(1)
        .filter_map(move |l| parse_line(l, family))
        .filter(move |s| inodes.contains(&s.inode) && seen.insert(s.inode))
}

/// The process that listens on TCP `port` in lavtrace's own network namespace (the broker
/// behind `lavtrace demo --amqp URL`).
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut listeners = HashSet::new();
    for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
        let Ok(text) = read_table(&format!("/proc/self/net/{file}")) else {
            continue;
        };
        listeners.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| parse_line(l, family))
                .filter(|s| s.state == state::LISTEN && s.local.port() == port)
                .map(|s| s.inode),
        );
    }
    if listeners.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| !socket_inodes(pid).is_disjoint(&listeners))
}

/// One line of /proc/net/tcp{,6}:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`
pub fn parse_line(line: &str, family: u16) -> Option<ProcSock> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let state = u32::from_str_radix(f[3], 16).ok()?;
    if !(state::ESTABLISHED..=state::NEW_SYN_RECV).contains(&state) {
        return None;
    }
    Some(ProcSock {
        family,
        local: parse_addr(f[1], family)?,
        remote: parse_addr(f[2], family)?,
        state,
        inode: f[9].parse().ok()?,
    })
}

/// `0100007F:1628` (IPv4) or 32 hex digits `:port` (IPv6): the address is printed as 32-bit
/// words in host order, the port in host order.
fn parse_addr(s: &str, family: u16) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = addr
        .as_bytes()
        .chunks(8)
        .map(|c| {
            let w = u32::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok()?;
            Some(w.to_ne_bytes())
        })
        .collect();
    let words = words?;
    let ip = match (family, words.len()) {
        (AF_INET, 1) => IpAddr::V4(Ipv4Addr::from(words[0])),
        (AF_INET6, 4) => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The inode number of `pid`'s network namespace (what the kernel calls its `ns.inum`), 0
/// when it cannot be read.
pub fn netns_inode(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        let v4 = "   1: 0100007F:1628 0100007F:B3C2 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        let s = parse_line(v4, AF_INET).unwrap();
        assert_eq!(s.local, "127.0.0.1:5672".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.1:46018".parse().unwrap());
        assert_eq!(s.state, state::ESTABLISHED);
        assert_eq!(s.inode, 4242);
        assert_eq!(s.key().laddr[..4], [127, 0, 0, 1]);

        let v6 = "   0: 00000000000000000000000001000000:1628 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(v6, AF_INET6).unwrap();
        assert_eq!(s.local, "[::1]:5672".parse().unwrap());
        assert_eq!(s.state, state::LISTEN);
        assert!(parse_line("  sl  local_address rem_address   st", AF_INET).is_none());
    }

    #[test]
    fn a_socket_printed_twice_is_listed_once() {
        let line = |inode: u64, rport: &str| {
            format!(
                "   1: 0100007F:1628 0100007F:{rport} 01 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1"
            )
        };
        let text = [
            "  sl  local_address".to_string(),
            line(7, "B3C2"),
            line(8, "B3C4"),
            line(7, "B3C2"),
            line(9, "B3C6"),
        ]
        .join("\n");
        let inodes: HashSet<u64> = [7, 8].into();
        let mut seen = HashSet::new();
        let got: Vec<u64> = sockets_of(&text, AF_INET, &inodes, &mut seen)
            .map(|s| s.inode)
            .collect();
        assert_eq!(got, [7, 8]);
    }

    #[test]
    fn finds_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let socks = target_sockets(std::process::id());
        assert!(
            socks
                .iter()
                .any(|s| s.local.port() == port && s.state == state::LISTEN),
            "{socks:?}"
        );
    }
}
