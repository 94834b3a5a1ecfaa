//! `bundle`'s server-state dump: the target's writes to fd 1 and 2, copied while lavtrace
//! waits for its SIGUSR1 answer. Attached only for that window; any other fd (sockets carrying
//! message bodies included) is dropped before anything is read.

use aya_ebpf::{
    helpers::{bpf_probe_read_user_buf, generated as helpers},
    macros::{map, tracepoint},
    maps::{Array, RingBuf},
    programs::TracePointContext,
};
use lavtrace_common::dump::{CHUNK_BYTES, DumpChunk, MAX_IOVECS, RING_BYTES, TOTAL_BYTES, counter};

use crate::{field, filter::current_target_task};

#[map]
pub static DUMP_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static DUMP_COUNTERS: Array<u64> = Array::with_max_entries(counter::LEN, 0);

field::offsets!(
    /// The first argument slot (`fd`) of `syscalls:sys_enter_write{,v}`; the others follow
    /// in 8-byte slots (`lavtrace_common::dump::FIELDS`).
    DUMP_ARGS_OFFSET,
);

/// write(fd, buf, count)
#[tracepoint]
pub fn dump_write(ctx: TracePointContext) -> u32 {
    let Some([fd, buf, len]) = target_args(&ctx) else {
        return 0;
    };
    copy(fd, buf, len);
    0
}

/// writev(fd, iov, iovcnt)
#[tracepoint]
pub fn dump_writev(ctx: TracePointContext) -> u32 {
    let Some([fd, iov, n]) = target_args(&ctx) else {
        return 0;
    };
    for i in 0..MAX_IOVECS {
        if u64::from(i) >= n {
            break;
        }
        let mut vec = [0u64; 2];
        let at = iov.wrapping_add(u64::from(i) * 16);
        // SAFETY: the helper checks the user address; `vec` is a live stack buffer.
        let bytes = unsafe { core::slice::from_raw_parts_mut(vec.as_mut_ptr().cast::<u8>(), 16) };
        // SAFETY: as above.
        if unsafe { bpf_probe_read_user_buf(at as *const u8, bytes) }.is_err() {
            return 0;
        }
        copy(fd, vec[0], vec[1]);
    }
    0
}

/// fd, buffer and count of the target's write to its fd 1 or 2; None for anything else.
fn target_args(ctx: &TracePointContext) -> Option<[u64; 3]> {
    current_target_task()?;
    let mut args = [0u64; 3];
    field::read_u64s::<3>(ctx, &DUMP_ARGS_OFFSET, &mut args);
    (args[0] == 1 || args[0] == 2).then_some(args)
}

fn add(index: u32, n: u64) {
    if let Some(c) = DUMP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a slot of an array map. Racing writers (two threads of the target on two
        // CPUs) can lose an add: the total cap then lets at most one extra chunk per CPU by.
        unsafe { *c += n };
    }
}

fn copied() -> u64 {
    DUMP_COUNTERS.get(counter::COPIED).copied().unwrap_or(0)
}

#[inline(always)]
fn copy(fd: u64, buf: u64, len: u64) {
    if len == 0 {
        return;
    }
    let room = TOTAL_BYTES.saturating_sub(copied());
    let take = len.min(CHUNK_BYTES as u64).min(room) as usize;
    if take == 0 {
        add(counter::CUT, len);
        return;
    }
    let Some(mut entry) = DUMP_EVENTS.reserve::<DumpChunk>(0) else {
        add(counter::LOST, 1);
        return;
    };
    let chunk = entry.as_mut_ptr();
    // SAFETY: `chunk` points at a reserved DumpChunk that only this program writes until it is
    // submitted or discarded; `take` is at most CHUNK_BYTES, the size of `data`.
    let read = unsafe {
        (*chunk).fd = fd as u32;
        (*chunk).len = take as u32;
        // Bounded again right at the call: the verifier must see size <= CHUNK_BYTES here.
        let size = if take > CHUNK_BYTES {
            CHUNK_BYTES
        } else {
            take
        };
        helpers::bpf_probe_read_user(
            (*chunk).data.as_mut_ptr().cast(),
            size as u32,
            buf as *const core::ffi::c_void,
        )
    };
    if read != 0 {
        entry.discard(0);
        add(counter::CUT, len);
        return;
    }
    entry.submit(0);
    add(counter::COPIED, take as u64);
    add(counter::CUT, len - take as u64);
}
