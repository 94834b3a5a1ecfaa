//! Probe family `faults`: the target's page faults, counted per page, and the dirty-page
//! throttling and writeback waits of its threads. Nothing goes to userspace per event: every
//! program adds to a map that userspace reads once per interval.
//!
//! - `exceptions:page_fault_user` / `page_fault_kernel` (x86): every fault exception,
//!   filtered to the target's tgid first thing; the error code's write bit gives write
//!   faults. A kernel-mode fault counts only on a user address (copy_to_user into a page not
//!   yet mapped: the target's page, faulted by its syscall).
//! - the perf software event `major-faults`, opened per thread of the target
//!   (inherited by the threads they create): the kernel's own major/minor accounting, with
//!   the fault address. They cost nothing to other processes. Where the exceptions
//!   tracepoints are absent (arm64), `page-faults` the same way counts every fault.
//! - `writeback:balance_dirty_pages`, `folio_wait_writeback`, `writeback_dirty_folio`:
//!   filtered to the target's tgid; `global_dirty_state` is host-wide, copied at most once
//!   per 100 ms.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{kprobe, kretprobe, map, perf_event, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{PerfEventContext, ProbeContext, RetProbeContext, TracePointContext},
};
use lavtrace_common::faults::{
    BDI_NAME, DIRTY_STATE_EVERY_NS, DirtyState, MAX_BDIS, MAX_INFLIGHT, MAX_INODES, MAX_PAGES,
    PAGE_SHIFT, PageFaults, Throttle, USER_END, X86_PF_WRITE, diag, pause_bucket,
};

use crate::{field, filter::current_target_task};

#[map]
static FAULTS_PAGES: HashMap<u64, PageFaults> = HashMap::with_max_entries(MAX_PAGES, 0);

#[map]
static FAULTS_INFLIGHT: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map]
static FAULTS_THROTTLE: HashMap<[u8; BDI_NAME], Throttle> = HashMap::with_max_entries(MAX_BDIS, 0);

#[map]
static FAULTS_STABLE: HashMap<u64, u64> = HashMap::with_max_entries(MAX_INODES, 0);

#[map]
static FAULTS_DIRTIED: HashMap<u64, u64> = HashMap::with_max_entries(MAX_INODES, 0);

#[map]
static FAULTS_DIRTY_STATE: Array<DirtyState> = Array::with_max_entries(1, 0);

#[map]
static FAULTS_DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(diag::LEN, 0);

field::offsets!(
    /// `unsigned long address` of exceptions:page_fault_{user,kernel}.
    FAULTS_ADDRESS_OFFSET,
    /// `unsigned long error_code` of exceptions:page_fault_{user,kernel}.
    FAULTS_ERROR_CODE_OFFSET,
    /// `char bdi[32]` of writeback:balance_dirty_pages.
    FAULTS_BDP_BDI_OFFSET,
    /// `long pause` (ms) of writeback:balance_dirty_pages.
    FAULTS_BDP_PAUSE_OFFSET,
    /// `ino_t ino` of writeback:folio_wait_writeback and writeback_dirty_folio.
    FAULTS_FOLIO_INO_OFFSET,
    /// The page counts of writeback:global_dirty_state.
    FAULTS_GDS_DIRTY_OFFSET,
    FAULTS_GDS_WRITEBACK_OFFSET,
    FAULTS_GDS_BG_THRESH_OFFSET,
    FAULTS_GDS_THRESH_OFFSET,
    FAULTS_GDS_LIMIT_OFFSET,
);

/// Which counter of `PageFaults` a perf program adds to.
#[derive(Clone, Copy)]
enum Accounted {
    Any,
    Major,
}

#[tracepoint]
pub fn faults_user(ctx: TracePointContext) -> u32 {
    on_exception(&ctx, false)
}

#[tracepoint]
pub fn faults_kernel(ctx: TracePointContext) -> u32 {
    on_exception(&ctx, true)
}

#[inline(always)]
fn on_exception(ctx: &TracePointContext, kernel: bool) -> u32 {
    if current_target_task().is_none() {
        return 0;
    }
    let address: u64 = field::read(ctx, &FAULTS_ADDRESS_OFFSET);
    if kernel && address >= USER_END {
        return 0;
    }
    let error_code: u64 = field::read(ctx, &FAULTS_ERROR_CODE_OFFSET);
    if let Some(p) = page(address) {
        // SAFETY: a live map value of this program run.
        add(unsafe { &raw mut (*p).faults }, 1);
        if error_code & X86_PF_WRITE != 0 {
            // SAFETY: a live map value of this program run.
            add(unsafe { &raw mut (*p).writes }, 1);
        }
    }
    0
}

#[perf_event]
pub fn faults_perf_any(ctx: PerfEventContext) -> u32 {
    on_perf(&ctx, Accounted::Any)
}

#[perf_event]
pub fn faults_perf_major(ctx: PerfEventContext) -> u32 {
    on_perf(&ctx, Accounted::Major)
}

#[inline(always)]
fn on_perf(ctx: &PerfEventContext, what: Accounted) -> u32 {
    // The events are the target's threads' (and, inherited, their children's: a forked
    // child process is not the target).
    if current_target_task().is_none() {
        return 0;
    }
    // SAFETY: the context of a perf_event program is a bpf_perf_event_data; `addr` is one of
    // its fields the verifier lets a program read directly.
    let address = unsafe { (*ctx.ctx).addr };
    if let Some(p) = page(address) {
        let counter = match what {
            // SAFETY: a live map value of this program run.
            Accounted::Any => unsafe { &raw mut (*p).faults },
            // SAFETY: as above.
            Accounted::Major => unsafe { &raw mut (*p).major },
        };
        add(counter, 1);
    }
    // 0: the perf core records no sample (no ring buffer is mapped anyway).
    0
}

/// `handle_mm_fault(vma, address, flags, regs)`: the start of one attempt at a fault (a
/// retried fault calls it again; both attempts' times add up).
#[kprobe]
pub fn faults_mm_enter(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let Some(address) = ctx.arg::<u64>(1) else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if FAULTS_INFLIGHT.insert(tid, [now, address], 0).is_err() {
        bump_diag(diag::INFLIGHT_FULL);
    }
    0
}

#[kretprobe]
pub fn faults_mm_exit(_ctx: RetProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a copy of the value is taken before the entry is removed.
    let Some(&[start, address]) = (unsafe { FAULTS_INFLIGHT.get(tid) }) else {
        return 0;
    };
    let _ = FAULTS_INFLIGHT.remove(tid);
    if let Some(p) = page(address) {
        // SAFETY: a live map value of this program run.
        add(unsafe { &raw mut (*p).time_ns }, now.saturating_sub(start));
    }
    0
}

/// The entry of the page holding `address`, added when missing.
#[inline(always)]
fn page(address: u64) -> Option<*mut PageFaults> {
    let key = address >> PAGE_SHIFT << PAGE_SHIFT;
    if let Some(p) = FAULTS_PAGES.get_ptr_mut(key) {
        return Some(p);
    }
    // BPF_NOEXIST: another CPU may have added it meanwhile; its entry is the one to add to.
    let _ = FAULTS_PAGES.insert(key, PageFaults::default(), 1);
    let p = FAULTS_PAGES.get_ptr_mut(key);
    if p.is_none() {
        bump_diag(diag::PAGES_FULL);
    }
    p
}

#[tracepoint]
pub fn faults_throttle(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0;
    }
    let bdi: [u8; BDI_NAME] = field::read(&ctx, &FAULTS_BDP_BDI_OFFSET);
    let pause: i64 = field::read(&ctx, &FAULTS_BDP_PAUSE_OFFSET);
    let pause = if pause > 0 { pause as u64 } else { 0 };
    let t = match FAULTS_THROTTLE.get_ptr_mut(bdi) {
        Some(t) => t,
        None => {
            let _ = FAULTS_THROTTLE.insert(bdi, Throttle::default(), 1);
            match FAULTS_THROTTLE.get_ptr_mut(bdi) {
                Some(t) => t,
                None => {
                    bump_diag(diag::BDIS_FULL);
                    return 0;
                }
            }
        }
    };
    // SAFETY: a live map value of this program run.
    add(unsafe { &raw mut (*t).count }, 1);
    if pause > 0 {
        // SAFETY: a live map value of this program run.
        add(unsafe { &raw mut (*t).paused }, 1);
        // SAFETY: a live map value of this program run.
        add(unsafe { &raw mut (*t).pause_ms }, pause);
    }
    // SAFETY: the map's value slot for this key, valid for this program run; the maximum is
    // a plain store (two threads pausing at once may keep the smaller one: a bound, not a
    // count).
    unsafe {
        if pause > (*t).max_pause_ms {
            (*t).max_pause_ms = pause;
        }
        if let Some(b) = (*t).buckets.get_mut(pause_bucket(pause)) {
            add(b, 1);
        }
    }
    0
}

#[tracepoint]
pub fn faults_stable_wait(ctx: TracePointContext) -> u32 {
    count_inode(&ctx, &FAULTS_STABLE)
}

#[tracepoint]
pub fn faults_dirtied(ctx: TracePointContext) -> u32 {
    count_inode(&ctx, &FAULTS_DIRTIED)
}

#[inline(always)]
fn count_inode(ctx: &TracePointContext, map: &HashMap<u64, u64>) -> u32 {
    if current_target_task().is_none() {
        return 0;
    }
    let ino: u64 = field::read(ctx, &FAULTS_FOLIO_INO_OFFSET);
    if let Some(n) = map.get_ptr_mut(ino) {
        add(n, 1);
        return 0;
    }
    let _ = map.insert(ino, 0, 1);
    match map.get_ptr_mut(ino) {
        Some(n) => add(n, 1),
        None => bump_diag(diag::INODES_FULL),
    }
    0
}

#[tracepoint]
pub fn faults_dirty_state(ctx: TracePointContext) -> u32 {
    let Some(s) = FAULTS_DIRTY_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the array's one slot, valid for this program run; two CPUs writing a sample at
    // once leave a mix of two recent samples, which is what a sample is for.
    unsafe {
        add(&raw mut (*s).seen, 1);
        if now.saturating_sub((*s).at_ns) < DIRTY_STATE_EVERY_NS && (*s).at_ns != 0 {
            return 0;
        }
        (*s).at_ns = now;
        (*s).nr_dirty = field::read(&ctx, &FAULTS_GDS_DIRTY_OFFSET);
        (*s).nr_writeback = field::read(&ctx, &FAULTS_GDS_WRITEBACK_OFFSET);
        (*s).background_thresh = field::read(&ctx, &FAULTS_GDS_BG_THRESH_OFFSET);
        (*s).dirty_thresh = field::read(&ctx, &FAULTS_GDS_THRESH_OFFSET);
        (*s).dirty_limit = field::read(&ctx, &FAULTS_GDS_LIMIT_OFFSET);
    }
    0
}

/// Adds `n` to a counter of a map value that other CPUs may update at the same time.
#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    // As tcp.rs: the intrinsic lowers to the BPF atomic add.
    // SAFETY: `counter` points into a live map value (8-byte aligned u64).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
fn bump_diag(index: u32) {
    if let Some(counter) = FAULTS_DIAG.get_ptr_mut(index) {
        // SAFETY: this CPU's slot.
        unsafe { *counter += 1 };
    }
}
