//! Probe family `mmap`: mapping churn (mmap, munmap, mremap, madvise, brk), sent one by one
//! through the `MMAP_EVENTS` ring. Records: `crate::storage`.

/// Name of the family's ring in the eBPF object.
pub const RING: &str = "MMAP_EVENTS";
/// Default ring size: mapping calls are rare (LavinMQ: a few per second), bursts at start-up
/// (a runtime mapping its heap) fit many times over.
pub const RING_BYTES: u32 = 1 << 18;
