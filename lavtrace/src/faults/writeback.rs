//! Dirty throttling (`balance_dirty_pages`), stable-page waits (`folio_wait_writeback`),
//! pages dirtied per file (`writeback_dirty_folio`) and the global dirty state: read and
//! differenced per window.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use lavtrace_common::faults::{
    BDI_NAME, DIRTIED_MAP, DIRTY_STATE_MAP, DirtyState, PAUSE_BUCKETS, STABLE_MAP, THROTTLE_MAP,
    Throttle,
};
use serde::Serialize;
use tracing::debug;

use super::FAMILY;
use crate::{
    family::Window,
    kernel::{Hook, attach_tracepoint},
};

/// (program, writeback events in order of preference, what the operator loses without it).
/// Before 5.16/5.17 the folio events were page events with the same fields
/// (`wait_on_page_writeback`, `writeback_dirty_page`).
const HOOKS: [(&str, &[&str], &str); 4] = [
    (
        "faults_throttle",
        &["balance_dirty_pages"],
        "no dirty-throttling figures",
    ),
    (
        "faults_stable_wait",
        &["folio_wait_writeback", "wait_on_page_writeback"],
        "no stable-page waits",
    ),
    (
        "faults_dirtied",
        &["writeback_dirty_folio", "writeback_dirty_page"],
        "no pages dirtied per file",
    ),
    (
        "faults_dirty_state",
        &["global_dirty_state"],
        "no global dirty state",
    ),
];

/// Dirty throttling of the target on one backing device, over a window.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ThrottleRow {
    /// The backing device (`8:0`, `btrfs-1`...), as the kernel names it.
    pub bdi: String,
    /// balance_dirty_pages records of the target's threads.
    pub count: u64,
    /// Of them, those that paused (pause > 0).
    pub paused: u64,
    pub pause_ms: u64,
    pub max_pause_ms: u64,
    /// Log2 buckets of the pause in ms: `"<2^i"` → count, non-empty only.
    pub histogram: BTreeMap<String, u64>,
}

/// Per file (inode), a count over a window.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InodeRow {
    /// The target's mapping of that inode, null when it has none (the records carry only
    /// the inode number, which may be on any device).
    pub path: Option<String>,
    pub ino: u64,
    pub count: u64,
}

/// The `faults.writeback` object.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WritebackSection {
    pub throttle: Vec<ThrottleRow>,
    /// folio_wait_writeback: a thread of the target waited for a page under writeback
    /// (stable pages) before it could write it. Null: the hook is not attached.
    pub stable_page_waits: Option<Vec<InodeRow>>,
    /// writeback_dirty_folio: folios the target dirtied, per file (a large folio is one:
    /// 6.18's ext4 dirtied 64 MiB written with write(2) as 64 of them).
    pub dirtied: Option<Vec<InodeRow>>,
    /// The last global dirty state sampled (pages), host-wide; null: none seen in the
    /// window (it is reported only while someone writes).
    pub global: Option<GlobalDirty>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct GlobalDirty {
    pub nr_dirty: u64,
    pub nr_writeback: u64,
    pub background_thresh: u64,
    pub dirty_thresh: u64,
    pub dirty_limit: u64,
}

/// (program, status) lines for `check`.
pub type Notes = Vec<(String, String)>;

pub struct Writeback {
    throttle: Option<BpfHashMap<MapData, [u8; BDI_NAME], Throttle>>,
    stable: Option<BpfHashMap<MapData, u64, u64>>,
    dirtied: Option<BpfHashMap<MapData, u64, u64>>,
    state: Option<Array<MapData, DirtyState>>,
    last_throttle: HashMap<[u8; BDI_NAME], Throttle>,
    last_stable: HashMap<u64, u64>,
    last_dirtied: HashMap<u64, u64>,
    last_state_seen: u64,
    whole_throttle: HashMap<[u8; BDI_NAME], Throttle>,
    whole_stable: HashMap<u64, u64>,
    whole_dirtied: HashMap<u64, u64>,
    whole_state: Option<GlobalDirty>,
}

impl Writeback {
    /// Attaches each writeback hook the kernel has; a missing one leaves its part null and
    /// a `check` line.
    pub fn attach(ebpf: &mut Ebpf) -> Result<(Writeback, Vec<Hook>, Notes)> {
        let mut hooks = Vec::new();
        let mut notes = Vec::new();
        let mut ok = [false; 4];
        for (i, (program, events, loss)) in HOOKS.iter().enumerate() {
            let mut why = Vec::new();
            for (k, event) in events.iter().enumerate() {
                match attach_tracepoint(ebpf, FAMILY, program, "writeback", event) {
                    Ok(h) => {
                        let fallback = match events.get(k + 1) {
                            Some(next) => {
                                format!("fallback: tracepoint writeback:{next} (older kernels)")
                            }
                            None => format!("fallback: none ({loss})"),
                        };
                        notes.push((h.program.to_string(), fallback));
                        hooks.push(h);
                        ok[i] = true;
                        break;
                    }
                    Err(e) => {
                        // Loaded by the failed attempt: the next event's attach loads it again.
                        super::unload_tracepoint(ebpf, program);
                        why.push(format!("writeback:{event}: {e:#}"));
                    }
                }
            }
            if !ok[i] {
                notes.push((
                    program.to_string(),
                    format!("unavailable: {}; no fallback ({loss})", why.join("; ")),
                ));
            }
        }
        let mut take = |name: &str, on: bool| -> Result<Option<aya::maps::Map>> {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))?;
            Ok(on.then_some(map))
        };
        let throttle = take(THROTTLE_MAP, ok[0])?
            .map(BpfHashMap::try_from)
            .transpose()?;
        let stable = take(STABLE_MAP, ok[1])?
            .map(BpfHashMap::try_from)
            .transpose()?;
        let dirtied = take(DIRTIED_MAP, ok[2])?
            .map(BpfHashMap::try_from)
            .transpose()?;
        let state = take(DIRTY_STATE_MAP, ok[3])?
            .map(Array::try_from)
            .transpose()?;
        Ok((
            Writeback {
                throttle,
                stable,
                dirtied,
                state,
                last_throttle: HashMap::new(),
                last_stable: HashMap::new(),
                last_dirtied: HashMap::new(),
                last_state_seen: 0,
                whole_throttle: HashMap::new(),
                whole_stable: HashMap::new(),
                whole_dirtied: HashMap::new(),
                whole_state: None,
            },
            hooks,
            notes,
        ))
    }

    pub fn section(&mut self, window: Window, paths: &HashMap<u64, String>) -> WritebackSection {
        match window {
            Window::Interval => self.interval(paths),
            Window::Whole => WritebackSection {
                throttle: throttle_rows(&self.whole_throttle),
                stable_page_waits: self
                    .stable
                    .as_ref()
                    .map(|_| inode_rows(&self.whole_stable, paths)),
                dirtied: self
                    .dirtied
                    .as_ref()
                    .map(|_| inode_rows(&self.whole_dirtied, paths)),
                global: self.whole_state,
            },
        }
    }

    fn interval(&mut self, paths: &HashMap<u64, String>) -> WritebackSection {
        let mut throttle_w = HashMap::new();
        if let Some(map) = &self.throttle {
            for entry in map.iter() {
                let Ok((bdi, cur)) = entry else { continue };
                let prev = self.last_throttle.get(&bdi).copied().unwrap_or_default();
                let w = throttle_since(&cur, &prev);
                self.last_throttle.insert(bdi, cur);
                if w.count > 0 {
                    let acc = self.whole_throttle.entry(bdi).or_default();
                    *acc = throttle_add(acc, &w);
                    throttle_w.insert(bdi, w);
                }
            }
        }
        let stable_w = self
            .stable
            .as_ref()
            .map(|m| counts_since(m, &mut self.last_stable, &mut self.whole_stable));
        let dirtied_w = self
            .dirtied
            .as_ref()
            .map(|m| counts_since(m, &mut self.last_dirtied, &mut self.whole_dirtied));
        let global = self
            .state
            .as_ref()
            .and_then(|a| a.get(&0, 0).ok())
            .and_then(|s| {
                let new = s.seen != self.last_state_seen && s.at_ns != 0;
                self.last_state_seen = s.seen;
                new.then_some(GlobalDirty {
                    nr_dirty: s.nr_dirty,
                    nr_writeback: s.nr_writeback,
                    background_thresh: s.background_thresh,
                    dirty_thresh: s.dirty_thresh,
                    dirty_limit: s.dirty_limit,
                })
            });
        if global.is_some() {
            self.whole_state = global;
        }
        WritebackSection {
            throttle: throttle_rows(&throttle_w),
            stable_page_waits: stable_w.map(|w| inode_rows(&w, paths)),
            dirtied: dirtied_w.map(|w| inode_rows(&w, paths)),
            global,
        }
    }
}

fn counts_since(
    map: &BpfHashMap<MapData, u64, u64>,
    last: &mut HashMap<u64, u64>,
    whole: &mut HashMap<u64, u64>,
) -> HashMap<u64, u64> {
    let mut w = HashMap::new();
    for entry in map.iter() {
        let Ok((ino, cur)) = entry else {
            debug!("faults: skipping an inode entry that changed while read");
            continue;
        };
        let prev = last.insert(ino, cur).unwrap_or(0);
        let d = cur.saturating_sub(prev);
        if d > 0 {
            w.insert(ino, d);
            *whole.entry(ino).or_default() += d;
        }
    }
    w
}

fn throttle_since(cur: &Throttle, prev: &Throttle) -> Throttle {
    let mut w = Throttle {
        count: cur.count.saturating_sub(prev.count),
        paused: cur.paused.saturating_sub(prev.paused),
        pause_ms: cur.pause_ms.saturating_sub(prev.pause_ms),
        max_pause_ms: 0,
        buckets: [0; PAUSE_BUCKETS],
    };
    for (i, b) in w.buckets.iter_mut().enumerate() {
        *b = cur.buckets[i].saturating_sub(prev.buckets[i]);
    }
    // A new maximum is exact; else the top of the window's highest bucket bounds it.
    w.max_pause_ms = if cur.max_pause_ms > prev.max_pause_ms {
        cur.max_pause_ms
    } else {
        w.buckets
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |i| ((1u64 << i) - 1).min(cur.max_pause_ms))
    };
    w
}

fn throttle_add(a: &Throttle, b: &Throttle) -> Throttle {
    let mut out = Throttle {
        count: a.count + b.count,
        paused: a.paused + b.paused,
        pause_ms: a.pause_ms + b.pause_ms,
        max_pause_ms: a.max_pause_ms.max(b.max_pause_ms),
        buckets: a.buckets,
    };
    for (o, x) in out.buckets.iter_mut().zip(b.buckets.iter()) {
        *o += x;
    }
    out
}

fn bdi_name(raw: &[u8; BDI_NAME]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(BDI_NAME);
    crate::printable::printable(&String::from_utf8_lossy(&raw[..end])).into_owned()
}

fn throttle_rows(m: &HashMap<[u8; BDI_NAME], Throttle>) -> Vec<ThrottleRow> {
    let mut rows: Vec<ThrottleRow> = m
        .iter()
        .filter(|(_, t)| t.count > 0)
        .map(|(bdi, t)| ThrottleRow {
            bdi: bdi_name(bdi),
            count: t.count,
            paused: t.paused,
            pause_ms: t.pause_ms,
            max_pause_ms: t.max_pause_ms,
            histogram: t
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| {
                    let label = if i == 0 {
                        "0".to_string()
                    } else {
                        format!("<{}", 1u64 << i)
                    };
                    (label, *n)
                })
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.bdi.cmp(&b.bdi)));
    rows
}

fn inode_rows(m: &HashMap<u64, u64>, paths: &HashMap<u64, String>) -> Vec<InodeRow> {
    let mut rows: Vec<InodeRow> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(ino, n)| InodeRow {
            path: paths.get(ino).cloned(),
            ino: *ino,
            count: *n,
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.ino.cmp(&b.ino)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_windows_subtract_and_bound_the_maximum() {
        let mut a = Throttle {
            count: 3,
            paused: 2,
            pause_ms: 30,
            max_pause_ms: 20,
            ..Throttle::default()
        };
        a.buckets[4] = 1;
        a.buckets[5] = 1;
        let mut b = a;
        b.count = 5;
        b.paused = 3;
        b.pause_ms = 34;
        b.buckets[3] += 1;
        let w = throttle_since(&b, &a);
        assert_eq!((w.count, w.paused, w.pause_ms), (2, 1, 4));
        assert_eq!(w.max_pause_ms, 7, "bounded by bucket 3's top, 7 ms");
        assert_eq!(throttle_add(&a, &w).buckets, b.buckets);
        assert_eq!(
            bdi_name(&[
                b'8', b':', b'0', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0
            ]),
            "8:0"
        );
    }
}
