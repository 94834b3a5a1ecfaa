//! Mode `pace`: ring-buffer events at a chosen rate (benchmarks of the event pipeline):
//! msync(MS_ASYNC) on one shared page, `--rate` calls per second for `--seconds`, paced per
//! millisecond. msync(MS_ASYNC) does no I/O, so the cost measured is the tracing pipeline.
//! Prints `result {json}` with the exact number of calls made and the time taken.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Calls per second to aim at.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

pub fn run(args: &Args) -> std::io::Result<()> {
    // SAFETY: a fresh anonymous shared page; checked below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let total = (args.rate as f64 * args.seconds) as u64;
    let started = Instant::now();
    let mut done = 0u64;
    while done < total {
        // Where the schedule says we should be by now, one millisecond ahead.
        let due = ((started.elapsed() + Duration::from_millis(1)).as_secs_f64() * args.rate as f64)
            as u64;
        while done < due.min(total) {
            // SAFETY: the page is mapped for the whole loop.
            unsafe { libc::msync(page, 4096, libc::MS_ASYNC) };
            done += 1;
        }
        if done < total {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let ns = started.elapsed().as_nanos() as u64;
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(page, 4096) };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "result {{\"calls\":{done},\"ns\":{ns}}}")?;
    stdout.flush()
}
