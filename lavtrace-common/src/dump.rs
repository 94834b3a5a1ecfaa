//! `bundle`'s server-state dump: what the target writes to its own stdout and stderr (fd 1
//! and 2) while it answers SIGUSR1, copied in the kernel with a cap per write and in total,
//! sent through `DUMP_EVENTS`. Only attached for the dump window (a second or two).

/// Name of the ring in the eBPF object.
pub const RING: &str = "DUMP_EVENTS";
/// 64 KiB: several dumps' worth; LavinMQ's GC stats and fiber list are a few KiB.
pub const RING_BYTES: u32 = 1 << 16;
/// Bytes copied from one write (or one iovec of a writev); the rest is counted as cut.
pub const CHUNK_BYTES: usize = 1024;
/// Bytes copied over the whole window; later writes are counted, not copied.
pub const TOTAL_BYTES: u64 = 256 << 10;
/// iovecs of one writev looked at (LavinMQ's logger writes one or two).
pub const MAX_IOVECS: u32 = 8;
/// The tracepoint fields the dump programs read: the first argument slot of both events.
pub const FIELDS: &[crate::field::FieldSpec] = &[
    crate::field::FieldSpec::new("DUMP_ARGS_OFFSET", "syscalls", "sys_enter_write", "fd", 8),
    crate::field::FieldSpec::new("DUMP_ARGS_OFFSET", "syscalls", "sys_enter_writev", "fd", 8),
];

/// Name of the per-window counters (`Counters`) map.
pub const COUNTERS: &str = "DUMP_COUNTERS";

/// Indexes of `DUMP_COUNTERS`.
pub mod counter {
    /// Bytes copied into the ring.
    pub const COPIED: u32 = 0;
    /// Bytes written but not copied: past `CHUNK_BYTES` of a write, past `TOTAL_BYTES`, or
    /// unreadable.
    pub const CUT: u32 = 1;
    /// Chunks that did not fit in the ring.
    pub const LOST: u32 = 2;
    pub const LEN: u32 = 3;
}

/// One write (or iovec) of the target to fd 1 or 2.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DumpChunk {
    /// Bytes of `data` that hold the write.
    pub len: u32,
    pub fd: u32,
    pub data: [u8; CHUNK_BYTES],
}

crate::pod!(DumpChunk);

const _: () = assert!(core::mem::size_of::<DumpChunk>() == 8 + CHUNK_BYTES);
