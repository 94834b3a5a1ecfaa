//! The demo's workload, `lavtrace workload demo` (hidden): a small broker-shaped syscall mix
//! (socket-like pipe traffic with EAGAIN reads, timer sleeps), a little of a broker's disk work
//! (see [`Disk`]) and a little TCP (a long-lived loopback connection, plus one short one every
//! 250 ms), until stdin closes. The product carries only this one; the tests' and benchmarks'
//! workloads are the `lavtrace-workload` binary.

use std::{
    ffi::CString,
    io::{self, Read as _},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use clap::{Args, Subcommand};
use lavtrace_common::disk::{CONFIRM_THREAD, DataDir, Segment, save_definitions};

#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Process name to take (as `ps` and `--comm` see it), e.g. to play a broker.
    #[arg(long)]
    pub name: Option<String>,
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Mode {
    /// A broker-shaped mix, until stdin closes.
    Demo,
}

/// Runs before the async runtime starts: the workload's calls are its own.
pub fn run(args: &WorkloadArgs) -> ExitCode {
    // Never outlive `lavtrace demo`.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Some(name) = &args.name {
        let Ok(name) = CString::new(name.as_bytes()) else {
            eprintln!("workload: --name must not contain NUL");
            return ExitCode::FAILURE;
        };
        // SAFETY: a NUL-terminated string; the kernel copies at most 15 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    let Mode::Demo = args.mode;
    match lavtrace_common::start::ready_then(demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> io::Result<()> {
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
    let mut storage = Disk::start(stop.clone())?;
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

/// Where the demo workload with pid `pid` keeps its data dir: `lavtrace demo` removes it
/// after the run, as the workload may be killed before it can.
pub fn demo_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("lavtrace-demo-{pid}"))
}

/// The storage side of `lavtrace demo`, at a modest rate until `stop`: a confirm thread doing
/// syncfs every 10 ms, and on each `tick` a segment published and consumed (definitions.amqp
/// saved every 8th tick).
pub struct Disk {
    dir: DataDir,
    names: (CString, CString),
    ticks: u64,
}

impl Disk {
    pub fn start(stop: Arc<AtomicBool>) -> io::Result<Disk> {
        let dir = DataDir::create_at(demo_dir(std::process::id()))?;
        let fd = dir.fd;
        std::thread::Builder::new()
            .name(CONFIRM_THREAD.into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: syncfs on a descriptor the Disk keeps open until the thread ends
                    // (checked by `stop`, set before the Disk is dropped).
                    unsafe { libc::syncfs(fd) };
                    std::thread::sleep(Duration::from_millis(10));
                }
            })?;
        Ok(Disk {
            names: (dir.segment(1)?, dir.acks(1)?),
            dir,
            ticks: 0,
        })
    }

    pub fn tick(&mut self) -> io::Result<()> {
        if self.ticks.is_multiple_of(8) {
            save_definitions(&self.dir, 1)?;
        }
        self.ticks += 1;
        let (seg, acks) = &self.names;
        Segment::publish(seg, acks)?.consume(seg, acks)
    }
}
