//! Draining the kernel's ring buffers: an async task per ring, decoding each record into its
//! wire type without ever panicking (a record of the wrong size is counted and skipped), and
//! reading the kernel's per-family lost-event counters.

use std::{
    mem::size_of,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{MapData, PerCpuArray, RingBuf},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
};

/// Decodes one record as `T`, if it has exactly `T`'s size.
pub fn decode<T: Pod>(bytes: &[u8]) -> Option<T> {
    (bytes.len() == size_of::<T>())
        // SAFETY: T is Pod (any bit pattern is valid) and the length matches.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Counters kept by a drain task, readable while it runs.
#[derive(Debug, Default)]
pub struct DrainStats {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
}

/// A running drain task.
pub struct Drain {
    pub stats: Arc<DrainStats>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Drain {
    /// Returns once every record already in the ring has gone to the sink (the end of a run).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Takes ring `map_name` out of `ebpf` and feeds every decoded `T` to `sink` from a task on
/// the current tokio runtime.
pub fn spawn_drain<T, F>(ebpf: &mut Ebpf, map_name: &str, mut sink: F) -> Result<Drain>
where
    T: Pod + Send + 'static,
    F: FnMut(T) + Send + 'static,
{
    spawn_drain_raw(ebpf, map_name, move |bytes| match decode::<T>(bytes) {
        Some(event) => {
            sink(event);
            true
        }
        None => false,
    })
}

/// Like `spawn_drain`, for rings that carry several record types: `sink` gets each record's
/// bytes and returns whether it could decode them (false: counted as malformed).
pub fn spawn_drain_raw<F>(ebpf: &mut Ebpf, map_name: &str, mut sink: F) -> Result<Drain>
where
    F: FnMut(&[u8]) -> bool + Send + 'static,
{
    let map = ebpf
        .take_map(map_name)
        .with_context(|| format!("ring {map_name} missing from the eBPF object"))?;
    let ring =
        RingBuf::try_from(map).with_context(|| format!("{map_name} is not a ring buffer"))?;
    // SAFETY: the ring owns its fd for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .with_context(|| format!("polling ring {map_name}"))?;
    let stats = Arc::new(DrainStats::default());
    let task_stats = stats.clone();
    let (flush, mut flush_rx) = mpsc::channel::<oneshot::Sender<()>>(4);
    tokio::spawn(async move {
        let mut drain_all = |ring: &mut RingBuf<MapData>| {
            while let Some(item) = ring.next() {
                if sink(&item) {
                    task_stats.received.fetch_add(1, Ordering::Relaxed);
                } else {
                    task_stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        loop {
            tokio::select! {
                guard = fd.readable_mut() => {
                    let Ok(mut guard) = guard else { return };
                    drain_all(guard.get_inner_mut());
                    guard.clear_ready();
                    // The kernel wakes the reader only for a record committed when the reader
                    // had caught up. One committed between the drain above and clear_ready
                    // had its wakeup cleared, and no later record would wake us: drain again.
                    drain_all(guard.get_inner_mut());
                }
                ack = flush_rx.recv() => {
                    let Some(ack) = ack else { return };
                    drain_all(fd.get_mut());
                    let _ = ack.send(());
                }
            }
        }
    });
    Ok(Drain { stats, flush })
}

/// The kernel's lost-event counters (`RING_LOST_EVENTS`), one per ring-buffer family.
pub struct LostCounters(PerCpuArray<MapData, u64>);

impl LostCounters {
    /// Takes the counter map out of `ebpf`; the session owns it and hands it to the families.
    pub fn take(ebpf: &mut Ebpf) -> Result<LostCounters> {
        let name = lavtrace_common::ring::LOST_MAP;
        let map = ebpf
            .take_map(name)
            .with_context(|| format!("map {name} missing"))?;
        Ok(LostCounters(PerCpuArray::try_from(map)?))
    }

    /// Events lost so far by `family` (an index from `lavtrace_common::ring::lost`).
    pub fn get(&self, family: u32) -> u64 {
        self.0.get(&family, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_the_size() {
        assert_eq!(decode::<u64>(&7u64.to_ne_bytes()), Some(7));
        assert_eq!(decode::<u64>(&[1, 2, 3]), None);
        assert_eq!(decode::<u64>(&[0; 16]), None);
    }
}
