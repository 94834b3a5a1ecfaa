//! Mode `amqps-load`: publishes over AMQPS as fast as one connection goes, timed, for the
//! benchmark of the amqp family's SSL probes. A TLS server on `--port` (tls.rs: the process's
//! libssl); its client is a child process forked after the handshake, so that only the
//! server is the target, as with a broker. The client sends the protocol header,
//! channel.open and confirm.select, then `--messages` publishes (method, content header and one
//! body frame of `--size` bytes) in one SSL_write each, as a client library does; the server
//! reads them with 16 KiB SSL_read calls, as LavinMQ's buffered socket does, and confirms every
//! 100th with a multiple basic.ack in one SSL_write. After `go`, the client prints
//! `result {"ns": N, "messages": M}`: the wall time from its first publish to the last confirm
//! read; then the server prints `done`.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    time::Instant,
};

use crate::tls;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
}

const CONFIRM_EVERY: u64 = 100;
const CHUNK: usize = 16_384;

fn frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend(channel.to_be_bytes());
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
    out.push(0xCE);
}

fn publish(size: usize) -> Vec<u8> {
    let mut m = Vec::new();
    let mut args = vec![0, 60, 0, 40, 0, 0, 0];
    args.push(10);
    args.extend(b"lavtrace-q");
    args.push(0);
    frame(&mut m, 1, 1, &args);
    let mut h = vec![0, 60, 0, 0];
    h.extend((size as u64).to_be_bytes());
    h.extend([0, 0]);
    frame(&mut m, 2, 1, &h);
    frame(&mut m, 3, 1, &vec![b'x'; size]);
    m
}

fn ack(tag: u64) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 80];
    p.extend(tag.to_be_bytes());
    p.push(1);
    let mut out = Vec::new();
    frame(&mut out, 1, 1, &p);
    out
}

pub fn run(a: &Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", a.port))?;
    let acceptor = tls::acceptor()?;
    let (mut server, client) = tls::pair(&acceptor, &listener)?;
    let mut go = [0 as libc::c_int; 2];
    // SAFETY: a two-int array for the two fds.
    if unsafe { libc::pipe(go.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: one thread here (the handshake's peer thread has been joined): the child may
    // go on running Rust code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if child == 0 {
        drop(server);
        let code = match client_side(client, go[0], a) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("lavtrace-workload amqps-load client: {e}");
                1
            }
        };
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    drop(client);
    lavtrace_common::start::announce_ready_then_wait_go()?;
    // SAFETY: writes one byte from a live buffer to the pipe's write end.
    if unsafe { libc::write(go[1], [1u8].as_ptr().cast(), 1) } != 1 {
        return Err(std::io::Error::last_os_error());
    }
    let message = publish(a.size).len() as u64;
    let n = a.messages;
    let total = 8 + setup().len() as u64 + message * n;
    let mut buf = vec![0u8; CHUNK];
    let (mut got, mut confirmed) = (0u64, 0u64);
    while got < total {
        got += tls::read_some(&mut server, &mut buf)? as u64;
        let whole = got.saturating_sub(8 + setup().len() as u64) / message;
        while confirmed + CONFIRM_EVERY <= whole || (whole == n && confirmed < n) {
            confirmed = (confirmed + CONFIRM_EVERY).min(n);
            tls::write_all_with(&mut server, &ack(confirmed), CHUNK, true)?;
        }
    }
    let mut status = 0;
    // SAFETY: waits for this process's own child.
    if unsafe { libc::waitpid(child, &mut status, 0) } != child || status != 0 {
        return Err(std::io::Error::other(format!(
            "the client ended with status {status}"
        )));
    }
    lavtrace_common::start::announce_done()
}

/// channel.open and confirm.select on channel 1.
fn setup() -> Vec<u8> {
    let mut out = Vec::new();
    frame(&mut out, 1, 1, &[0, 20, 0, 10, 0]);
    frame(&mut out, 1, 1, &[0, 85, 0, 10, 0]);
    out
}

/// The client, in the child: waits for the parent's byte on `go`, publishes, reads the
/// confirms, prints the result.
fn client_side(mut client: tls::Stream, go: libc::c_int, a: &Args) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a live buffer.
    if unsafe { libc::read(go, byte.as_mut_ptr().cast(), 1) } != 1 {
        return Err(std::io::Error::other("no go from the server"));
    }
    let n = a.messages;
    let msg = publish(a.size);
    let started = Instant::now();
    client.write_all(b"AMQP\x00\x00\x09\x01")?;
    client.write_all(&setup())?;
    for _ in 0..n {
        client.write_all(&msg)?;
    }
    let mut acks = vec![0u8; n.div_ceil(CONFIRM_EVERY) as usize * ack(0).len()];
    client.read_exact(&mut acks)?;
    let ns = started.elapsed().as_nanos() as u64;
    let mut out = std::io::stdout().lock();
    writeln!(out, r#"result {{"ns": {ns}, "messages": {n}}}"#)?;
    out.flush()
}
