//! Mode `spin`: as many cheap syscalls as possible (getppid, and 1-byte writes to /dev/null,
//! alternating), to measure what tracing adds per syscall. Prints `result {json}` with the
//! wall time of the loop alone.

use std::{fs::OpenOptions, io::Write as _, os::fd::AsRawFd as _, time::Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Syscalls to make (half getppid, half write).
    #[arg(long, default_value_t = 2_000_000)]
    pub calls: u64,
}

pub fn run(args: &Args) -> std::io::Result<()> {
    let null = OpenOptions::new().write(true).open("/dev/null")?;
    let fd = null.as_raw_fd();
    let byte = [0u8; 1];
    let started = Instant::now();
    for i in 0..args.calls {
        // SAFETY: getppid takes nothing; write gets a valid 1-byte buffer and an open fd.
        unsafe {
            if i % 2 == 0 {
                libc::syscall(libc::SYS_getppid);
            } else {
                libc::write(fd, byte.as_ptr().cast(), 1);
            }
        }
    }
    let ns = started.elapsed().as_nanos() as u64;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "result {{\"calls\":{},\"ns\":{ns}}}", args.calls)?;
    stdout.flush()
}
