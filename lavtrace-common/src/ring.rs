//! Ring buffers: the event path of the families that report call by call.

/// Indexes of the per-cpu `RING_LOST_EVENTS` counter ([`LOST_MAP`]), one per ring-buffer family: every event the
/// kernel could not place in its ring is counted here, so losses are never silent.
pub mod lost {
    pub const FSYNC: u32 = 0;
    pub const MMAP: u32 = 1;
    pub const TCP: u32 = 2;
    pub const GC: u32 = 3;
    pub const AMQP: u32 = 4;
    pub const LEN: u32 = 5;
}

/// Name of the per-cpu lost-event counter in the eBPF object.
pub const LOST_MAP: &str = "RING_LOST_EVENTS";

/// Default ring size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
