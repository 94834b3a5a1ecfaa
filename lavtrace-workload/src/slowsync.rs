//! Mode `slowsync`: fast fsyncs at a steady pace (of a file on tmpfs, `--fast-dir`: nothing to
//! write, whatever else the disk is doing), with exactly one slow fsync among them (of a file
//! on the temp dir's disk, after writing `--dirty-mib` MiB into it): the flight recorder's
//! trigger.
//!
//! Each fsync is timed here too and printed before `done` (`fsync NS`, in call order), so a
//! test can check its premise (one slow call, the others fast) against the process itself.

use std::{
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Fast fsyncs before the slow one.
    #[arg(long, default_value_t = 20)]
    pub before: u64,
    /// Fast fsyncs after the slow one.
    #[arg(long, default_value_t = 10)]
    pub after: u64,
    /// Sleep between two fsyncs.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub pace: Duration,
    /// MiB written into the file just before the slow fsync.
    #[arg(long, default_value_t = 64)]
    pub dirty_mib: usize,
    /// Where the fast calls' file lives (tmpfs: its fsync has nothing to do).
    #[arg(long, default_value = "/dev/shm")]
    pub fast_dir: std::path::PathBuf,
}

pub fn run(args: &Args) -> io::Result<()> {
    let name = format!("lavtrace-slowsync-{}", std::process::id());
    let path = std::env::temp_dir().join(&name);
    let fast_path = args.fast_dir.join(&name);
    let open = |p: &std::path::Path| {
        std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(p)
    };
    let file = open(&path)?;
    let mut fast = open(&fast_path)?;
    fast.write_all(&[0u8; 4096])?;
    fast.sync_all()?;
    file.sync_all()?;
    // Allocated now: the run itself only writes, syncs and sleeps.
    let dirty = vec![0xa5u8; args.dirty_mib << 20];
    let mut took = Vec::with_capacity((args.before + args.after + 1) as usize);
    let fast_fd = fast.as_raw_fd();
    let slow_fd = file.as_raw_fd();
    let fsync = |fd: i32, took: &mut Vec<u128>| {
        let t = Instant::now();
        // SAFETY: fsync on the file this function keeps open.
        unsafe { libc::fsync(fd) };
        took.push(t.elapsed().as_nanos());
    };
    let result = lavtrace_common::start::ready_then(|| {
        for _ in 0..args.before {
            fsync(fast_fd, &mut took);
            std::thread::sleep(args.pace);
        }
        (&file).write_all(&dirty)?;
        fsync(slow_fd, &mut took);
        for _ in 0..args.after {
            std::thread::sleep(args.pace);
            fsync(fast_fd, &mut took);
        }
        let mut out = io::stdout().lock();
        for ns in &took {
            writeln!(out, "fsync {ns}")?;
        }
        out.flush()
    });
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&fast_path);
    result
}
