//! Mode `syscalls`: exactly N getppid, M failing close(-1) (EBADF) and one sleep of a known
//! length, from the main thread, nothing else of those kinds.

use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 5000)]
    pub getppid: u64,
    #[arg(long, default_value_t = 37)]
    pub bad_close: u64,
    /// One clock_nanosleep of this length (0: none).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub sleep: Duration,
}

pub fn run(args: &Args) -> std::io::Result<()> {
    for _ in 0..args.getppid {
        // SAFETY: no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    for _ in 0..args.bad_close {
        // SAFETY: closing an invalid descriptor only fails with EBADF.
        unsafe { libc::syscall(libc::SYS_close, -1) };
    }
    if !args.sleep.is_zero() {
        let ts = libc::timespec {
            tv_sec: args.sleep.as_secs() as libc::time_t,
            tv_nsec: args.sleep.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid timespec; no remainder wanted.
        unsafe {
            libc::syscall(
                libc::SYS_clock_nanosleep,
                libc::CLOCK_MONOTONIC,
                0,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
    }
    Ok(())
}
