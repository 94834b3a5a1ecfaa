//! The per-page fault table: read once per interval, differenced against the previous
//! reading, and resolved to the mapping each page is in now.

use std::collections::{BTreeMap, HashMap};

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
    pid: u32,
    /// Each page's figures at the previous reading.
    last: HashMap<u64, PageFaults>,
    /// The target's mappings at the last reading that found any (kept when the process is
    /// gone: its last pages are resolved against what it had).
    regions: Vec<Region>,
}

impl Pages {
    pub fn new(map: BpfHashMap<MapData, u64, PageFaults>, pid: u32) -> Pages {
        let mut p = Pages {
            map,
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

    fn lookup(&self, addr: u64) -> &str {
        let i = self.regions.partition_point(|r| r.start <= addr);
        match i.checked_sub(1).map(|i| &self.regions[i]) {
            Some(r) if addr < r.end => &r.name,
            _ => UNMAPPED,
        }
    }

    /// The faults since the previous reading, per file. A page read without change for a
    /// whole interval is removed from the kernel table (its figures are accounted for), so
    /// the table holds the pages of about two intervals. A fault between the lookup and that
    /// delete would be lost; the window is one map operation on a page idle for an interval.
    pub fn read(&mut self) -> BTreeMap<String, Counts> {
        self.refresh_regions();
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
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
                continue;
            }
            let c = out.entry(self.lookup(page).to_string()).or_default();
            c.faults += w.faults;
            c.writes += w.writes;
            c.major += w.major;
            c.time_ns += w.time_ns;
            c.pages += 1;
        }
        for page in idle {
            let _ = self.map.remove(&page);
            seen.remove(&page);
        }
        self.last = seen;
        out
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
