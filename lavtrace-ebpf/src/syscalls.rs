//! Probe family `syscalls`: every syscall of the target, counted and timed in the kernel.
//!
//! Two program pairs do the same work: on the raw tracepoints `sys_enter`/`sys_exit` (the
//! kernel calls the program with the tracepoint's arguments, building no record: measurably
//! cheaper per syscall, see BENCHMARKS.md) and, where raw tracepoints cannot attach, on the
//! classic `raw_syscalls:sys_enter`/`sys_exit`. Userspace attaches one pair.
//!
//! Hot path, run for every syscall of every process on the host: one helper call and a compare
//! for everyone else; for the target one hash lookup on entry and one hash plus one (inlined)
//! per-cpu array lookup on exit. Nothing is sent to userspace per syscall. With `--per-thread`
//! (a read-only global, so the code is gone when it is off) one more per-cpu hash update on exit.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use lavtrace_common::syscalls::{
    COUNTED_ELSEWHERE_LEN, ErrnoKey, MAX_ERRNO_KEYS, MAX_SYSCALLS, MAX_THREAD_KEYS, MAX_THREADS,
    STATS_SLOTS, SyscallStart, SyscallStats, ThreadHalves, ThreadKey, ThreadStats, diag,
    latency_bucket,
};

use crate::{cut, field, filter::current_target_task};

/// tid → the syscall it is in.
#[map]
static SYSCALLS_START: HashMap<u32, SyscallStart> = HashMap::with_max_entries(MAX_THREADS, 0);

/// Two halves (`lavtrace_common::cut`): `half * MAX_SYSCALLS + nr`.
#[map]
static SYSCALLS_STATS: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// The syscalls another family's exit program counts into `SYSCALLS_STATS`
/// (`lavtrace_common::syscalls::COUNTED_ELSEWHERE`; unused slots u32::MAX). A read-only global
/// set at load, so it holds from the first call: set after attach, calls between this
/// family's attach and the other's would be counted here and not there.
#[unsafe(no_mangle)]
static SYSCALLS_COUNTED_ELSEWHERE: [u32; COUNTED_ELSEWHERE_LEN] = [u32::MAX; COUNTED_ELSEWHERE_LEN];

#[map]
static SYSCALLS_ERRNOS: PerCpuHashMap<ErrnoKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_ERRNO_KEYS, 0);

/// (tid, syscall) → figures; only written with `--per-thread` (see `SYSCALLS_PER_THREAD`).
#[map]
static SYSCALLS_THREADS: PerCpuHashMap<ThreadKey, ThreadHalves> =
    PerCpuHashMap::with_max_entries(MAX_THREAD_KEYS, 0);

/// Set by userspace at load (`lavtrace_common::syscalls::PER_THREAD`); a read-only global, so
/// when it is 0 the verifier sees the per-thread branch as dead and drops it.
#[unsafe(no_mangle)]
static SYSCALLS_PER_THREAD: u8 = 0;

/// This architecture's `exit` (a thread's end), set at load
/// (`lavtrace_common::syscalls::EXIT_NR`).
#[unsafe(no_mangle)]
static SYSCALLS_EXIT_NR: u32 = u32::MAX;

/// Two halves (`lavtrace_common::cut`): `half * diag::LEN + index`.
#[map]
static SYSCALLS_DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * diag::LEN, 0);

field::offsets!(
    /// `long id` of raw_syscalls:sys_enter.
    SYSCALLS_ID_OFFSET,
    /// `long ret` of raw_syscalls:sys_exit.
    SYSCALLS_RET_OFFSET,
);
/// The kernel's error range for syscall return values (IS_ERR_VALUE).
const MAX_ERRNO: i64 = 4095;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscalls_enter_raw(ctx: RawTracePointContext) -> i32 {
    if let Some((_, tid)) = current_target_task() {
        // TP_PROTO(struct pt_regs *regs, long id)
        on_enter(tid, ctx.arg(1));
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscalls_exit_raw(ctx: RawTracePointContext) -> i32 {
    if let Some((_, tid)) = current_target_task() {
        // TP_PROTO(struct pt_regs *regs, long ret)
        on_exit(tid, ctx.arg(1));
    }
    0
}

#[tracepoint]
pub fn syscalls_enter(ctx: TracePointContext) -> u32 {
    if let Some((_, tid)) = current_target_task() {
        on_enter(tid, field::read(&ctx, &SYSCALLS_ID_OFFSET));
    }
    0
}

#[tracepoint]
pub fn syscalls_exit(ctx: TracePointContext) -> u32 {
    if let Some((_, tid)) = current_target_task() {
        on_exit(tid, field::read(&ctx, &SYSCALLS_RET_OFFSET));
    }
    0
}

#[inline(always)]
fn on_enter(tid: u32, nr: i64) {
    // SAFETY: a plain read of a global; volatile so the build-time value is not folded.
    if nr == i64::from(unsafe { core::ptr::read_volatile(&SYSCALLS_EXIT_NR) }) {
        // It never returns: without this its entry would stay, and a target that starts and
        // ends threads by the ten thousand would fill the table (START_TABLE_FULL), leaving
        // the syscalls of every later thread untimed.
        let _ = SYSCALLS_START.remove(tid);
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match SYSCALLS_START.get_ptr_mut(tid) {
        // SAFETY: the pointer is the map's value slot for this key, valid for this program run.
        Some(slot) => unsafe {
            (*slot).ts = now;
            (*slot).nr = nr as u64;
        },
        None => {
            let start = SyscallStart {
                ts: now,
                nr: nr as u64,
            };
            if SYSCALLS_START.insert(tid, start, 0).is_err() {
                // An untimed call is placed by its entry.
                bump_diag(diag::START_TABLE_FULL, cut::half(now));
            }
        }
    }
}

#[inline(always)]
fn on_exit(tid: u32, ret: i64) {
    let Some(slot) = SYSCALLS_START.get_ptr_mut(tid) else {
        return; // entered before we attached
    };
    // SAFETY: map value slot, valid for this program run.
    let (start, id) = unsafe { (core::ptr::replace(&raw mut (*slot).ts, 0), (*slot).nr) };
    if start == 0 {
        return; // a new thread's first return (from clone), or entered before we attached
    }
    let now = cut::now();
    let elapsed = now.saturating_sub(start);
    if id >= u64::from(MAX_SYSCALLS) {
        return; // also -1 (no syscall), seen as a huge unsigned number
    }
    let nr = id as u32;
    if !counted_elsewhere(nr) {
        account(tid, nr, cut::half(now), elapsed, ret);
    }
}

#[inline(always)]
fn counted_elsewhere(nr: u32) -> bool {
    let mut i = 0;
    while i < COUNTED_ELSEWHERE_LEN {
        // SAFETY: a plain read of a global; volatile so the build-time values are not folded.
        if unsafe { core::ptr::read_volatile(&SYSCALLS_COUNTED_ELSEWHERE[i]) } == nr {
            return true;
        }
        i += 1;
    }
    false
}

/// Counts one call of `nr` by thread `tid` that took `elapsed` and returned `ret` into `half`
/// of the per-syscall table (and of the per-thread one, when on). Also called by the fsync family's exit program for the durability calls
/// (`SYSCALLS_COUNTED_ELSEWHERE`), which places the call and its ring record with one cut.
#[inline(always)]
pub fn account(tid: u32, nr: u32, half: u32, elapsed: u64, ret: i64) {
    if nr >= MAX_SYSCALLS || half > 1 {
        return;
    }
    let Some(stats) = SYSCALLS_STATS.get_ptr_mut(half * MAX_SYSCALLS + nr) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-cpu array; no other program writes it concurrently.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    stats.total_ns += elapsed;
    if elapsed > stats.max_ns {
        stats.max_ns = elapsed;
    }
    if let Some(bucket) = stats.buckets.get_mut(latency_bucket(elapsed)) {
        *bucket += 1;
    }
    let failed = (-MAX_ERRNO..0).contains(&ret);
    if failed {
        stats.errors += 1;
        count_errno(nr, (-ret) as u32, half);
    }
    // SAFETY: a plain read of a global; volatile so the build-time 0 is not folded.
    if unsafe { core::ptr::read_volatile(&SYSCALLS_PER_THREAD) } != 0 {
        count_thread(tid, nr, half, elapsed, failed);
    }
}

#[inline(always)]
fn count_thread(tid: u32, nr: u32, half: u32, elapsed: u64, failed: bool) {
    let key = ThreadKey { tid, nr };
    let half = half as usize & 1;
    match SYSCALLS_THREADS.get_ptr_mut(key) {
        Some(halves) => {
            // SAFETY: this CPU's value slot.
            let halves = unsafe { &mut *halves };
            if let Some(t) = halves.get_mut(half) {
                t.count += 1;
                t.total_ns += elapsed;
                t.errors += u64::from(failed);
                if elapsed > t.max_ns {
                    t.max_ns = elapsed;
                }
            }
        }
        None => {
            let mut first = ThreadHalves::default();
            if let Some(t) = first.get_mut(half) {
                *t = ThreadStats {
                    count: 1,
                    errors: u64::from(failed),
                    total_ns: elapsed,
                    max_ns: elapsed,
                };
            }
            if SYSCALLS_THREADS.insert(key, first, 0).is_err() {
                bump_diag(diag::THREAD_TABLE_FULL, half as u32);
            }
        }
    }
}

#[inline(always)]
fn count_errno(nr: u32, errno: u32, half: u32) {
    let key = ErrnoKey { nr, errno };
    match SYSCALLS_ERRNOS.get_ptr_mut(key) {
        // SAFETY: this CPU's value slot.
        Some(count) => unsafe { *count += 1 },
        None => {
            if SYSCALLS_ERRNOS.insert(key, 1, 0).is_err() {
                bump_diag(diag::ERRNO_TABLE_FULL, half);
            }
        }
    }
}

#[inline(always)]
fn bump_diag(index: u32, half: u32) {
    if let Some(counter) = SYSCALLS_DIAG.get_ptr_mut((half & 1) * diag::LEN + index) {
        // SAFETY: this CPU's slot.
        unsafe { *counter += 1 };
    }
}
