//! Modes `tcp` and `tcp-peer`: TCP connections with known histories, on 127.0.0.1 only.
//!
//! `tcp` (the traced process) listens, and starts `tcp-peer` (another process, never traced)
//! for the other ends. Before `ready` it has three accepted connections (A, B, G: pre-existing
//! for the tracer) and the peer has one connection to itself. After `go`, one connection at a
//! time, each step acknowledged by the peer so every transition happens in a known order:
//!
//! | name | how it opens       | data (target → / ← peer) | how it ends                          |
//! |------|--------------------|--------------------------|--------------------------------------|
//! | A    | pre-existing       | 3000 / 2000              | peer closes first                    |
//! | B    | pre-existing       | none                     | target closes first (no I/O before)  |
//! | G    | pre-existing       | 123 / 0                  | stays open                           |
//! | C    | accepted           | 4096 / 1024              | target closes first                  |
//! | D    | accepted           | 0 / 10                   | peer closes first                    |
//! | E    | accepted           | none                     | target resets (SO_LINGER 0)          |
//! | F    | accepted           | none                     | peer resets                          |
//! | O    | target connects    | 500 / 700                | target closes first                  |
//! | R    | target connects    | none; its SYN retransmitted once | target closes first          |
//!
//! R connects to a peer listener whose accept queue is full (backlog 0, one connection
//! waiting), so the kernel drops its SYN; the peer then makes room and the SYN retransmitted
//! after the initial 1 s timeout gets through. Its line carries `retransmits`, the socket's
//! own count (tcpi_total_retrans).
//!
//! Bytes exchanged before `go` (1000 each way on A) must not be counted. The peer also moves
//! data on its own connection during the run, which must not appear. At the end the target
//! prints one JSON line per connection (`{"name","local","remote"}`) and one for the peer's own
//! connection (`"name":"other"`), then `done`, then waits for stdin to close before exiting,
//! so a tracer stopped before that sees G still open.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use std::io::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// The target's listening port.
    #[arg(long)]
    pub port: u16,
}

fn other(msg: impl Into<String>) -> Error {
    Error::other(msg.into())
}

const LOOPBACK: &str = "127.0.0.1";

/// Sets SO_LINGER {on, 0}: close() then resets the connection.
pub(crate) fn linger_zero(s: &TcpStream) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid option struct and length for an owned socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::last_os_error())
    }
}

/// The socket's TCP state (tcpi_state, the first byte of struct tcp_info).
fn tcp_state(s: &TcpStream) -> Result<u8> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buffer and length describe writable memory we own.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(buf[0])
    } else {
        Err(Error::last_os_error())
    }
}

const FIN_WAIT2: u8 = 5;
/// Offset of tcpi_total_retrans in struct tcp_info (after 8 u8 and 23 u32 fields).
const TOTAL_RETRANS: usize = 100;

fn total_retrans(fd: i32) -> Result<u32> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buffer and length describe writable memory we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < TOTAL_RETRANS + 4 {
        return Err(Error::last_os_error());
    }
    let b = &buf[TOTAL_RETRANS..TOTAL_RETRANS + 4];
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

/// A listener on 127.0.0.1 with backlog 0: one connection waiting fills its accept queue.
fn tiny_listener() -> Result<TcpListener> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscalls on a descriptor we own; the address struct outlives the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let addr = sockaddr(0);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) != 0
            || libc::listen(fd, 0) != 0
        {
            return Err(Error::last_os_error());
        }
        Ok(listener)
    }
}

/// Connects to 127.0.0.1:`port` without blocking; `between` runs while the SYN is out.
fn connect_slowly(port: u16, between: impl FnOnce() -> Result<()>) -> Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscalls on a descriptor we own; the structs outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let addr = sockaddr(port);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (&addr as *const libc::sockaddr_in).cast(), len) == 0 {
            return Err(other("connected at once: the SYN was not dropped"));
        }
        let err = Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        between()?;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 10_000) != 1 {
            return Err(other("connect did not complete within 10s"));
        }
        stream.take_error()?.map_or(Ok(()), Err)?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

/// Waits for the peer's ACK of our FIN, so the peer's own FIN cannot arrive with it.
fn wait_fin_wait2(s: &TcpStream) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_state(s)? != FIN_WAIT2 {
        if Instant::now() > deadline {
            return Err(other("no FIN_WAIT2 within 5s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

pub(crate) fn read_eof(s: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 64];
    match s.read(&mut buf)? {
        0 => Ok(()),
        n => Err(other(format!("{n} unexpected bytes before EOF"))),
    }
}

fn send(s: &mut TcpStream, n: usize) -> Result<()> {
    s.write_all(&vec![0x5a; n])
}

fn recv(s: &mut TcpStream, n: usize) -> Result<()> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)
}

/// The target's handle on the peer process.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(port: u16) -> Result<Peer> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["tcp-peer", "--port", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| other("peer stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| other("peer stdout"))?);
        Ok(Peer {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one command and returns the peer's answer after `ok`.
    fn cmd(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        self.stdout.read_line(&mut answer)?;
        answer
            .trim_end()
            .strip_prefix("ok")
            .map(|rest| rest.trim().to_string())
            .ok_or_else(|| other(format!("peer: {line} → {answer:?}")))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Conns {
    listener: TcpListener,
    /// name, local, remote: taken while connected (a reset socket has no peer address).
    list: Vec<(&'static str, SocketAddr, SocketAddr)>,
}

impl Conns {
    /// The peer connects `name` to our listener; we accept it.
    fn accept(&mut self, peer: &mut Peer, name: &'static str) -> Result<TcpStream> {
        peer.cmd(&format!("connect {name}"))?;
        let (s, remote) = self.listener.accept()?;
        self.list.push((name, s.local_addr()?, remote));
        Ok(s)
    }
}

fn line(name: &str, local: SocketAddr, remote: SocketAddr) -> String {
    serde_json::json!({"name": name, "local": local.to_string(), "remote": remote.to_string()})
        .to_string()
}

/// Mode `tcp`: set-up before `ready` (returns what the run needs), then the run.
pub fn prepare() -> Result<impl FnOnce() -> Result<()>> {
    let listener = TcpListener::bind((LOOPBACK, 0))?;
    let port = listener.local_addr()?.port();
    let mut peer = Peer::start(port)?;
    let peer_port: u16 = peer.cmd("port")?.parse().map_err(|_| other("peer port"))?;
    let mut conns = Conns {
        listener,
        list: Vec::new(),
    };
    let mut a = conns.accept(&mut peer, "A")?;
    let mut b = conns.accept(&mut peer, "B")?;
    let mut g = conns.accept(&mut peer, "G")?;
    // Before tracing: not counted.
    send(&mut a, 1000)?;
    peer.cmd("recv A 1000")?;
    peer.cmd("send A 1000")?;
    recv(&mut a, 1000)?;
    let other_conn = peer.cmd("connect-self")?;

    Ok(move || {
        // A: pre-existing, the peer closes first.
        send(&mut a, 3000)?;
        peer.cmd("recv A 3000")?;
        peer.cmd("send A 2000")?;
        recv(&mut a, 2000)?;
        peer.cmd("close A")?;
        read_eof(&mut a)?;
        drop(a);

        // B: pre-existing, we close first without any I/O during the trace.
        b.shutdown(Shutdown::Write)?;
        wait_fin_wait2(&b)?;
        peer.cmd("close B")?;
        read_eof(&mut b)?;
        drop(b);

        // G: pre-existing, some data, stays open.
        send(&mut g, 123)?;
        peer.cmd("recv G 123")?;

        peer.cmd("self-traffic")?;

        // C: accepted, we close first.
        let mut c = conns.accept(&mut peer, "C")?;
        send(&mut c, 4096)?;
        peer.cmd("recv C 4096")?;
        peer.cmd("send C 1024")?;
        recv(&mut c, 1024)?;
        c.shutdown(Shutdown::Write)?;
        wait_fin_wait2(&c)?;
        peer.cmd("close C")?;
        read_eof(&mut c)?;
        drop(c);

        // D: accepted, the peer closes first.
        let mut d = conns.accept(&mut peer, "D")?;
        peer.cmd("send D 10")?;
        recv(&mut d, 10)?;
        peer.cmd("close D")?;
        read_eof(&mut d)?;
        drop(d);

        // E: accepted, we reset it.
        let e = conns.accept(&mut peer, "E")?;
        linger_zero(&e)?;
        drop(e);
        peer.cmd("close E")?;

        // F: accepted, the peer resets it.
        let mut f = conns.accept(&mut peer, "F")?;
        peer.cmd("reset F")?;
        let mut buf = [0u8; 16];
        match f.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other_result => {
                return Err(other(format!("F: expected a reset, got {other_result:?}")));
            }
        }
        drop(f);

        // O: we connect out to the peer, and close first.
        let mut o = TcpStream::connect((LOOPBACK, peer_port))?;
        peer.cmd("accept O")?;
        conns.list.push(("O", o.local_addr()?, o.peer_addr()?));
        send(&mut o, 500)?;
        peer.cmd("recv O 500")?;
        peer.cmd("send O 700")?;
        recv(&mut o, 700)?;
        o.shutdown(Shutdown::Write)?;
        wait_fin_wait2(&o)?;
        peer.cmd("close O")?;
        read_eof(&mut o)?;
        drop(o);

        // R: our SYN is dropped by a full accept queue, retransmitted once, then accepted.
        let full_port: u16 = peer
            .cmd("listen-full")?
            .parse()
            .map_err(|_| other("full port"))?;
        let mut r = connect_slowly(full_port, || {
            // The SYN went out (and was dropped) inside connect(); make room before the
            // retransmission, due 1 s after it.
            std::thread::sleep(Duration::from_millis(200));
            peer.cmd("drain-full").map(drop)
        })?;
        peer.cmd("accept-full R")?;
        let r_line = serde_json::json!({
            "name": "R",
            "local": r.local_addr()?.to_string(),
            "remote": r.peer_addr()?.to_string(),
            "retransmits": total_retrans(r.as_raw_fd())?,
        });
        r.shutdown(Shutdown::Write)?;
        wait_fin_wait2(&r)?;
        peer.cmd("close R")?;
        read_eof(&mut r)?;
        drop(r);

        let mut out = std::io::stdout().lock();
        for (name, local, remote) in &conns.list {
            writeln!(out, "{}", line(name, *local, *remote))?;
        }
        writeln!(out, "{r_line}")?;
        let (l, r) = other_conn
            .split_once(' ')
            .ok_or_else(|| other("peer's own connection"))?;
        writeln!(
            out,
            "{}",
            serde_json::json!({"name": "other", "local": l, "remote": r, "pid": peer.child.id()})
        )?;
        drop(out);
        // G and the peer (holding G's other end) live until this process exits.
        std::mem::forget(g);
        std::mem::forget(peer);
        Ok(())
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct ResetsArgs {
    /// Connections accepted and reset, one after the other.
    #[arg(long, default_value_t = 30)]
    pub count: u32,
    /// Bytes each connection's peer sends, and we read, before the reset: a broker closing
    /// with SO_LINGER 0 after a transfer (the kernel zeroes the socket's counters on the way).
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
}

/// Mode `resets`: a reset storm. After `go`, `count` connections from the peer (another
/// process, never traced) are accepted and reset by us (SO_LINGER 0, then close), each reset
/// seen by the peer before the next connects; nothing else on any connection. Then `done`,
/// and it waits for stdin to close.
pub fn prepare_resets(args: &ResetsArgs) -> Result<impl FnOnce() -> Result<()>> {
    let listener = TcpListener::bind((LOOPBACK, 0))?;
    let mut peer = Peer::start(listener.local_addr()?.port())?;
    let (count, payload) = (args.count, args.payload);
    Ok(move || {
        for i in 0..count {
            peer.cmd(&format!("connect X{i}"))?;
            let (mut s, _) = listener.accept()?;
            if payload > 0 {
                peer.cmd(&format!("send X{i} {payload}"))?;
                recv(&mut s, payload)?;
            }
            linger_zero(&s)?;
            drop(s);
            peer.cmd(&format!("expect-reset X{i}"))?;
        }
        std::mem::forget(peer);
        Ok(())
    })
}

/// The peer: answers commands on stdin, one `ok ...` line each.
pub fn peer(args: &PeerArgs) -> Result<()> {
    let listener = TcpListener::bind((LOOPBACK, 0))?;
    let mut socks: std::collections::HashMap<String, TcpStream> = Default::default();
    let mut own: Option<(TcpStream, TcpStream)> = None;
    // The backlog-0 listener and the connection that fills its queue.
    let mut full: Option<(TcpListener, TcpStream)> = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for cmd in stdin.lock().lines() {
        let cmd = cmd?;
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let sock = |socks: &mut std::collections::HashMap<String, TcpStream>, name: &str| {
            socks
                .remove(name)
                .ok_or_else(|| other(format!("no connection {name}")))
        };
        let answer = match words.as_slice() {
            ["port"] => listener.local_addr()?.port().to_string(),
            ["connect", name] => {
                let s = TcpStream::connect((LOOPBACK, args.port))?;
                socks.insert((*name).into(), s);
                String::new()
            }
            ["accept", name] => {
                let (s, _) = listener.accept()?;
                socks.insert((*name).into(), s);
                String::new()
            }
            ["connect-self"] => {
                let c = TcpStream::connect(listener.local_addr()?)?;
                let (s, _) = listener.accept()?;
                let answer = format!("{} {}", c.local_addr()?, c.peer_addr()?);
                own = Some((c, s));
                answer
            }
            ["listen-full"] => {
                let l = tiny_listener()?;
                let filler = TcpStream::connect(l.local_addr()?)?;
                let port = l.local_addr()?.port();
                full = Some((l, filler));
                port.to_string()
            }
            ["drain-full"] => {
                let (l, _) = full.as_ref().ok_or_else(|| other("no full listener"))?;
                drop(l.accept()?);
                String::new()
            }
            ["accept-full", name] => {
                let (l, _) = full.as_ref().ok_or_else(|| other("no full listener"))?;
                let (s, _) = l.accept()?;
                socks.insert((*name).into(), s);
                String::new()
            }
            ["self-traffic"] => {
                let (c, s) = own.as_mut().ok_or_else(|| other("no own connection"))?;
                send(c, 777)?;
                recv(s, 777)?;
                String::new()
            }
            ["send", name, n] => {
                let mut s = sock(&mut socks, name)?;
                send(&mut s, n.parse().map_err(|_| other("size"))?)?;
                socks.insert((*name).into(), s);
                String::new()
            }
            ["recv", name, n] => {
                let mut s = sock(&mut socks, name)?;
                recv(&mut s, n.parse().map_err(|_| other("size"))?)?;
                socks.insert((*name).into(), s);
                String::new()
            }
            ["close", name] => {
                drop(sock(&mut socks, name)?);
                String::new()
            }
            ["expect-reset", name] => {
                let mut s = sock(&mut socks, name)?;
                let mut buf = [0u8; 16];
                match s.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
                    r => return Err(other(format!("{name}: expected a reset, got {r:?}"))),
                }
            }
            ["reset", name] => {
                let s = sock(&mut socks, name)?;
                linger_zero(&s)?;
                drop(s);
                String::new()
            }
            _ => return Err(other(format!("unknown command {cmd:?}"))),
        };
        writeln!(out, "ok {answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// Mode `tcp-late-listen`: listeners opened after `go`, so after a tracer attached. On each of
/// 127.0.0.1 and ::1 (when the host has it): bind a port, listen, connect to it, accept, 1500
/// bytes client → server and 300 back, the client closes first (waiting for FIN_WAIT2), then
/// the server. Both ends are ours. Prints `{"name","local","remote"}` for each end (`L4c`,
/// `L4s`, `L6c`, `L6s`) and `{"name":"listen","local"}` for each listener, then `done`; the
/// listeners stay open until stdin closes.
pub fn prepare_late_listen() -> Result<impl FnOnce() -> Result<()>> {
    Ok(move || {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for (tag, host) in [("L4", LOOPBACK), ("L6", "::1")] {
            let Ok(listener) = TcpListener::bind((host, 0)) else {
                continue; // no IPv6 loopback here
            };
            let mut c = TcpStream::connect(listener.local_addr()?)?;
            let (mut s, _) = listener.accept()?;
            out.push(line(&format!("{tag}c"), c.local_addr()?, c.peer_addr()?));
            out.push(line(&format!("{tag}s"), s.local_addr()?, s.peer_addr()?));
            out.push(
                serde_json::json!({"name": "listen", "local": listener.local_addr()?.to_string()})
                    .to_string(),
            );
            send(&mut c, 1500)?;
            recv(&mut s, 1500)?;
            send(&mut s, 300)?;
            recv(&mut c, 300)?;
            c.shutdown(Shutdown::Write)?;
            wait_fin_wait2(&c)?;
            read_eof(&mut s)?;
            drop(s);
            read_eof(&mut c)?;
            drop(c);
            keep.push(listener);
        }
        let mut stdout = std::io::stdout().lock();
        for l in &out {
            writeln!(stdout, "{l}")?;
        }
        std::mem::forget(keep);
        Ok(())
    })
}
