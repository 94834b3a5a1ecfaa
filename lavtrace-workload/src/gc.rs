//! Mode `gc`: a Boehm-shaped stop-the-world, repeated, with one thread late on purpose.
//!
//! The main thread (`gc-collector`) plays bdwgc's collector: `--pauses` times it sends the
//! suspend signal (SIGPWR) with pthread_kill (tgkill) to each of `--workers` threads, waits
//! until every handler has acked (as bdwgc's semaphore), holds the world for `--hold-ms`,
//! sends the restart signal (SIGXCPU) and waits until every thread has resumed. Each
//! handler acks and waits in libc's sigsuspend for the restart signal, as bdwgc's does.
//!
//! One worker, `gc-late`, is late on purpose: before each pause it blocks the suspend
//! signal and reads one byte from a pipe (a read syscall that cannot end by itself); the
//! collector sends the suspend signals only once that thread is in the read (its /proc
//! syscall file says so), then waits `--late-ms` before it writes the byte, so that thread
//! takes its signal at least that long after the first was sent, whatever the machine's
//! speed. The others (`gc-worker-K`) are parked.
//!
//! Before `done` it prints `tid NAME TID` per worker and, per pause, `pause I T0 T0_SENT
//! RELEASED T1` (CLOCK_MONOTONIC ns): before its first suspend signal, after it, when it
//! wrote the late worker's byte, and after every thread had resumed.

use std::{
    io::{self, Write as _},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Threads stopped in each pause (the late one included; at least 1).
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    #[arg(long, default_value_t = 5)]
    pub pauses: u32,
    /// How long the collector holds the stopped world.
    #[arg(long, default_value_t = 5)]
    pub hold_ms: u64,
    /// How long the late worker is held in its read, from the first suspend signal (0: no
    /// late worker).
    #[arg(long, default_value_t = 20)]
    pub late_ms: u64,
}

const SUSPEND: i32 = libc::SIGPWR;
const RESTART: i32 = libc::SIGXCPU;

static STOPPED: AtomicU64 = AtomicU64::new(0);
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// The suspend handler: ack, wait in sigsuspend for the restart signal (blocked until then
/// by the handler's mask, so an early restart stays pending), count the resume.
extern "C" fn on_suspend(_: libc::c_int) {
    STOPPED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: sigset functions on a local set; sigsuspend is async-signal-safe.
    unsafe {
        let mut wait: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut wait);
        libc::sigdelset(&mut wait, RESTART);
        libc::sigsuspend(&wait);
    }
    RESUMED.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_restart(_: libc::c_int) {}

fn install(sig: i32, handler: extern "C" fn(libc::c_int), block: Option<i32>) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handlers are async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if let Some(s) = block {
            libc::sigaddset(&mut sa.sa_mask, s);
        }
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

/// Blocks (`how` SIG_BLOCK) or unblocks the suspend signal in this thread.
fn mask_suspend(how: i32) {
    // SAFETY: a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SUSPEND);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Whether thread `tid` of this process is blocked in syscall `nr` now.
fn in_syscall(tid: i32, nr: i64) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
        == Some(nr)
}

struct Worker {
    name: String,
    tid: i32,
    thread: libc::pthread_t,
}

pub fn run(args: &Args) -> io::Result<()> {
    if args.workers == 0 {
        return Err(io::Error::other("--workers must be at least 1"));
    }
    install(SUSPEND, on_suspend, Some(RESTART))?;
    install(RESTART, on_restart, None)?;
    let late = args.late_ms > 0;
    let (tid_tx, tid_rx) = mpsc::channel::<(String, i32, libc::pthread_t)>();
    // The late worker's arm signal (one per pause) and its wake times back.
    let (arm_tx, arm_rx) = mpsc::channel::<()>();
    let mut fds = [0i32; 2];
    // SAFETY: a two-int out-array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [pipe_r, pipe_w] = fds;
    let mut arm_rx = Some(arm_rx);
    for k in 0..args.workers {
        let is_late = late && k == 0;
        let name = if is_late {
            "gc-late".to_string()
        } else {
            format!("gc-worker-{k}")
        };
        let tx = tid_tx.clone();
        let arm = if is_late { arm_rx.take() } else { None };
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // SAFETY: no preconditions.
                let me = unsafe { libc::pthread_self() };
                let _ = tx.send((name, gettid(), me));
                match arm {
                    Some(arm) => {
                        while arm.recv().is_ok() {
                            mask_suspend(libc::SIG_BLOCK);
                            let mut byte = 0u8;
                            // SAFETY: a one-byte buffer of ours; libc's read is the read syscall.
                            unsafe { libc::read(pipe_r, (&mut byte as *mut u8).cast(), 1) };
                            // The pending suspend signal is taken here.
                            mask_suspend(libc::SIG_UNBLOCK);
                        }
                    }
                    // Parked for good (a futex wait, which the signals break into and restart).
                    None => loop {
                        std::thread::park();
                    },
                }
            })?;
    }
    drop(tid_tx);
    let mut workers: Vec<Worker> = tid_rx
        .iter()
        .take(args.workers as usize)
        .map(|(name, tid, thread)| Worker { name, tid, thread })
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let late_tid = workers.iter().find(|w| w.name == "gc-late").map(|w| w.tid);
    let mut lines = Vec::new();
    lavtrace_common::start::ready_then(|| {
        let n = u64::from(args.workers);
        let wait_for = |count: &AtomicU64, want: u64| {
            while count.load(Ordering::SeqCst) < want {
                std::thread::sleep(Duration::from_micros(50));
            }
        };
        for i in 0..args.pauses {
            if let Some(tid) = late_tid {
                let _ = arm_tx.send(());
                while !in_syscall(tid, libc::SYS_read) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            STOPPED.store(0, Ordering::SeqCst);
            RESUMED.store(0, Ordering::SeqCst);
            let t0 = now_ns();
            let mut t0_sent = 0;
            for w in &workers {
                // SAFETY: live threads of ours (they never exit).
                unsafe { libc::pthread_kill(w.thread, SUSPEND) };
                if t0_sent == 0 {
                    t0_sent = now_ns();
                }
            }
            let mut released = 0;
            if late_tid.is_some() {
                std::thread::sleep(Duration::from_millis(args.late_ms));
                released = now_ns();
                // SAFETY: one byte from our buffer into our pipe.
                unsafe { libc::write(pipe_w, [1u8].as_ptr().cast(), 1) };
            }
            wait_for(&STOPPED, n);
            std::thread::sleep(Duration::from_millis(args.hold_ms));
            for w in &workers {
                // SAFETY: as above.
                unsafe { libc::pthread_kill(w.thread, RESTART) };
            }
            wait_for(&RESUMED, n);
            let t1 = now_ns();
            lines.push(format!("pause {i} {t0} {t0_sent} {released} {t1}"));
            // Apart, so no pause's tail meets the next one's head.
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = io::stdout().lock();
        for w in &workers {
            writeln!(out, "tid {} {}", w.name, w.tid)?;
        }
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()
    })
}
