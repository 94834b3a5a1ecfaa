//! Probe family `fsync`: durability calls (fsync, fdatasync, syncfs, sync, sync_file_range,
//! msync), timed in the kernel and sent one by one through the `FSYNC_EVENTS` ring. Records:
//! `crate::storage`.

/// Name of the family's ring in the eBPF object.
pub const RING: &str = "FSYNC_EVENTS";
/// Default ring size: 1 MiB holds ~11,000 calls, several seconds of a broker doing 2,000
/// syncfs/s even if the drain were stalled.
pub const RING_BYTES: u32 = 1 << 20;
