//! Probe family `faults`: the target's page faults, counted per page in the kernel (userspace
//! resolves pages to the mapping they are in), and the dirty-page throttling and writeback
//! waits its threads meet.

use crate::field::FieldSpec;

/// Pages the per-page table holds at once (256 MiB of 4 KiB pages). Userspace removes a page
/// once it has read it without change for a whole interval, so this bounds the pages touched
/// in about two intervals, not over the run.
pub const MAX_PAGES: u32 = 65_536;
/// Files (by inode) the stable-page and dirtied tables hold.
pub const MAX_INODES: u32 = 4_096;
/// Backing devices the throttling table holds.
pub const MAX_BDIS: u32 = 64;
/// Log2 buckets of the throttle pause, in milliseconds: bucket i holds [2^(i-1), 2^i) ms,
/// bucket 0 a pause of 0 ms.
pub const PAUSE_BUCKETS: usize = 16;
/// Bytes of a bdi name in the writeback records (`char bdi[32]`, `char name[32]`).
pub const BDI_NAME: usize = 32;

/// page address (the fault address with the low 12 bits cleared) → `PageFaults`.
pub const PAGES_MAP: &str = "FAULTS_PAGES";
/// tid → the fault in progress (`[start ns, address]`), kprobe to kretprobe.
pub const INFLIGHT_MAP: &str = "FAULTS_INFLIGHT";
/// Threads of the target in a fault at once.
pub const MAX_INFLIGHT: u32 = 4_096;
/// bdi name → `Throttle`.
pub const THROTTLE_MAP: &str = "FAULTS_THROTTLE";
/// inode → waits for writeback of one of its pages (`folio_wait_writeback`).
pub const STABLE_MAP: &str = "FAULTS_STABLE";
/// inode → pages the target dirtied (`writeback_dirty_folio`).
pub const DIRTIED_MAP: &str = "FAULTS_DIRTIED";
/// One `DirtyState`: the last global dirty state seen.
pub const DIRTY_STATE_MAP: &str = "FAULTS_DIRTY_STATE";
/// Per-cpu `u64` diagnostic counters (`diag`).
pub const DIAG_MAP: &str = "FAULTS_DIAG";

/// The page size the kernel programs assume when they key faults by page (the low 12 bits
/// are cleared; on a 16 or 64 KiB kernel a page holds several keys, which the userspace
/// resolution still puts in the right mapping).
pub const PAGE_SHIFT: u32 = 12;

/// Bit 1 of the x86 page-fault error code: the access was a write.
pub const X86_PF_WRITE: u64 = 1 << 1;
/// The highest user-space address + 1 on x86-64 with 5-level paging (a kernel fault above it
/// is on kernel memory, not a fault of the target's address space).
pub const USER_END: u64 = 1 << 56;

/// One page's faults since its entry was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageFaults {
    /// Every fault exception on the page (`exceptions:page_fault_*`), or, where that
    /// tracepoint is absent, every fault the kernel accounted (perf `page-faults`).
    pub faults: u64,
    /// Faults whose error code says write (x86 only: the perf fallback cannot tell).
    pub writes: u64,
    /// Faults the kernel accounted as major (perf `major-faults`: it had to read the page).
    /// Minor is `faults - major`: perf `minor-faults` is not used, since the perf core
    /// throttles a sampling event above `perf_event_max_sample_rate` / HZ samples per tick
    /// (400 at 100000 and HZ 250), which minor faults easily pass and major faults do not.
    pub major: u64,
    /// Time in handle_mm_fault (kprobe to kretprobe; `--fault-time` where kprobes exist).
    pub time_ns: u64,
}

/// Dirty throttling of the target's threads on one backing device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    /// balance_dirty_pages calls of the target that reached the tracepoint (it fires when a
    /// writer is over its share of the dirty limit and pauses, or is about to).
    pub count: u64,
    /// Of them, those with a pause > 0.
    pub paused: u64,
    /// Sum and maximum of the `pause` field, in ms.
    pub pause_ms: u64,
    pub max_pause_ms: u64,
    pub buckets: [u64; PAUSE_BUCKETS],
}

/// The global dirty state, as `writeback:global_dirty_state` last reported it (in pages).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyState {
    /// CLOCK_MONOTONIC of the last sample (0: none yet).
    pub at_ns: u64,
    /// Records seen (every one is counted; one per 100 ms is copied).
    pub seen: u64,
    pub nr_dirty: u64,
    pub nr_writeback: u64,
    pub background_thresh: u64,
    pub dirty_thresh: u64,
    pub dirty_limit: u64,
}

/// Minimum time between two copies of the global dirty state.
pub const DIRTY_STATE_EVERY_NS: u64 = 100_000_000;

/// Indexes of the per-cpu diagnostic counters.
pub mod diag {
    /// A page could not be added: the page table was full (its faults are missing).
    pub const PAGES_FULL: u32 = 0;
    /// An inode could not be added to the stable-page or dirtied table.
    pub const INODES_FULL: u32 = 1;
    /// A bdi could not be added to the throttling table.
    pub const BDIS_FULL: u32 = 2;
    /// A fault's start could not be kept: its time is missing.
    pub const INFLIGHT_FULL: u32 = 3;
    pub const LEN: u32 = 4;
}

/// The log2 bucket of a pause of `ms`.
#[inline(always)]
pub const fn pause_bucket(ms: u64) -> usize {
    let b = (64 - ms.leading_zeros()) as usize;
    if b >= PAUSE_BUCKETS {
        PAUSE_BUCKETS - 1
    } else {
        b
    }
}

crate::pod!(PageFaults, Throttle, DirtyState);

/// The record fields the programs read. page_fault_user and page_fault_kernel share a class,
/// so one global each serves both; folio_wait_writeback and writeback_dirty_folio too.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::new(
        "FAULTS_ADDRESS_OFFSET",
        "exceptions",
        "page_fault_user",
        "address",
        8,
    ),
    FieldSpec::new(
        "FAULTS_ADDRESS_OFFSET",
        "exceptions",
        "page_fault_kernel",
        "address",
        8,
    ),
    FieldSpec::new(
        "FAULTS_ERROR_CODE_OFFSET",
        "exceptions",
        "page_fault_user",
        "error_code",
        8,
    ),
    FieldSpec::new(
        "FAULTS_ERROR_CODE_OFFSET",
        "exceptions",
        "page_fault_kernel",
        "error_code",
        8,
    ),
    FieldSpec::new(
        "FAULTS_BDP_BDI_OFFSET",
        "writeback",
        "balance_dirty_pages",
        "bdi",
        BDI_NAME as u32,
    ),
    FieldSpec::new(
        "FAULTS_BDP_PAUSE_OFFSET",
        "writeback",
        "balance_dirty_pages",
        "pause",
        8,
    ),
    FieldSpec::new(
        "FAULTS_FOLIO_INO_OFFSET",
        "writeback",
        "folio_wait_writeback",
        "ino",
        8,
    ),
    FieldSpec::new(
        "FAULTS_FOLIO_INO_OFFSET",
        "writeback",
        "writeback_dirty_folio",
        "ino",
        8,
    ),
    // Their names before 5.16 / 5.17 (one kernel has one name or the other).
    FieldSpec::new(
        "FAULTS_FOLIO_INO_OFFSET",
        "writeback",
        "wait_on_page_writeback",
        "ino",
        8,
    ),
    FieldSpec::new(
        "FAULTS_FOLIO_INO_OFFSET",
        "writeback",
        "writeback_dirty_page",
        "ino",
        8,
    ),
    FieldSpec::new(
        "FAULTS_GDS_DIRTY_OFFSET",
        "writeback",
        "global_dirty_state",
        "nr_dirty",
        8,
    ),
    FieldSpec::new(
        "FAULTS_GDS_WRITEBACK_OFFSET",
        "writeback",
        "global_dirty_state",
        "nr_writeback",
        8,
    ),
    FieldSpec::new(
        "FAULTS_GDS_BG_THRESH_OFFSET",
        "writeback",
        "global_dirty_state",
        "background_thresh",
        8,
    ),
    FieldSpec::new(
        "FAULTS_GDS_THRESH_OFFSET",
        "writeback",
        "global_dirty_state",
        "dirty_thresh",
        8,
    ),
    FieldSpec::new(
        "FAULTS_GDS_LIMIT_OFFSET",
        "writeback",
        "global_dirty_state",
        "dirty_limit",
        8,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<PageFaults>(), 32);
        assert_eq!(core::mem::size_of::<Throttle>(), 8 * 4 + 8 * PAUSE_BUCKETS);
        assert_eq!(core::mem::size_of::<DirtyState>(), 7 * 8);
    }

    #[test]
    fn pauses_fall_in_log2_buckets() {
        assert_eq!(pause_bucket(0), 0);
        assert_eq!(pause_bucket(1), 1);
        assert_eq!(pause_bucket(3), 2);
        assert_eq!(pause_bucket(200), 8);
        assert_eq!(pause_bucket(u64::MAX), PAUSE_BUCKETS - 1);
    }
}
