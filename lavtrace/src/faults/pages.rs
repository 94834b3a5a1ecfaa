//! The per-page fault table: read once per interval, differenced against the previous
//! reading, and resolved to the mapping each page is in now.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lavtrace_common::faults::PageFaults;
use tracing::debug;

/// What a page whose mapping is gone by the reading is counted under.
pub const UNMAPPED: &str = "[unmapped]";

/// One file's (or anonymous region's) faults over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub faults: u64,
    pub writes: u64,
    pub major: u64,
    /// Distinct pages that faulted.
    pub pages: u64,
    pub time_ns: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.faults += o.faults;
        self.writes += o.writes;
        self.major += o.major;
        self.pages += o.pages;
        self.time_ns += o.time_ns;
    }
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Region {
    start: u64,
    end: u64,
    inode: u64,
    name: String,
}

pub struct Pages {
    map: BpfHashMap<MapData, u64, PageFaults>,
    /// The same map, for BPF_MAP_LOOKUP_AND_DELETE_BATCH (5.6+); None once the kernel
    /// refused it (the entries are then walked one by one).
    batch_fd: Option<OwnedFd>,
    pid: u32,
    /// Each page's figures at the previous reading.
    last: HashMap<u64, PageFaults>,
    /// The target's mappings at the last reading that found any (kept when the process is
    /// gone: its last pages are resolved against what it had).
    regions: Vec<Region>,
}

impl Pages {
    pub fn new(
        map: BpfHashMap<MapData, u64, PageFaults>,
        batch_fd: Option<OwnedFd>,
        pid: u32,
    ) -> Pages {
        let mut p = Pages {
            map,
            batch_fd,
            pid,
            last: HashMap::new(),
            regions: Vec::new(),
        };
        p.refresh_regions();
        p
    }

    fn refresh_regions(&mut self) {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        let regions = parse_maps(&text);
        if !regions.is_empty() {
            self.regions = regions;
        }
    }

    /// The index of the region holding `addr`.
    fn region_of(&self, addr: u64) -> Option<usize> {
        let i = self
            .regions
            .partition_point(|r| r.start <= addr)
            .checked_sub(1)?;
        (addr < self.regions[i].end).then_some(i)
    }

    /// The faults since the previous reading, per file.
    pub fn read(&mut self) -> BTreeMap<String, Counts> {
        self.refresh_regions();
        let window = match self.batch_fd.as_ref().map(drain) {
            Some(Ok(entries)) => entries,
            Some(Err(e)) => {
                debug!("faults: no batch reads ({e}); walking the page table");
                self.batch_fd = None;
                self.walk()
            }
            None => self.walk(),
        };
        // Per region first (no name allocated per page), then per name.
        let mut by_region: HashMap<Option<usize>, Counts> = HashMap::new();
        for (page, w) in window {
            let c = by_region.entry(self.region_of(page)).or_default();
            c.faults += w.faults;
            c.writes += w.writes;
            c.major += w.major;
            c.time_ns += w.time_ns;
            c.pages += 1;
        }
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for (region, c) in by_region {
            let name = region.map_or(UNMAPPED, |i| self.regions[i].name.as_str());
            out.entry(name.to_string()).or_default().add(&c);
        }
        out
    }

    /// Without batch reads: every entry's change since the previous reading. A page read
    /// without change for a whole interval is removed from the kernel table (its figures are
    /// accounted for), so the table holds the pages of about two intervals. A fault between
    /// the lookup and that delete would be lost; the window is one map operation on a page
    /// idle for an interval.
    fn walk(&mut self) -> Vec<(u64, PageFaults)> {
        let mut window = Vec::new();
        let mut idle = Vec::new();
        let mut seen = HashMap::with_capacity(self.last.len());
        for entry in self.map.iter() {
            let Ok((page, cur)) = entry else {
                debug!("faults: skipping a page entry that changed while read");
                continue;
            };
            let prev = self.last.get(&page).copied().unwrap_or_default();
            // A removed and re-added page starts from zero: counters below the previous
            // reading are all new.
            let w = if cur.faults < prev.faults || cur.major < prev.major {
                cur
            } else {
                PageFaults {
                    faults: cur.faults - prev.faults,
                    writes: cur.writes.saturating_sub(prev.writes),
                    major: cur.major - prev.major,
                    time_ns: cur.time_ns.saturating_sub(prev.time_ns),
                }
            };
            seen.insert(page, cur);
            if w == PageFaults::default() {
                idle.push(page);
            } else {
                window.push((page, w));
            }
        }
        for page in idle {
            let _ = self.map.remove(&page);
            seen.remove(&page);
        }
        self.last = seen;
        window
    }
    /// inode → path of the target's file mappings and open files (for the writeback
    /// records, which carry an inode number only). `fds` keeps the open files seen at
    /// earlier readings.
    pub fn inode_paths(&self, fds: &mut HashMap<u64, String>) -> HashMap<u64, String> {
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            for e in dir.flatten() {
                // The link's target as the target sees it; its inode through the fd itself.
                let (Ok(target), Ok(meta)) = (std::fs::read_link(e.path()), e.path().metadata())
                else {
                    continue;
                };
                if meta.is_file() {
                    let path = target.to_string_lossy();
                    let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
                    fds.insert(meta.ino(), path.to_string());
                }
            }
        }
        let mut out = fds.clone();
        out.extend(
            self.regions
                .iter()
                .filter(|r| r.inode != 0 && r.name.starts_with('/'))
                .map(|r| (r.inode, r.name.clone())),
        );
        out
    }
}

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// Entries per batch call.
const BATCH: usize = 4096;

/// Every entry of the page table, each removed as it is copied (so each page's figures are
/// this window's): one bpf() call per 4,096 pages instead of two per page. A program that
/// looked a page up just before its removal adds to the removed copy: that fault is lost
/// (a window of a few instructions on a page faulting at the very moment of the reading).
fn drain(fd: &OwnedFd) -> io::Result<Vec<(u64, PageFaults)>> {
    let mut out = Vec::new();
    let mut keys = vec![0u64; BATCH];
    let mut values = vec![PageFaults::default(); BATCH];
    // The hash table's batch token is the next bucket's index (a u32).
    let mut token: u32 = 0;
    let mut first = true;
    loop {
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with a batch attr whose buffers hold BATCH keys (8 bytes, the
        // map's key size) and values (PageFaults, its value size: a multiple of 8) and whose
        // tokens point at live u32s; the kernel writes only within them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(BATCH);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => {}
            // The end of the table (the last entries come with it).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // Refused before anything was removed (no batch ops on this kernel): the caller
            // walks the table instead.
            Some(e) if first && n == 0 => return Err(e),
            Some(e) => {
                debug!("faults: batch read stopped after {} pages: {e}", out.len());
                return Ok(out);
            }
        }
        token = next;
        first = false;
    }
}

fn parse_maps(text: &str) -> Vec<Region> {
    let mut out: Vec<Region> = text.lines().filter_map(parse_line).collect();
    out.sort_by_key(|r| r.start);
    out
}

/// `7f..-7f.. rw-s 00000000 08:01 1234   /data/msgs.0000000001`
fn parse_line(line: &str) -> Option<Region> {
    let mut it = line.split_whitespace();
    let (s, e) = it.next()?.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    if end <= start {
        return None;
    }
    let inode = it.nth(3)?.parse().ok()?;
    Some(Region {
        start,
        end,
        inode,
        name: maps_name(line),
    })
}

/// The name a maps or smaps header line gives its region: the path (without " (deleted)"),
/// `[heap]`, `[stack]`..., or `[anonymous]`, as `storage::maps` names them.
pub fn maps_name(line: &str) -> String {
    let mut it = line.splitn(6, ' ');
    for _ in 0..5 {
        it.next();
    }
    let name = it.next().map(str::trim).unwrap_or_default();
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    if name.is_empty() {
        crate::storage::maps::ANONYMOUS.to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_regions_with_inodes_and_names() {
        let text = "7f0000000000-7f0000800000 rw-s 00000000 08:01 1234                       /d/q/msgs.0000000001\n\
                    55d000000000-55d000021000 rw-p 00000000 00:00 0                          [heap]\n\
                    7f1000000000-7f1000001000 rw-p 00000000 00:00 0 \n";
        let r = parse_maps(text);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].name.as_str(), r[0].inode), ("[heap]", 0));
        assert_eq!(r[1].name, "/d/q/msgs.0000000001");
        assert_eq!(r[1].inode, 1234);
        assert_eq!(r[2].name, "[anonymous]");
    }
}
