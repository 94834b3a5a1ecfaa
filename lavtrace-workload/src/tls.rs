//! TLS for mode `amqp-frames --tls` (an AMQPS server): OpenSSL through the `openssl` crate,
//! linked dynamically as LavinMQ links it, so the target maps a libssl whose SSL_read and
//! SSL_write a tracer can probe. A self-signed certificate made at start; the peer does not
//! verify it (both ends are this process, on loopback).
//!
//! The server's reads and writes go through both call forms LavinMQ's and the clients' builds
//! use: SSL_read/SSL_write (Crystal's) for the handshake and the one-byte calls, and
//! SSL_read_ex/SSL_write_ex (what the crate calls) for the 16 KiB ones.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::raw::c_int,
};

use foreign_types::ForeignTypeRef as _;
use openssl::{
    asn1::Asn1Time,
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::PKey,
    ssl::{SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode},
    x509::{X509, X509NameBuilder},
};

pub type Stream = SslStream<TcpStream>;

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The server's acceptor, with a fresh self-signed certificate.
pub fn acceptor() -> std::io::Result<SslAcceptor> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(other)?;
    let key = PKey::from_ec_key(EcKey::generate(&group).map_err(other)?).map_err(other)?;
    let mut name = X509NameBuilder::new().map_err(other)?;
    name.append_entry_by_text("CN", "localhost")
        .map_err(other)?;
    let name = name.build();
    let mut cert = X509::builder().map_err(other)?;
    cert.set_version(2).map_err(other)?;
    cert.set_subject_name(&name).map_err(other)?;
    cert.set_issuer_name(&name).map_err(other)?;
    cert.set_pubkey(&key).map_err(other)?;
    let (from, to) = (
        Asn1Time::days_from_now(0).map_err(other)?,
        Asn1Time::days_from_now(1).map_err(other)?,
    );
    cert.set_not_before(&from).map_err(other)?;
    cert.set_not_after(&to).map_err(other)?;
    cert.sign(&key, MessageDigest::sha256()).map_err(other)?;
    let cert = cert.build();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(other)?;
    b.set_private_key(&key).map_err(other)?;
    b.set_certificate(&cert).map_err(other)?;
    Ok(b.build())
}

/// A connection to `listener`, handshaken: (the server's end, the peer's end).
pub fn pair(acceptor: &SslAcceptor, listener: &TcpListener) -> std::io::Result<(Stream, Stream)> {
    let addr = listener.local_addr()?;
    let peer = std::thread::spawn(move || -> std::io::Result<Stream> {
        let mut b = SslConnector::builder(SslMethod::tls()).map_err(other)?;
        b.set_verify(SslVerifyMode::NONE);
        let c = b.build().configure().map_err(other)?.verify_hostname(false);
        c.connect("localhost", TcpStream::connect(addr)?)
            .map_err(other)
    });
    let (sock, _) = listener.accept()?;
    let server = acceptor.accept(sock).map_err(other)?;
    let peer = peer.join().map_err(|_| other("the TLS peer panicked"))??;
    Ok((server, peer))
}

/// One SSL_read (not `_ex`) of at most `buf.len()` bytes.
fn ssl_read(s: &mut Stream, buf: &mut [u8]) -> std::io::Result<usize> {
    let n = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
    // SAFETY: a live SSL of this stream, used by this thread only; `buf` is writable for `n`.
    let r = unsafe { openssl_sys::SSL_read(s.ssl().as_ptr(), buf.as_mut_ptr().cast(), n) };
    if r <= 0 {
        return Err(other(format!("SSL_read returned {r}")));
    }
    Ok(r as usize)
}

/// One SSL_read (not `_ex`: Crystal's call) of what is there, at most `buf.len()` bytes.
pub fn read_some(s: &mut Stream, buf: &mut [u8]) -> std::io::Result<usize> {
    ssl_read(s, buf)
}

/// One SSL_write (not `_ex`) of all of `buf` (no partial writes: the mode is not set).
fn ssl_write(s: &mut Stream, buf: &[u8]) -> std::io::Result<()> {
    let n = c_int::try_from(buf.len()).map_err(other)?;
    // SAFETY: as in `ssl_read`; `buf` is readable for `n`.
    let r = unsafe { openssl_sys::SSL_write(s.ssl().as_ptr(), buf.as_ptr().cast(), n) };
    if r != n {
        return Err(other(format!("SSL_write returned {r} of {n}")));
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes in calls of at most `max`; `plain`: SSL_read, else
/// SSL_read_ex.
pub fn read_exact_with(
    s: &mut Stream,
    buf: &mut [u8],
    max: usize,
    plain: bool,
) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let end = (at + max).min(buf.len());
        let got = if plain {
            ssl_read(s, &mut buf[at..end])?
        } else {
            s.read(&mut buf[at..end])?
        };
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        at += got;
    }
    Ok(())
}

/// Writes `buf` in calls of at most `max`; `plain`: SSL_write, else SSL_write_ex.
pub fn write_all_with(s: &mut Stream, buf: &[u8], max: usize, plain: bool) -> std::io::Result<()> {
    for part in buf.chunks(max.max(1)) {
        if plain {
            ssl_write(s, part)?;
        } else {
            s.write_all(part)?;
        }
    }
    Ok(())
}

/// The main connection's inbound bytes: the handshake in one SSL_read, `one_byte` bytes one
/// per SSL_read, then 16 KiB SSL_read_ex calls.
pub fn server_reads(
    s: &mut Stream,
    total: usize,
    handshake: usize,
    one_byte: usize,
    chunk: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; total];
    read_exact_with(s, &mut buf[..handshake], handshake, true)?;
    read_exact_with(s, &mut buf[handshake..handshake + one_byte], 1, true)?;
    read_exact_with(s, &mut buf[handshake + one_byte..], chunk, false)
}

/// The main connection's outbound bytes: `one_byte` one per SSL_write, then 16 KiB
/// SSL_write_ex calls; then close_notify.
pub fn server_writes(
    s: &mut Stream,
    out: &[u8],
    one_byte: usize,
    chunk: usize,
) -> std::io::Result<()> {
    write_all_with(s, &out[..one_byte], 1, true)?;
    write_all_with(s, &out[one_byte..], chunk, false)?;
    s.shutdown().map_err(other)?;
    Ok(())
}

/// The peer of the main connection: writes `inbound`, then reads to the server's
/// close_notify; the bytes read.
pub fn peer(mut s: Stream, inbound: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<u64>> {
    std::thread::spawn(move || {
        s.write_all(&inbound)?;
        std::io::copy(&mut s, &mut std::io::sink())
    })
}
