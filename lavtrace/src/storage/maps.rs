//! The target's mappings as address ranges, each tied to the file it mapped when it was
//! mapped: seeded from /proc/PID/maps at attach, then kept current from mmap/munmap/mremap
//! records. LavinMQ closes a segment's fd right after mmap, so this is how munmap, mremap,
//! madvise and msync are attributed to their file.

use std::{collections::BTreeMap, fs, sync::Arc};

/// The name of memory that is not a file.
pub const ANONYMOUS: &str = "[anonymous]";

#[derive(Debug, Clone)]
struct Region {
    end: u64,
    file: Arc<str>,
}

#[derive(Default)]
pub struct Mappings {
    /// start → region, non-overlapping.
    regions: BTreeMap<u64, Region>,
    page: u64,
}

/// A piece of a removed range and the file it belonged to.
pub type Piece = (Arc<str>, u64);

impl Mappings {
    pub fn new() -> Mappings {
        // SAFETY: sysconf has no memory arguments.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Mappings {
            regions: BTreeMap::new(),
            page: if page > 0 { page as u64 } else { 4096 },
        }
    }

    /// The mappings the target has right now.
    pub fn seed(pid: u32) -> Mappings {
        Mappings::from_maps(&fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default())
    }

    /// The mappings a /proc/PID/maps text lists.
    fn from_maps(text: &str) -> Mappings {
        let mut m = Mappings::new();
        for line in text.lines() {
            if let Some((start, end, file)) = parse_maps_line(line) {
                // The kernel's lines never overlap; a text whose lines do must still give
                // disjoint regions (the unmapping arithmetic relies on it): the later wins.
                m.remove(start, end - start);
                m.regions.insert(start, Region { end, file });
            }
        }
        m
    }

    fn round(&self, len: u64) -> u64 {
        len.div_ceil(self.page).saturating_mul(self.page)
    }

    /// A new mapping replaces whatever was there (MAP_FIXED).
    pub fn insert(&mut self, start: u64, len: u64, file: Arc<str>) {
        let len = self.round(len);
        let end = start.saturating_add(len);
        // Nothing can be mapped at the very top of the address space: a region must not be
        // empty, whatever a corrupt record says.
        if end <= start {
            return;
        }
        self.remove(start, len);
        self.regions.insert(start, Region { end, file });
    }

    /// Unmaps `[start, start+len)`, splitting regions it cuts; returns what was removed, in
    /// address order.
    pub fn remove(&mut self, start: u64, len: u64) -> Vec<Piece> {
        let end = start.saturating_add(self.round(len));
        let mut pieces = Vec::new();
        let overlapping: Vec<u64> = self
            .regions
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping.into_iter().rev() {
            let Some(r) = self.regions.remove(&s) else {
                continue;
            };
            if s < start {
                self.regions.insert(
                    s,
                    Region {
                        end: start,
                        file: r.file.clone(),
                    },
                );
            }
            if r.end > end {
                self.regions.insert(
                    end,
                    Region {
                        end: r.end,
                        file: r.file.clone(),
                    },
                );
            }
            pieces.push((r.file, r.end.min(end) - s.max(start)));
        }
        pieces
    }

    /// mremap: the file moves with its pages.
    pub fn remap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) -> Option<Arc<str>> {
        let file = self.lookup(old);
        self.remove(old, old_len);
        if let Some(f) = &file {
            self.insert(new, new_len, f.clone());
        }
        file
    }

    /// The file mapped at `addr`.
    pub fn lookup(&self, addr: u64) -> Option<Arc<str>> {
        self.regions
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| r.end > addr)
            .map(|(_, r)| r.file.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.regions.len()
    }
}

/// `7f..-7f.. rw-s 00000000 08:01 1234   /data/msgs.0000000001`
fn parse_maps_line(line: &str) -> Option<(u64, u64, Arc<str>)> {
    let mut it = line.splitn(6, ' ');
    let (range, _perms, _off, _dev, _inode) =
        (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    // An empty or reversed range is no mapping (and would break the region arithmetic).
    if end <= start {
        return None;
    }
    let name = it.next().map(str::trim).unwrap_or_default();
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    let file: Arc<str> = if name.is_empty() {
        Arc::from(ANONYMOUS)
    } else {
        Arc::from(name)
    };
    Some((start, end, file))
}

/// Number of mappings the target has (what `vm.max_map_count` limits), or None if it is gone
/// (an exited process not yet reaped still has a maps file, an empty one).
pub fn live_count(pid: u32) -> Option<u64> {
    fs::read(format!("/proc/{pid}/maps"))
        .ok()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .filter(|&n| n > 0)
}

/// `vm.max_map_count`.
pub fn max_map_count() -> Option<u64> {
    fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn maps_lines_parse() {
        let (s, e, file) = parse_maps_line(
            "7f0000000000-7f0000800000 rw-s 00000000 08:01 1234                       /d/msgs.0000000001 (deleted)",
        )
        .unwrap();
        assert_eq!(
            (s, e, &*file),
            (0x7f0000000000, 0x7f0000800000, "/d/msgs.0000000001")
        );
        let (_, _, anon) =
            parse_maps_line("7f0000000000-7f0000001000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(&*anon, ANONYMOUS);
    }

    #[test]
    fn munmap_in_the_middle_splits_and_names_the_file() {
        let mut m = Mappings::new();
        m.insert(0x10000, 0x8000, f("/seg"));
        let pieces = m.remove(0x12000, 0x1000);
        assert_eq!(pieces, vec![(f("/seg"), 0x1000)]);
        assert_eq!(m.len(), 2);
        assert_eq!(m.lookup(0x11fff).as_deref(), Some("/seg"));
        assert_eq!(m.lookup(0x12000), None);
        assert_eq!(m.lookup(0x13000).as_deref(), Some("/seg"));
        assert_eq!(m.lookup(0x18000), None);
    }

    #[test]
    fn a_range_over_several_files_is_split_between_them() {
        let mut m = Mappings::new();
        m.insert(0x10000, 0x2000, f("/a"));
        m.insert(0x12000, 0x2000, f("/b"));
        let pieces = m.remove(0x11000, 0x2000);
        assert_eq!(pieces, vec![(f("/a"), 0x1000), (f("/b"), 0x1000)]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn map_fixed_replaces_and_mremap_moves_the_file() {
        let mut m = Mappings::new();
        m.insert(0x10000, 0x4000, f(ANONYMOUS));
        m.insert(0x11000, 0x1000, f("/seg"));
        assert_eq!(m.lookup(0x11000).as_deref(), Some("/seg"));
        assert_eq!(m.lookup(0x12000).as_deref(), Some(ANONYMOUS));
        assert_eq!(
            m.remap(0x11000, 0x1000, 0x90000, 0x3000).as_deref(),
            Some("/seg")
        );
        assert_eq!(m.lookup(0x11000), None);
        assert_eq!(m.lookup(0x92fff).as_deref(), Some("/seg"));
    }

    #[test]
    fn lengths_are_rounded_to_pages() {
        let mut m = Mappings::new();
        m.insert(0x10000, 1_597_832, f("/acks"));
        let pieces = m.remove(0x10000, 1_597_832);
        assert_eq!(
            pieces,
            vec![(f("/acks"), 1_597_832u64.div_ceil(4096) * 4096)]
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{config, proc_text};

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        Remap(u64, u64, u64, u64),
    }

    /// Addresses and lengths near each other (so that ranges meet) and at the ends of u64.
    fn addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..0x20_000,
            Just(u64::MAX),
            Just(u64::MAX - 4095),
            any::<u64>()
        ]
    }

    proptest! {
        #![proptest_config(config(300))]

        /// Any maps text seeds the model, any sequence of (possibly absurd) mapping calls
        /// keeps it consistent: regions never overlap, and removed bytes never exceed what
        /// was asked.
        #[test]
        fn any_maps_text_and_calls_keep_the_model_sane(
            lines in prop::collection::vec(
                prop_oneof![
                    proc_text(),
                    (addr(), addr(), proc_text())
                        .prop_map(|(a, b, f)| format!("{a:x}-{b:x} rw-s 00000000 08:01 1 {f}")),
                ],
                0..8,
            ),
            ops in prop::collection::vec(
                prop_oneof![
                    (addr(), addr()).prop_map(|(a, l)| Op::Insert(a, l)),
                    (addr(), addr()).prop_map(|(a, l)| Op::Remove(a, l)),
                    (addr(), addr(), addr(), addr()).prop_map(|(a, b, c, d)| Op::Remap(a, b, c, d)),
                ],
                0..16,
            ),
        ) {
            let mut m = Mappings::from_maps(&lines.join("\n"));
            for op in ops {
                match op {
                    Op::Insert(a, l) => m.insert(a, l, Arc::from("f")),
                    Op::Remove(a, l) => {
                        let removed: u64 = m.remove(a, l).iter().map(|(_, n)| n).sum();
                        prop_assert!(removed <= m.round(l).max(l));
                    }
                    Op::Remap(a, b, c, d) => {
                        let _ = m.remap(a, b, c, d);
                    }
                }
                let mut last_end = 0;
                for (&start, r) in &m.regions {
                    prop_assert!(start < r.end, "{start:x}-{:x}", r.end);
                    prop_assert!(start >= last_end);
                    last_end = r.end;
                }
                let _ = m.lookup(a_of(&m));
            }
        }
    }

    fn a_of(m: &Mappings) -> u64 {
        m.regions.keys().next().copied().unwrap_or(0)
    }
}
