//! Probe family `amqp`: the AMQP 0-9-1 frames of the target's AMQP connections, walked at
//! syscall exit over the bytes the call transferred.
//!
//! Which fds: those userspace seeds (connections open at attach, from /proc) and those the
//! target accepts on a listener userspace put in `AMQP_LISTENERS`; close removes them. An
//! entry program saves the call's buffer (or iovec array) for the thread when the fd is one
//! of them; the exit program sets up the transfer and tail-calls the walk, which runs
//! `STEPS_PER_RUN` steps per run and tail-calls itself while bytes are left, at most
//! `RUNS_PER_TRANSFER` runs: bytes beyond are counted (`beyond_walk`, and unsynced), and that
//! direction resyncs.
//!
//! Each direction collects the previous frame's end octet, the next frame's 7-byte header and,
//! for a method frame, the first 13 payload bytes (class, method, a delivery tag and its bit
//! octet), counts the frame, and jumps over the rest. Nothing of a body is ever read. The
//! collected bytes stay in `AMQP_WALKS`, which userspace never reads, and the argument bytes
//! are wiped once the frame is counted. The only bytes of the traffic that leave the kernel
//! are the vhost of connection.open and the reply text of a close (`Event::text`).
//!
//! Hook sets (userspace picks one, as for the storage families): kprobes on the syscall
//! functions (`amqp_k*`, arguments read from the caller's `pt_regs` as `storage::kargs` does),
//! uprobes on the target's libc (`amqp_u*`), or the `syscalls:` tracepoints (`amqp_t*`) for a
//! session that pays the syscall slow path anyway. The first two are kprobe-type programs and
//! tail-call `amqp_walk`; a tail call stays within one program type, so the tracepoints
//! tail-call `amqp_walk_tp`, the same walk.
//!
//! recvmmsg/sendmmsg are not walked: their bytes count as unsynced (`mmsg_unsynced`).
//!
//! AMQPS connections (accepted on a listener userspace marked `listener::TLS`) are not walked
//! at their socket calls, which carry TLS records: `ssl` walks the plaintext of the target's
//! SSL_read and SSL_write on them instead.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_ktime_get_ns, generated},
    macros::{kprobe, kretprobe, map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use lavtrace_common::{
    amqp::{
        Chan, Closed, Conn, Event, FRAME_END, HDR_BYTES, HDR_USED, LATENCY_BUCKETS, MAX_CHANNELS,
        MAX_CONNS, MAX_FRAME, MAX_IOVECS, MAX_LISTENERS, MAX_MMSG, MAX_THREADS, METHOD_PREFIX,
        METHOD_SLOTS, Pending, RUNS_PER_TRANSFER, STEPS_PER_RUN, TEXT_BYTES, TIMES_PER_CHANNEL,
        Transfer, Walker, Walks, call, chan_key, diag, event, frame, listener, method, method_slot,
        phase,
    },
    ring::lost,
    syscalls::latency_bucket,
};

mod ssl;

use crate::{
    filter::current_target_task,
    ring,
    storage::{kargs, tp_args, tp_ret},
};

#[map]
static AMQP_CONNS: HashMap<u32, Conn> = HashMap::with_max_entries(MAX_CONNS, 0);

#[map]
static AMQP_WALKS: HashMap<u32, Walks> = HashMap::with_max_entries(MAX_CONNS, 0);

#[map]
static AMQP_CHANS: LruHashMap<u64, Chan> = LruHashMap::with_max_entries(MAX_CHANNELS, 0);

/// Listening fds of the target whose accepts are AMQP connections (value unused).
#[map]
static AMQP_LISTENERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

#[map]
static AMQP_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(MAX_THREADS, 0);

#[map]
static AMQP_XFER: PerCpuArray<Transfer> = PerCpuArray::with_max_entries(1, 0);

#[map]
static AMQP_CLOSED_SCRATCH: PerCpuArray<Closed> = PerCpuArray::with_max_entries(1, 0);

/// Zeroed templates of a new connection's entries (too big for the stack); only the fields
/// `accepted` sets are ever written.
#[map]
static AMQP_NEW_CONN: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed channel, never written (too big for the stack).
#[map]
static AMQP_NEW_CHAN: PerCpuArray<Chan> = PerCpuArray::with_max_entries(1, 0);

#[map]
static AMQP_NEW_WALKS: PerCpuArray<Walks> = PerCpuArray::with_max_entries(1, 0);

/// Room for a rare event built inside the walk (whose stack the walk's own state fills).
#[map]
static AMQP_EVENT_SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

#[map]
static AMQP_WALK_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The walk again, as a tracepoint program, for the tracepoint set.
#[map]
static AMQP_WALK_PROGS_TP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static AMQP_DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(diag::LEN, 0);

#[map]
static AMQP_EVENTS: RingBuf = RingBuf::with_byte_size(lavtrace_common::amqp::RING_BYTES, 0);

const IN: u32 = 0;
const OUT: u32 = 1;

#[inline(always)]
fn count_diag(index: u32) {
    if let Some(c) = AMQP_DIAG.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-cpu array.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Like `ring::send`, waking the reader only once a quarter of the ring waits (events are
/// rare; userspace drains the ring on its own every few tens of ms too).
#[inline(always)]
fn send<T>(ev: &T) {
    send_flags(ev, false);
}

/// `urgent`: wake the reader now (an accept: userspace reads the new socket's addresses from
/// /proc while it is open).
#[inline(always)]
fn send_flags<T>(ev: &T, urgent: bool) {
    let waiting = AMQP_EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let size = AMQP_EVENTS.query(BPF_RB_RING_SIZE.into());
    let flags = if urgent || waiting.saturating_mul(4) >= size {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if AMQP_EVENTS.output::<T>(ev, flags.into()).is_err() {
        ring::count_lost(lost::AMQP);
    }
}

/// Reads `len` (≤ 64) bytes of the target's memory into `dst`; false if it faulted.
#[inline(always)]
fn read_user(dst: *mut u8, len: u32, src: u64) -> bool {
    // SAFETY: the helper copes with any source address (a bad one only fails); `dst` has room
    // for `len` bytes (the callers bound it).
    unsafe { generated::bpf_probe_read_user(dst.cast(), len, src as *const _) == 0 }
}

#[inline(always)]
fn read_user_val<T: Copy + Default>(src: u64) -> Option<T> {
    let mut v = T::default();
    read_user(
        (&mut v as *mut T).cast(),
        core::mem::size_of::<T>() as u32,
        src,
    )
    .then_some(v)
}

// Entries.

/// A data call on one of the target's AMQP fds: saved for its exit.
#[inline(always)]
fn enter(fd: u64, ptr: u64, len: u64, dir: u32, kind: u32) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    let fd = fd as u32;
    // SAFETY: a lookup; the value is not kept.
    let Some(conn_kind) = (unsafe { AMQP_CONNS.get(fd) }).map(|c| c.kind) else {
        // Not an AMQP socket: an SSL call this thread is inside is not an AMQPS one.
        ssl::unbind(tid);
        return;
    };
    if conn_kind == listener::TLS {
        // TLS records: not walked here. A call inside SSL_read/SSL_write names that call's
        // `SSL *`'s socket.
        ssl::bind(tid, fd);
        return;
    }
    let (ptr, len) = if kind == call::IOV && dir >= 2 {
        // recvmsg/sendmsg: `struct msghdr` (userspace ABI, the same on every 64-bit Linux):
        // msg_iov at 16, msg_iovlen at 24.
        (
            read_user_val::<u64>(ptr + 16).unwrap_or(0),
            read_user_val::<u64>(ptr + 24).unwrap_or(0),
        )
    } else {
        (ptr, len)
    };
    let pending = Pending {
        ptr,
        len,
        fd,
        dir: dir & 1,
        call: kind,
        _pad: 0,
    };
    if AMQP_PENDING.insert(tid, pending, 0).is_err() {
        count_diag(diag::THREADS_FULL);
    }
}

/// accept/accept4 on an AMQP listener: its exit adds the new connection.
#[inline(always)]
fn enter_accept(fd: u64) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    let fd = fd as u32;
    // SAFETY: a lookup; the value is copied out at once.
    let Some(&kind) = (unsafe { AMQP_LISTENERS.get(fd) }) else {
        return;
    };
    let pending = Pending {
        fd,
        // The listener's kind, for the accepted connection.
        dir: kind,
        call: call::ACCEPT,
        ..Pending::default()
    };
    if AMQP_PENDING.insert(tid, pending, 0).is_err() {
        count_diag(diag::THREADS_FULL);
    }
}

/// close: the connection's last figures go to the ring, and its entries away.
#[inline(always)]
fn enter_close(fd: u64) {
    if current_target_task().is_none() {
        return;
    }
    let fd = fd as u32;
    let Some(conn) = AMQP_CONNS.get_ptr_mut(fd) else {
        return;
    };
    if let Some(out) = AMQP_CLOSED_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot, used only during this run; `conn` is a live map
        // value (a concurrent update of a counter is at worst missed by this copy).
        unsafe {
            (*out).kind = event::CLOSED;
            (*out).fd = fd;
            (*out).since_ns = (*conn).since_ns;
            (*out).at_ns = now();
            (*out).counters = (*conn).counters;
            send(&*out);
        }
    }
    let _ = AMQP_CONNS.remove(fd);
    let _ = AMQP_WALKS.remove(fd);
}

// Exit: sets up the transfer, then the walk.

/// `walk`: the program array holding the walk of the caller's program type.
#[inline(always)]
fn exit<C: EbpfContext>(ctx: &C, walk: &ProgramArray, ret: i64) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    // SAFETY: a lookup; the value is copied out at once.
    let Some(p) = (unsafe { AMQP_PENDING.get(tid) }).copied() else {
        return;
    };
    let _ = AMQP_PENDING.remove(tid);
    if ret < 0 {
        return;
    }
    if p.call == call::ACCEPT {
        accepted(ret as u32, p.dir);
        return;
    }
    if p.call == call::MMSG {
        mmsg_unsynced(&p, ret as u64);
        return;
    }
    walk_transfer(ctx, walk, &p, ret as u64);
}

/// recvmmsg/sendmmsg moved `n` messages: their bytes count as unsynced, and the direction
/// resyncs (its next transfer must begin with a whole frame).
#[inline(always)]
fn mmsg_unsynced(p: &Pending, n: u64) {
    let (Some(conn), Some(walks)) = (AMQP_CONNS.get_ptr_mut(p.fd), AMQP_WALKS.get_ptr_mut(p.fd))
    else {
        return;
    };
    let mut bytes = 0u64;
    let mut i = 0u32;
    while i < MAX_MMSG && u64::from(i) < n {
        bytes += u64::from(read_user_val::<u32>(p.ptr + u64::from(i) * 64 + 56).unwrap_or(0));
        i += 1;
    }
    if n > u64::from(MAX_MMSG) {
        count_diag(diag::MMSG_UNCOUNTED);
    }
    let d = p.dir as usize & 1;
    // SAFETY: live map values; only this direction's thread writes this walker and this
    // direction's counters.
    let (conn, walks) = unsafe { (&mut *conn, &mut *walks) };
    conn.counters.unsynced_bytes[d] += bytes;
    unsync(&mut walks.walk[d]);
}

/// Walks the `len` bytes call `p` moved (its buffer, or its iovecs).
#[inline(always)]
fn walk_transfer<C: EbpfContext>(ctx: &C, walk: &ProgramArray, p: &Pending, len: u64) {
    if len == 0 || p.ptr == 0 {
        return;
    }
    let Some(t) = AMQP_XFER.get_ptr_mut(0) else {
        return;
    };
    let plain = p.call == call::PLAIN;
    // SAFETY: this CPU's slot, used by this call's runs only (a tail-call chain stays on
    // its CPU, and these programs never run in interrupt context).
    unsafe {
        *t = Transfer {
            left: len,
            seg: if plain { p.ptr } else { 0 },
            seg_left: if plain { len.min(p.len) } else { 0 },
            iov: if plain { 0 } else { p.ptr },
            iov_cnt: if plain { 0 } else { p.len },
            hdr_at: 0,
            iov_next: 0,
            fd: p.fd,
            dir: p.dir,
            runs: 0,
            at_start: 1,
            fresh: 1,
            hdr_from: 0,
            _pad: 0,
        };
    }
    // SAFETY: the slot holds the walk (userspace sets it before any attach).
    unsafe { walk.tail_call(ctx, 0) };
    count_diag(diag::WALK_LIMIT);
}

/// `kind`: the listener's (`listener::*`).
fn accepted(fd: u32, kind: u32) {
    let since = now();
    let (Some(conn), Some(walks)) = (AMQP_NEW_CONN.get_ptr_mut(0), AMQP_NEW_WALKS.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: this CPU's template slots, used only during this run.
    let (conn, walks) = unsafe { (&mut *conn, &mut *walks) };
    conn.since_ns = since;
    conn.kind = kind;
    for (w, (p, need)) in walks
        .walk
        .iter_mut()
        .zip([(phase::PROTOCOL, 8), (phase::FRAMES, 7)])
    {
        w.phase = p;
        w.need = need;
        w.have = 0;
        w.with_end = 0;
        w.skip = 0;
    }
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the 1 KiB Conn would be copied onto the 512-byte BPF stack"
    )]
    let failed =
        AMQP_CONNS.insert(fd, &*conn, 0).is_err() || AMQP_WALKS.insert(fd, &*walks, 0).is_err();
    if failed {
        let _ = AMQP_CONNS.remove(fd);
        count_diag(diag::CONNS_FULL);
        return;
    }
    let ev = Event {
        kind: event::ACCEPTED,
        fd,
        at_ns: since,
        since_ns: since,
        dir: IN,
        channel: 0,
        // The listener's kind.
        code: kind as u16,
        text_len: 0,
        text_full: 0,
        text: [0; TEXT_BYTES],
    };
    send_flags(&ev, true);
}

// The walk.

/// One run of the walk over the transfer in `AMQP_XFER`.
#[kprobe]
pub fn amqp_walk(ctx: ProbeContext) -> u32 {
    walk_run(&ctx, &AMQP_WALK_PROGS)
}

/// `amqp_walk` for the tracepoint set.
#[tracepoint]
pub fn amqp_walk_tp(ctx: TracePointContext) -> u32 {
    walk_run(&ctx, &AMQP_WALK_PROGS_TP)
}

/// `progs` holds the calling program itself.
#[inline(always)]
fn walk_run<C: EbpfContext>(ctx: &C, progs: &ProgramArray) -> u32 {
    for _ in 0..STEPS_PER_RUN {
        if amqp_walk_step() == 0 {
            return 0;
        }
    }
    let Some(t) = AMQP_XFER.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see `exit`).
    let t = unsafe { &mut *t };
    t.runs += 1;
    if t.runs < RUNS_PER_TRANSFER {
        // SAFETY: the slot holds this program.
        unsafe { progs.tail_call(ctx, 0) };
    }
    // Out of runs (or the tail call failed): what is left is not walked.
    count_diag(diag::WALK_LIMIT);
    let fd = t.fd;
    if let (Some(conn), Some(walks)) = (AMQP_CONNS.get_ptr_mut(fd), AMQP_WALKS.get_ptr_mut(fd)) {
        // SAFETY: live map values (see `amqp_walk_step`).
        let (conn, walks) = unsafe { (&mut *conn, &mut *walks) };
        let dir = t.dir & 1;
        beyond(t, &mut walks.walk[dir as usize], conn, dir);
    }
    0
}

/// One step of the walk; 0 when the transfer is done. A global function (no_mangle, not
/// inlined): the verifier checks it once on its own instead of once per step of every run.
/// Inlined, 32 steps took it past its limit ("BPF program is too large. Processed 1000001
/// insn").
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn amqp_walk_step() -> u32 {
    let Some(t) = AMQP_XFER.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see `exit`).
    let t = unsafe { &mut *t };
    let fd = t.fd;
    let (Some(conn), Some(walks)) = (AMQP_CONNS.get_ptr_mut(fd), AMQP_WALKS.get_ptr_mut(fd)) else {
        return 0;
    };
    // SAFETY: live map values; only this direction's thread writes this walker and this
    // direction's counters.
    let (conn, walks) = unsafe { (&mut *conn, &mut *walks) };
    let dir = t.dir & 1;
    let w = &mut walks.walk[dir as usize];
    u32::from(step(t, w, conn, dir))
}

/// The rest of the transfer is not walked: counted, and the direction resyncs.
#[inline(always)]
fn beyond(t: &mut Transfer, w: &mut Walker, conn: &mut Conn, dir: u32) {
    let d = dir as usize & 1;
    conn.counters.beyond_walk[d] += t.left;
    conn.counters.unsynced_bytes[d] += t.left;
    t.left = 0;
    t.seg_left = 0;
    unsync(w);
}

#[inline(always)]
fn unsync(w: &mut Walker) {
    w.phase = phase::UNSYNCED;
    w.have = 0;
    w.skip = 0;
    w.hdr = [0; HDR_BYTES];
}

#[inline(always)]
fn consume(t: &mut Transfer, n: u64) {
    t.seg += n;
    t.seg_left -= n;
    t.left = t.left.saturating_sub(n);
    t.at_start = 0;
}

/// One step; false when the transfer is done.
#[inline(always)]
fn step(t: &mut Transfer, w: &mut Walker, conn: &mut Conn, dir: u32) -> bool {
    let d = dir as usize & 1;
    if t.seg_left == 0 {
        if t.left == 0 || t.iov == 0 {
            return false;
        }
        if u64::from(t.iov_next) >= t.iov_cnt || t.iov_next >= MAX_IOVECS {
            // Bytes claimed past the iovecs walked (or past the array).
            beyond(t, w, conn, dir);
            return false;
        }
        let at = t.iov + u64::from(t.iov_next) * 16;
        let Some(iov) = read_user_val::<[u64; 2]>(at) else {
            beyond(t, w, conn, dir);
            return false;
        };
        t.iov_next += 1;
        t.seg = iov[0];
        t.seg_left = iov[1].min(t.left);
        t.hdr_at = 0;
        t.fresh = 1;
        return true;
    }
    if w.phase == phase::UNSYNCED {
        if t.at_start != 0 && resyncs(t) {
            w.phase = phase::FRAMES;
            w.have = 0;
            w.need = 7;
            w.with_end = 0;
            w.skip = 0;
            t.at_start = 0;
            return true;
        }
        conn.counters.unsynced_bytes[d] += t.seg_left;
        let n = t.seg_left;
        consume(t, n);
        return true;
    }
    if w.skip > 0 {
        let n = w.skip.min(t.seg_left);
        w.skip -= n;
        consume(t, n);
        if t.seg_left == 0 {
            return true;
        }
    }
    // A method frame wants its prefix after its header: a second collection in this step.
    match collect(t, w, conn, dir) {
        Collected::Prefix => !matches!(collect(t, w, conn, dir), Collected::Fault),
        Collected::Fault => false,
        _ => true,
    }
}

enum Collected {
    /// The segment ran out before `need` bytes were in.
    More,
    /// A frame was counted (or the walk lost sync).
    Done,
    /// A method frame's header is in: its prefix is wanted next.
    Prefix,
    /// The target's memory could not be read: the transfer is given up.
    Fault,
}

/// Collects bytes towards `need` from the current segment, and decides once they are in.
#[inline(always)]
fn collect(t: &mut Transfer, w: &mut Walker, conn: &mut Conn, dir: u32) -> Collected {
    let d = dir as usize & 1;
    let have = w.have & 31;
    let want = u64::from(w.need.saturating_sub(have).min(HDR_USED));
    // black_box: LLVM knows `want` ≤ 21 and drops the mask, and 6.1's verifier then sees a
    // signed range ("R2 min value is negative, either use unsigned or 'var &= const'").
    let n = core::hint::black_box(want.min(t.seg_left) as u32) & 31;
    if have == 0 || t.fresh != 0 {
        t.hdr_at = t.seg.wrapping_sub(u64::from(have));
        t.hdr_from = have;
        t.fresh = 0;
    }
    if n > 0 {
        // have ≤ 31 and n ≤ 31: the read stays in the 64-byte `hdr`.
        let dst = w.hdr.as_mut_ptr().wrapping_add(have as usize);
        if !read_user(dst, n, t.seg) {
            beyond(t, w, conn, dir);
            return Collected::Fault;
        }
        consume(t, u64::from(n));
        w.have = have + n;
    }
    if w.have < w.need {
        return Collected::More;
    }
    if w.phase == phase::PROTOCOL {
        if w.hdr[0] == b'A' && w.hdr[1] == b'M' && w.hdr[2] == b'Q' && w.hdr[3] == b'P' {
            w.phase = phase::FRAMES;
            w.have = 0;
            w.need = 7;
            w.with_end = 0;
        } else {
            conn.counters.unsynced_bytes[d] += u64::from(w.have);
            unsync(w);
        }
        return Collected::Done;
    }
    let e = (w.with_end & 1) as usize;
    if e == 1 && w.hdr[0] != FRAME_END {
        lost_sync(w, conn, d);
        return Collected::Done;
    }
    let kind = w.hdr[e];
    let size = u32::from_be_bytes([w.hdr[e + 3], w.hdr[e + 4], w.hdr[e + 5], w.hdr[e + 6]]);
    if !frame_type_ok(kind) || size > MAX_FRAME {
        lost_sync(w, conn, d);
        return Collected::Done;
    }
    let header_end = e as u32 + 7;
    if kind == frame::METHOD && w.need == header_end {
        let more = size.min(METHOD_PREFIX);
        if more > 0 {
            w.need = header_end + more;
            return Collected::Prefix;
        }
    }
    let prefix = w.need - header_end;
    amqp_count_frame(e as u32, u32::from(kind), size);
    w.skip = u64::from(size - prefix);
    w.have = 0;
    w.with_end = 1;
    w.need = 8;
    Collected::Done
}

#[inline(always)]
fn frame_type_ok(kind: u8) -> bool {
    kind == frame::METHOD
        || kind == frame::HEADER
        || kind == frame::BODY
        || kind == frame::HEARTBEAT
}

#[inline(always)]
fn lost_sync(w: &mut Walker, conn: &mut Conn, d: usize) {
    conn.counters.desyncs[d] += 1;
    conn.counters.unsynced_bytes[d] += u64::from(w.have);
    unsync(w);
}

/// At the start of a transfer: does it begin with a whole frame whose end octet is in place?
#[inline(always)]
fn resyncs(t: &Transfer) -> bool {
    if t.seg_left < 8 {
        return false;
    }
    let Some(h) = read_user_val::<[u8; 7]>(t.seg) else {
        return false;
    };
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
    if !frame_type_ok(h[0]) || size > MAX_FRAME || u64::from(size) + 8 > t.seg_left {
        return false;
    }
    read_user_val::<u8>(t.seg + 7 + u64::from(size)) == Some(FRAME_END)
}

/// A frame whose header (and method prefix) is collected: its counters and events. A global
/// function, verified once (see `amqp_walk_step`): inlined into both collections of a step,
/// the step went past the verifier's limit again.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn amqp_count_frame(e: u32, kind: u32, size: u32) -> u32 {
    let Some(t) = AMQP_XFER.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see `exit`).
    let t = unsafe { &*t };
    let fd = t.fd;
    let (Some(conn), Some(walks)) = (AMQP_CONNS.get_ptr_mut(fd), AMQP_WALKS.get_ptr_mut(fd)) else {
        return 0;
    };
    // SAFETY: live map values (see `amqp_walk_step`).
    let (conn, walks) = unsafe { (&mut *conn, &mut *walks) };
    let d = (t.dir & 1) as usize;
    let w = &mut walks.walk[d];
    counted(t, w, conn, d, (e & 1) as usize, kind as u8, size);
    0
}

#[inline(always)]
fn counted(t: &Transfer, w: &mut Walker, conn: &mut Conn, d: usize, e: usize, kind: u8, size: u32) {
    let c = &mut conn.counters;
    c.frames[d] += 1;
    match kind {
        frame::BODY => {
            c.body_bytes[d] += u64::from(size);
            return;
        }
        frame::HEARTBEAT => {
            c.heartbeats[d] += 1;
            return;
        }
        frame::METHOD if size >= 4 => {}
        _ => return,
    }
    let h = &w.hdr;
    let channel = u16::from_be_bytes([h[e + 1], h[e + 2]]);
    let class = u16::from_be_bytes([h[e + 7], h[e + 8]]);
    let meth = u16::from_be_bytes([h[e + 9], h[e + 10]]);
    let slot = method_slot(class, meth);
    if slot < METHOD_SLOTS {
        c.methods[d][slot] += 1;
    }
    let id = (class, meth);
    let out = d == OUT as usize;
    // Arguments in the prefix: a delivery tag and its bit octet (ack, nack, reject), or a
    // reply code (close).
    let tag = u64::from_be_bytes([
        h[e + 11],
        h[e + 12],
        h[e + 13],
        h[e + 14],
        h[e + 15],
        h[e + 16],
        h[e + 17],
        h[e + 18],
    ]);
    let multiple = size >= METHOD_PREFIX && h[e + 19] & 1 != 0;
    let code = u16::from_be_bytes([h[e + 11], h[e + 12]]);
    if id == method::BASIC_PUBLISH && !out {
        c.published += 1;
        if let Some(ch) = channel_of(t.fd, channel)
            && ch.confirm_mode != 0
        {
            ch.pub_seq += 1;
            ch.pub_ts[(ch.pub_seq as usize) % TIMES_PER_CHANNEL] = now();
            c.confirm_published += 1;
        }
    } else if (id == method::BASIC_DELIVER || id == method::BASIC_GET_OK) && out {
        c.delivered += 1;
        if let Some(ch) = channel_of(t.fd, channel) {
            ch.deliver_seq += 1;
            ch.deliver_ts[(ch.deliver_seq as usize) % TIMES_PER_CHANNEL] = now();
        }
    } else if id == method::BASIC_RETURN && out {
        c.returned += 1;
    } else if id == method::BASIC_ACK || id == method::BASIC_NACK || id == method::BASIC_REJECT {
        let n = settle(
            t.fd,
            channel,
            out,
            tag,
            multiple && id != method::BASIC_REJECT,
            c,
        );
        if out && id == method::BASIC_ACK {
            c.confirmed += n;
        } else if out {
            c.nacked += n;
        } else if id == method::BASIC_ACK {
            c.acked += n;
        } else {
            c.rejected += n;
        }
    } else if id == method::CONFIRM_SELECT && !out {
        if let Some(ch) = channel_of(t.fd, channel) {
            ch.confirm_mode = 1;
        }
    } else if id == method::CHANNEL_OPEN && !out {
        // A fresh channel: its tags and sequence numbers count from 1.
        let _ = AMQP_CHANS.remove(chan_key(t.fd, channel));
        if let Some(ch) = channel_of(t.fd, channel) {
            ch.known = 1;
        }
        rare(
            t,
            w,
            conn.since_ns,
            d,
            e,
            event::CHANNEL_OPEN,
            channel,
            0,
            None,
        );
    } else if id == method::CHANNEL_CLOSE {
        rare(
            t,
            w,
            conn.since_ns,
            d,
            e,
            event::CHANNEL_CLOSE,
            channel,
            code,
            Some(6),
        );
    } else if id == method::CONNECTION_OPEN && !out {
        rare(
            t,
            w,
            conn.since_ns,
            d,
            e,
            event::CONN_OPEN,
            channel,
            0,
            Some(4),
        );
    } else if id == method::CONNECTION_CLOSE {
        rare(
            t,
            w,
            conn.since_ns,
            d,
            e,
            event::CONN_CLOSE,
            channel,
            code,
            Some(6),
        );
    } else if id == method::CONNECTION_BLOCKED && out {
        rare(
            t,
            w,
            conn.since_ns,
            d,
            e,
            event::BLOCKED,
            channel,
            0,
            Some(4),
        );
    } else if id == method::CONNECTION_UNBLOCKED && out {
        rare(
            t,
            w,
            conn.since_ns,
            d,
            e,
            event::UNBLOCKED,
            channel,
            0,
            None,
        );
    }
    // The argument bytes have served: they do not stay in the map.
    let mut i = 0;
    while i < HDR_BYTES {
        w.hdr[i] = 0;
        i += 1;
    }
}

/// The channel's entry, added (zeroed: not known from its start) when missing.
#[inline(always)]
fn channel_of(fd: u32, channel: u16) -> Option<&'static mut Chan> {
    let key = chan_key(fd, channel);
    if AMQP_CHANS.get_ptr_mut(key).is_none() {
        // SAFETY: the template slot, never written.
        let zero: &Chan = unsafe { &*AMQP_NEW_CHAN.get_ptr(0)? };
        let _ = AMQP_CHANS.insert(key, zero, 0);
    }
    // SAFETY: live map value; each side's fields are written by that direction only.
    AMQP_CHANS.get_ptr_mut(key).map(|c| unsafe { &mut *c })
}

/// Times the settled sequence numbers `lo..=hi` (`n` of them settled) of channel `key`'s
/// publishes (`out`: confirms) or deliveries (consumer acks): the ring's slots of those still
/// in it and not settled yet; the rest is untimed. A global function, verified once (its
/// loop, inlined into the frame count, took that past the verifier's limit).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn amqp_time_range(key: u64, out: u32, lo: u64, hi: u64, n: u64) -> u32 {
    let Some(t) = AMQP_XFER.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see `exit`).
    let fd = unsafe { (*t).fd };
    let (Some(conn), Some(ch)) = (AMQP_CONNS.get_ptr_mut(fd), AMQP_CHANS.get_ptr_mut(key)) else {
        return 0;
    };
    // SAFETY: live map values; each side's fields are written by that direction only.
    let (c, ch) = unsafe { (&mut (*conn).counters, &mut *ch) };
    let (ts, newest, hist, untimed) = if out != 0 {
        (
            &mut ch.pub_ts,
            ch.pub_seq,
            &mut c.confirm_latency,
            &mut c.confirm_untimed,
        )
    } else {
        (
            &mut ch.deliver_ts,
            ch.deliver_seq,
            &mut c.ack_latency,
            &mut c.ack_untimed,
        )
    };
    let now = now();
    let mut timed = 0;
    let ring = TIMES_PER_CHANNEL as u64;
    let start = if hi >= ring {
        lo.max(hi - ring + 1)
    } else {
        lo
    };
    // The counter stays the loop's bound (black_box): counting `seq` from an unknown `start`
    // instead, as LLVM would, the verifier sees no bound ("BPF program is too large.
    // Processed 1000001 insn").
    let mut i = 0u64;
    while i < ring {
        let seq = start + i;
        i = core::hint::black_box(i + 1);
        if seq > hi {
            break;
        }
        // Slot `seq` holds seq's time only while fewer than a ring's worth came after it.
        if seq == 0 || seq > newest || newest - seq >= ring {
            continue;
        }
        let slot = &mut ts[(seq % ring) as usize];
        if *slot != 0 {
            let b = latency_bucket(now.saturating_sub(*slot));
            if b < LATENCY_BUCKETS {
                hist[b] += 1;
            }
            *slot = 0;
            timed += 1;
        }
    }
    *untimed += n.saturating_sub(timed);
    0
}

/// How many deliveries (or publishes) an ack/nack/reject settles: 1, or for a multiple one
/// the tags up to `tag` not settled yet, when the channel's start was seen (else 0, counted
/// as an unknown range).
#[inline(always)]
fn settle(
    fd: u32,
    channel: u16,
    out: bool,
    tag: u64,
    multiple: bool,
    c: &mut lavtrace_common::amqp::Counters,
) -> u64 {
    let Some(ch) = channel_of(fd, channel) else {
        return u64::from(!multiple);
    };
    let known = ch.known != 0;
    let (upto, singles) = if out {
        (&mut ch.confirm_upto, &mut ch.confirm_singles)
    } else {
        (&mut ch.settle_upto, &mut ch.settle_singles)
    };
    let (lo, n) = if !multiple {
        if tag > *upto {
            *singles += 1;
        }
        (tag, 1)
    } else if !known && *upto == 0 {
        *upto = tag;
        *singles = 0;
        c.ranges_unknown += 1;
        return 0;
    } else if tag <= *upto {
        return 0;
    } else {
        let n = (tag - *upto).saturating_sub(*singles);
        let lo = *upto + 1;
        *upto = tag;
        *singles = 0;
        (lo, n)
    };
    if known {
        amqp_time_range(chan_key(fd, channel), u32::from(out), lo, tag, n);
    } else if out {
        c.confirm_untimed += n;
    } else {
        c.ack_untimed += n;
    }
    n
}

/// Sends a rare event; `text_at`: the payload offset of its shortstr (length octet), read
/// from the target's memory when the frame's collection came from one segment.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one call site per event kind")]
fn rare(
    t: &Transfer,
    w: &Walker,
    since_ns: u64,
    d: usize,
    e: usize,
    kind: u32,
    channel: u16,
    code: u16,
    text_at: Option<usize>,
) {
    let Some(ev) = AMQP_EVENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, used only during this run.
    let ev = unsafe { &mut *ev };
    ev.kind = kind;
    ev.fd = t.fd;
    ev.at_ns = now();
    ev.since_ns = since_ns;
    ev.dir = d as u32;
    ev.channel = channel;
    ev.code = code;
    ev.text_len = 0;
    ev.text_full = 0;
    if let Some(off) = text_at {
        // The shortstr's length octet is in the prefix (payload offsets 4 or 6 < 13); its
        // text is read from the target's memory when it follows in the current segment.
        let len_at = e + 7 + off;
        if len_at < HDR_USED as usize {
            let full = u32::from(w.hdr[len_at]);
            ev.text_full = full;
            if t.hdr_at != 0 && len_at as u32 + 1 >= t.hdr_from {
                let src = t.hdr_at + len_at as u64 + 1;
                let end = t.seg + t.seg_left;
                let avail = end.saturating_sub(src);
                let mut n = u64::from(full).min(avail);
                if n > TEXT_BYTES as u64 {
                    n = TEXT_BYTES as u64;
                }
                if n > 0 && read_user(ev.text.as_mut_ptr(), n as u32, src) {
                    ev.text_len = n as u32;
                }
            }
        }
    }
    send(ev);
}

// The kprobe set: `__<arch>_sys_*` functions.

#[kprobe]
pub fn amqp_kenter_read(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<3>(&ctx);
    enter(a[0], a[1], a[2], IN, call::PLAIN);
    0
}

#[kprobe]
pub fn amqp_kenter_write(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<3>(&ctx);
    enter(a[0], a[1], a[2], OUT, call::PLAIN);
    0
}

#[kprobe]
pub fn amqp_kenter_readv(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<3>(&ctx);
    enter(a[0], a[1], a[2], IN, call::IOV);
    0
}

#[kprobe]
pub fn amqp_kenter_writev(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<3>(&ctx);
    enter(a[0], a[1], a[2], OUT, call::IOV);
    0
}

#[kprobe]
pub fn amqp_kenter_recvmsg(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<2>(&ctx);
    enter(a[0], a[1], 0, IN | 2, call::IOV);
    0
}

#[kprobe]
pub fn amqp_kenter_sendmsg(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<2>(&ctx);
    enter(a[0], a[1], 0, OUT | 2, call::IOV);
    0
}

#[kprobe]
pub fn amqp_kenter_recvmmsg(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<3>(&ctx);
    enter(a[0], a[1], a[2], IN, call::MMSG);
    0
}

#[kprobe]
pub fn amqp_kenter_sendmmsg(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = kargs::<3>(&ctx);
    enter(a[0], a[1], a[2], OUT, call::MMSG);
    0
}

#[kprobe]
pub fn amqp_kenter_accept(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    enter_accept(kargs::<1>(&ctx)[0]);
    0
}

#[kprobe]
pub fn amqp_kclose(ctx: ProbeContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    enter_close(kargs::<1>(&ctx)[0]);
    0
}

#[kretprobe]
pub fn amqp_kexit(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<i64>();
    exit(&ctx, &AMQP_WALK_PROGS, ret);
    0
}

// The uprobe set: the target's libc functions (arguments in the call's registers).

#[inline(always)]
fn uargs(ctx: &ProbeContext) -> [u64; 3] {
    [
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
    ]
}

#[uprobe]
pub fn amqp_uenter_read(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], a[2], IN, call::PLAIN);
    0
}

#[uprobe]
pub fn amqp_uenter_write(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], a[2], OUT, call::PLAIN);
    0
}

#[uprobe]
pub fn amqp_uenter_readv(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], a[2], IN, call::IOV);
    0
}

#[uprobe]
pub fn amqp_uenter_writev(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], a[2], OUT, call::IOV);
    0
}

#[uprobe]
pub fn amqp_uenter_recvmsg(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], 0, IN | 2, call::IOV);
    0
}

#[uprobe]
pub fn amqp_uenter_sendmsg(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], 0, OUT | 2, call::IOV);
    0
}

#[uprobe]
pub fn amqp_uenter_recvmmsg(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], a[2], IN, call::MMSG);
    0
}

#[uprobe]
pub fn amqp_uenter_sendmmsg(ctx: ProbeContext) -> u32 {
    let a = uargs(&ctx);
    enter(a[0], a[1], a[2], OUT, call::MMSG);
    0
}

#[uprobe]
pub fn amqp_uenter_accept(ctx: ProbeContext) -> u32 {
    enter_accept(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[uprobe]
pub fn amqp_uclose(ctx: ProbeContext) -> u32 {
    enter_close(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

/// libc's return value: ssize_t for the data calls, int for accept (read as 32 bits: the
/// upper half of rax is not part of an `int` return).
#[uretprobe]
pub fn amqp_uexit(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<i64>();
    exit(&ctx, &AMQP_WALK_PROGS, ret);
    0
}

#[uretprobe]
pub fn amqp_uexit_accept(ctx: RetProbeContext) -> u32 {
    let ret = i64::from(ctx.ret::<i32>());
    exit(&ctx, &AMQP_WALK_PROGS, ret);
    0
}

// The tracepoint set: `syscalls:sys_{enter,exit}_*` (one record layout for all of them, see
// `storage`). recv and send are recvfrom and sendto in the kernel.

#[tracepoint]
pub fn amqp_tenter_read(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<3>(&ctx);
    enter(a[0], a[1], a[2], IN, call::PLAIN);
    0
}

#[tracepoint]
pub fn amqp_tenter_write(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<3>(&ctx);
    enter(a[0], a[1], a[2], OUT, call::PLAIN);
    0
}

#[tracepoint]
pub fn amqp_tenter_readv(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<3>(&ctx);
    enter(a[0], a[1], a[2], IN, call::IOV);
    0
}

#[tracepoint]
pub fn amqp_tenter_writev(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<3>(&ctx);
    enter(a[0], a[1], a[2], OUT, call::IOV);
    0
}

#[tracepoint]
pub fn amqp_tenter_recvmsg(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<2>(&ctx);
    enter(a[0], a[1], 0, IN | 2, call::IOV);
    0
}

#[tracepoint]
pub fn amqp_tenter_sendmsg(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<2>(&ctx);
    enter(a[0], a[1], 0, OUT | 2, call::IOV);
    0
}

#[tracepoint]
pub fn amqp_tenter_recvmmsg(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<3>(&ctx);
    enter(a[0], a[1], a[2], IN, call::MMSG);
    0
}

#[tracepoint]
pub fn amqp_tenter_sendmmsg(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    let a = tp_args::<3>(&ctx);
    enter(a[0], a[1], a[2], OUT, call::MMSG);
    0
}

#[tracepoint]
pub fn amqp_tenter_accept(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    enter_accept(tp_args::<1>(&ctx)[0]);
    0
}

#[tracepoint]
pub fn amqp_tclose(ctx: TracePointContext) -> u32 {
    if current_target_task().is_none() {
        return 0; // another process: no argument read
    }
    enter_close(tp_args::<1>(&ctx)[0]);
    0
}

#[tracepoint]
pub fn amqp_texit(ctx: TracePointContext) -> u32 {
    exit(&ctx, &AMQP_WALK_PROGS_TP, tp_ret(&ctx));
    0
}
