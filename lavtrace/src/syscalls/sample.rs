//! `--syscalls-sample ON/EVERY`: the syscalls family attached on a duty cycle.
//!
//! The family's hooks put every thread of the host on the syscall slow path while they are
//! attached (`kernel::reach`). Sampled, they are attached for ON out of every EVERY, so the
//! host pays that price only that share of the time, and the figures are estimates: the counts
//! and times of each window are scaled by the window's length over the time the hooks were
//! attached in it, and every record says so (`Sampled`). Latency percentiles and maxima are
//! of the calls seen, unscaled.
//!
//! A sampler thread attaches and detaches the raw tracepoint programs itself
//! (BPF_RAW_TRACEPOINT_OPEN on clones of their fds; closing the link detaches), in this order:
//! exit then enter on; enter off, a grace for the calls in flight to return, exit off; then,
//! with nothing attached, it empties the calls-in-progress map, so that an exit seen after the
//! next attach never pairs with an entry from an earlier on-window.

use std::{
    ffi::CStr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{ProgramFd, RawTracePoint},
};
use lavtrace_common::syscalls::{START_MAP, SyscallStart};
use serde::Serialize;
use tracing::warn;

use super::SyscallRow;

/// How long the exit program stays attached after the enter program is gone: calls in flight
/// return meanwhile and are counted; longer ones are left out (the estimate's bias).
const GRACE: Duration = Duration::from_millis(5);

/// `--syscalls-sample ON/EVERY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duty {
    pub on: Duration,
    pub every: Duration,
}

/// `100ms/1s`: attached 100 ms of every second.
pub fn parse(s: &str) -> Result<Duty, String> {
    let (on, every) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ON/EVERY, e.g. 100ms/1s"))?;
    let on = humantime::parse_duration(on.trim()).map_err(|e| format!("{on:?}: {e}"))?;
    let every = humantime::parse_duration(every.trim()).map_err(|e| format!("{every:?}: {e}"))?;
    if on < Duration::from_millis(10) {
        return Err(format!("{s:?}: ON must be at least 10ms"));
    }
    if every <= on + GRACE {
        return Err(format!("{s:?}: EVERY must be longer than ON"));
    }
    Ok(Duty { on, every })
}

/// What a sampled record says about itself (JSON `syscalls_sampled`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sampled {
    pub on_ms: u64,
    pub every_ms: u64,
    /// Share of the window the hooks were attached.
    pub attached_share: f64,
    /// The factor counts and times were multiplied by (window / attached time).
    pub scale: f64,
}

/// The window's rows as estimates: counts, errors and total times multiplied by the window's
/// length over the time the hooks were attached in it (none attached: no estimate, no rows).
pub fn scale(
    rows: Vec<SyscallRow>,
    window_ns: u64,
    attached_ns: u64,
    duty: Duty,
) -> (Vec<SyscallRow>, Sampled) {
    let share = if window_ns == 0 {
        0.0
    } else {
        (attached_ns as f64 / window_ns as f64).min(1.0)
    };
    let factor = if share > 0.0 { 1.0 / share } else { 0.0 };
    let times = |n: u64| (n as f64 * factor).round() as u64;
    let rows = rows
        .into_iter()
        .filter(|_| share > 0.0)
        .map(|mut r| {
            r.count = times(r.count);
            r.errors = times(r.errors);
            r.total_ns = times(r.total_ns);
            if let Some(e) = r.top_errno.as_mut() {
                e.count = times(e.count);
            }
            r
        })
        .collect();
    let sampled = Sampled {
        on_ms: duty.on.as_millis() as u64,
        every_ms: duty.every.as_millis() as u64,
        attached_share: share,
        scale: factor,
    };
    (rows, sampled)
}

pub struct Sampler {
    duty: Duty,
    stop: Arc<AtomicBool>,
    /// Time the enter program was attached, all on-windows so far (ns).
    attached_ns: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Loads the raw tracepoint pair (not attached by aya) and starts the cycle with an
    /// on-window, attached before this returns.
    pub fn start(ebpf: &mut Ebpf, duty: Duty) -> Result<Sampler> {
        let mut fd = |name: &str| -> Result<ProgramFd> {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
            Ok(prog.fd()?.try_clone()?)
        };
        let exit = fd("syscalls_exit_raw")?;
        let enter = fd("syscalls_enter_raw")?;
        let starts: HashMap<MapData, u32, SyscallStart> = HashMap::try_from(
            ebpf.take_map(START_MAP)
                .with_context(|| format!("map {START_MAP} missing"))?,
        )?;
        // The first on-window, here: an attach that fails is the operator's to see now.
        let links = attach_pair(exit.as_fd(), enter.as_fd())?;
        let stop = Arc::new(AtomicBool::new(false));
        let attached_ns = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("lavtrace-sample".into())
            .spawn({
                let (stop, attached_ns) = (stop.clone(), attached_ns.clone());
                move || cycle(duty, links, exit, enter, starts, &stop, &attached_ns)
            })
            .context("starting the sampler thread")?;
        Ok(Sampler {
            duty,
            stop,
            attached_ns,
            thread: Some(thread),
        })
    }

    pub fn duty(&self) -> Duty {
        self.duty
    }

    /// Time the hooks were attached so far (ns), the current on-window included.
    pub fn attached_ns(&self) -> u64 {
        self.attached_ns.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// (exit link, enter link): closing one detaches it.
type Links = (OwnedFd, OwnedFd);

fn attach_pair(exit: BorrowedFd<'_>, enter: BorrowedFd<'_>) -> Result<Links> {
    // Exit first: every entry seen finds its exit program there.
    let exit = raw_tracepoint_open(c"sys_exit", exit)?;
    let enter = raw_tracepoint_open(c"sys_enter", enter)?;
    Ok((exit, enter))
}

fn cycle(
    duty: Duty,
    mut links: Links,
    exit: ProgramFd,
    enter: ProgramFd,
    starts: HashMap<MapData, u32, SyscallStart>,
    stop: &AtomicBool,
    attached_ns: &AtomicU64,
) {
    let mut starts = starts;
    let mut on_since = Instant::now();
    loop {
        // Counted as it goes, so a window that ends mid-on-window gets its share.
        let stopped = wait(duty.on, stop, || {
            attached_ns.fetch_add(on_since.elapsed().as_nanos() as u64, Ordering::Relaxed);
            on_since = Instant::now();
        });
        let (exit_link, enter_link) = links;
        drop(enter_link);
        attached_ns.fetch_add(on_since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        std::thread::sleep(GRACE);
        drop(exit_link);
        if stopped {
            return;
        }
        let stale: Vec<u32> = starts.keys().filter_map(Result::ok).collect();
        for tid in stale {
            let _ = starts.remove(&tid);
        }
        if wait(duty.every - duty.on - GRACE, stop, || {}) {
            return;
        }
        links = match attach_pair(exit.as_fd(), enter.as_fd()) {
            Ok(l) => l,
            Err(e) => {
                warn!("syscalls: sampling stopped, cannot attach again: {e:#}");
                return;
            }
        };
        on_since = Instant::now();
    }
}

/// Sleeps `d` in steps (calling `tick` after each), or until `stop`; true when stopped.
fn wait(d: Duration, stop: &AtomicBool, mut tick: impl FnMut()) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::park_timeout(left.min(Duration::from_millis(50)));
        tick();
    }
}

/// BPF_RAW_TRACEPOINT_OPEN: attaches `prog` to raw tracepoint `name`; the link lives as long
/// as the returned fd.
fn raw_tracepoint_open(name: &CStr, prog: BorrowedFd<'_>) -> Result<OwnedFd> {
    /// `union bpf_attr`'s `raw_tracepoint` member (include/uapi/linux/bpf.h).
    #[repr(C)]
    struct Attr {
        name: u64,
        prog_fd: u32,
        _pad: u32,
    }
    const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    let attr = Attr {
        name: name.as_ptr() as u64,
        prog_fd: prog.as_raw_fd() as u32,
        _pad: 0,
    };
    // SAFETY: bpf(2) reads `size_of::<Attr>()` bytes of `attr`, which lives across the call,
    // as does the name it points to; the kernel checks the program fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd < 0 {
        bail!(
            "cannot attach to raw tracepoint {}: {}",
            name.to_string_lossy(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_scaled_by_the_window_over_the_attached_time() {
        let mut stats = lavtrace_common::syscalls::SyscallStats {
            count: 10,
            errors: 2,
            total_ns: 1_000,
            max_ns: 300,
            ..Default::default()
        };
        stats.buckets[3] = 10;
        let row = SyscallRow::new(39, &stats, None);
        let duty = parse("100ms/1s").unwrap();
        let (rows, s) = scale(vec![row.clone()], 1_000, 250, duty);
        assert_eq!(
            (rows[0].count, rows[0].errors, rows[0].total_ns),
            (40, 8, 4_000)
        );
        assert_eq!(rows[0].max_ns, 300, "a maximum is of the calls seen");
        assert_eq!((s.attached_share, s.scale), (0.25, 4.0));
        let (none, s) = scale(vec![row], 1_000, 0, duty);
        assert!(none.is_empty(), "nothing attached: no estimate");
        assert_eq!(s.attached_share, 0.0);
    }

    #[test]
    fn the_duty_is_on_over_every() {
        assert_eq!(
            parse("100ms/1s"),
            Ok(Duty {
                on: Duration::from_millis(100),
                every: Duration::from_secs(1)
            })
        );
        assert!(parse("1s").is_err());
        assert!(parse("1s/1s").is_err());
        assert!(parse("5ms/1s").is_err());
        assert!(parse("x/1s").is_err());
    }
}
