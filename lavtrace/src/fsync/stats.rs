//! Latency of one (syscall, file, flags) over one window: exact count, errors and maximum,
//! percentiles from an HDR histogram of every call's duration, and log2 buckets for the
//! picture.

use hdrhistogram::Histogram;
use lavtrace_common::syscalls::{LATENCY_BUCKETS, latency_bucket};

/// Significant digits kept by the HDR histogram: percentiles within 0.1 %.
const SIGFIG: u8 = 3;

#[derive(Clone)]
pub struct Latency {
    pub count: u64,
    pub errors: u64,
    /// Bytes of the ranges asked for (msync, sync_file_range).
    pub bytes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub hist: Histogram<u64>,
    pub log2: [u64; LATENCY_BUCKETS],
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            count: 0,
            errors: 0,
            bytes: 0,
            total_ns: 0,
            max_ns: 0,
            // An auto-resizing histogram: never refuses a value.
            hist: Histogram::new(SIGFIG).expect("3 significant digits is a valid histogram"),
            log2: [0; LATENCY_BUCKETS],
        }
    }
}

impl Latency {
    pub fn record(&mut self, ns: u64, error: bool, bytes: u64) {
        self.count += 1;
        self.errors += u64::from(error);
        // A corrupt record's figures are any u64: sums saturate rather than wrap or panic.
        self.bytes = self.bytes.saturating_add(bytes);
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        // Auto-resizing: recording cannot fail short of running out of memory.
        let _ = self.hist.record(ns);
        self.log2[latency_bucket(ns)] += 1;
    }

    /// Adds `other`'s calls (a closed interval into the run's total).
    pub fn merge(&mut self, other: &Latency) {
        self.count += other.count;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        // Auto-resizing: adding cannot fail short of running out of memory.
        let _ = self.hist.add(&other.hist);
        for (o, n) in self.log2.iter_mut().zip(other.log2.iter()) {
            *o += n;
        }
    }

    /// The `q` quantile, never above the exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        self.hist.value_at_quantile(q).min(self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merged_windows_are_the_run() {
        let (mut a, mut b, mut both) = (Latency::default(), Latency::default(), Latency::default());
        for (ns, err) in [(10, false), (2_000, true), (7, false)] {
            a.record(ns, err, 4);
            both.record(ns, err, 4);
        }
        for ns in [90_000, 3] {
            b.record(ns, false, 0);
            both.record(ns, false, 0);
        }
        a.merge(&b);
        assert_eq!(
            (a.count, a.errors, a.bytes, a.total_ns, a.max_ns, a.log2),
            (
                both.count,
                both.errors,
                both.bytes,
                both.total_ns,
                both.max_ns,
                both.log2
            )
        );
        assert_eq!(a.quantile(0.5), both.quantile(0.5));
        assert_eq!(a.quantile(0.99), both.quantile(0.99));
    }

    use super::*;

    #[test]
    fn percentiles_are_exact_to_three_digits() {
        let mut l = Latency::default();
        for ns in 1..=1000u64 {
            l.record(ns * 1000, false, 0);
        }
        l.record(5_000_000, true, 4096);
        assert_eq!(l.count, 1001);
        assert_eq!(l.errors, 1);
        assert_eq!(l.bytes, 4096);
        assert_eq!(l.max_ns, 5_000_000);
        let p50 = l.quantile(0.5);
        assert!((500_000..=501_500).contains(&p50), "p50 {p50}");
        let p999 = l.quantile(0.999);
        assert!((999_000..=1_001_000).contains(&p999), "p99.9 {p999}");
        assert_eq!(l.quantile(1.0), 5_000_000);
        assert_eq!(l.log2.iter().sum::<u64>(), 1001);
    }
}
