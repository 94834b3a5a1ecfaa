//! Mode `sched`: threads whose scheduling is known, for the sched family's tests. Every thread
//! is started, named (prctl, through std's thread names) and parked on a channel before
//! `ready`, and `ready` waits until each is asleep in that wait, so a tracer attached at
//! `ready` sees each one's first event after go be the wakeup that go sends. After go:
//!
//! - `sleeper`: exactly `--sleeps` clock_nanosleep calls of `--sleep-ms` each, nothing else
//!   that can block;
//! - `spin-0`, `spin-1`, ...: `--spinners` threads pinned to CPU `--cpu`, each spinning for
//!   `--spin-ms` of wall time (the clock is read through the vDSO: no syscall), so they
//!   preempt each other;
//! - `blocker`: writes `--fsync-mib` MiB to a new file in `--dir` and fsyncs it (D state on a
//!   real disk), then removes it.
//!
//! Then each thread's `tid NAME TID` line (not with `--quiet`), and `done`.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// clock_nanosleep calls of the `sleeper` thread (0: no such thread).
    #[arg(long, default_value_t = 0)]
    pub sleeps: u64,
    #[arg(long, default_value_t = 10)]
    pub sleep_ms: u64,
    /// CPU-bound threads pinned to one CPU (0: none).
    #[arg(long, default_value_t = 0)]
    pub spinners: u64,
    #[arg(long, default_value_t = 300)]
    pub spin_ms: u64,
    /// The CPU the spinners share.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// MiB the `blocker` thread writes and fsyncs (0: no such thread).
    #[arg(long, default_value_t = 0)]
    pub fsync_mib: u64,
    /// Where the blocker's file goes: a real disk, not tmpfs (fsync there waits for nothing).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// No `tid` lines: `done` follows go's work directly (for callers that wait for `done`).
    #[arg(long)]
    pub quiet: bool,
}

type Work = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

struct Parked {
    name: String,
    tid: i32,
    go: mpsc::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

/// A named thread that reports its tid, then waits for go before `work`.
fn park(name: &str, before: Option<Work>, work: Work) -> std::io::Result<Parked> {
    let (go, wait) = mpsc::channel::<()>();
    let (tid_tx, tid_rx) = mpsc::channel::<std::io::Result<i32>>();
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let prepared = before.map_or(Ok(()), |f| f());
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let failed = prepared.is_err();
            let _ = tid_tx.send(prepared.map(|()| tid));
            if failed || wait.recv().is_err() {
                return Ok(());
            }
            work()
        })?;
    let tid = tid_rx
        .recv()
        .map_err(|_| std::io::Error::other(format!("thread {name} ended early")))??;
    Ok(Parked {
        name: name.to_string(),
        tid,
        go,
        handle,
    })
}

/// Waits until thread `tid` of this process is asleep (its wait for go).
fn wait_asleep(tid: i32) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
        // The state follows the parenthesised name, which may itself hold ')'.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('S') {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "thread {tid} never went to sleep"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn nanosleep(d: Duration) {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
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

fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it for cpu < 1024.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 1024 {
        return Err(std::io::Error::other("--cpu must be below 1024"));
    }
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is a valid cpu_set_t of its own size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_and_fsync(dir: PathBuf, mib: u64) -> std::io::Result<()> {
    let path = dir.join(format!("lavtrace-sched-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    // Not zeros: no filesystem may skip the blocks.
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let result = (|| {
        for _ in 0..mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    drop(f);
    let _ = std::fs::remove_file(&path);
    result
}

pub fn run(args: &Args) -> std::io::Result<()> {
    let mut parked = Vec::new();
    if args.sleeps > 0 {
        let (k, d) = (args.sleeps, Duration::from_millis(args.sleep_ms));
        parked.push(park(
            "sleeper",
            None,
            Box::new(move || {
                for _ in 0..k {
                    nanosleep(d);
                }
                Ok(())
            }),
        )?);
    }
    for i in 0..args.spinners {
        let (cpu, spin) = (args.cpu, Duration::from_millis(args.spin_ms));
        parked.push(park(
            &format!("spin-{i}"),
            Some(Box::new(move || pin(cpu))),
            Box::new(move || {
                let end = Instant::now() + spin;
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
                Ok(())
            }),
        )?);
    }
    if args.fsync_mib > 0 {
        let (dir, mib) = (args.dir.clone(), args.fsync_mib);
        parked.push(park(
            "blocker",
            None,
            Box::new(move || write_and_fsync(dir, mib)),
        )?);
    }
    for p in &parked {
        wait_asleep(p.tid)?;
    }
    lavtrace_common::start::ready_then(|| {
        for p in &parked {
            let _ = p.go.send(());
        }
        let mut lines = Vec::new();
        for p in parked {
            p.handle
                .join()
                .map_err(|_| std::io::Error::other(format!("thread {} panicked", p.name)))??;
            lines.push(format!("tid {} {}", p.name, p.tid));
        }
        if args.quiet {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        for l in lines {
            writeln!(out, "{l}")?;
        }
        out.flush()
    })
}
