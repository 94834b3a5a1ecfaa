//! Mode `demo`: a small broker-shaped syscall mix (socket-like pipe traffic with EAGAIN reads,
//! timer sleeps), a little of a broker's disk work (see `storage::Demo`) and a little TCP (a
//! long-lived loopback connection, plus one short one every 250 ms), until stdin closes.

use std::{
    io::Read as _,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub fn run() -> std::io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().lock().read_to_end(&mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    {
        let stop = stop.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std::thread::spawn(move || tcp(&listener, &stop));
    }
    let (reader, writer) = std::io::pipe()?;
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = [0u8; 4096];
    let batch = [7u8; 512];
    let mut storage = super::storage::Demo::start(stop.clone())?;
    let mut rounds = 0u64;
    while !stop.load(Ordering::Relaxed) {
        rounds += 1;
        if rounds.is_multiple_of(50) {
            storage.tick()?;
        }
        for _ in 0..20 {
            // SAFETY: valid buffers and owned descriptors.
            unsafe {
                libc::write(writer.as_raw_fd(), batch.as_ptr().cast(), batch.len());
                libc::read(reader.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
                // Nothing left: EAGAIN, as a broker's non-blocking socket reads often are.
                libc::read(reader.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// A client that stays connected and sends a little every cycle, and a short-lived one per
/// cycle that the server closes first.
fn tcp(listener: &std::net::TcpListener, stop: &AtomicBool) {
    use std::io::Write as _;
    let run = || -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let mut long = std::net::TcpStream::connect(addr)?;
        let (mut long_server, _) = listener.accept()?;
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::Relaxed) {
            long.write_all(&[1; 100])?;
            long_server.read_exact(&mut buf[..100])?;
            let mut short = std::net::TcpStream::connect(addr)?;
            let (mut server, _) = listener.accept()?;
            server.write_all(&[2; 512])?;
            short.read_exact(&mut buf[..512])?;
            drop(server);
            let _ = short.read(&mut buf)?;
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("workload: demo tcp: {e}");
    }
}
