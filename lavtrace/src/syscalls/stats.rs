//! Arithmetic on the kernel's per-syscall counters: merging CPUs, interval differences and
//! percentiles from log2 buckets.

use lavtrace_common::syscalls::{LATENCY_BUCKETS, SyscallStats};

/// Sums one syscall's per-cpu slots (max of the maxima).
pub fn merge_cpus<'a>(slots: impl IntoIterator<Item = &'a SyscallStats>) -> SyscallStats {
    let mut out = SyscallStats::default();
    for s in slots {
        out.count += s.count;
        out.errors += s.errors;
        out.total_ns += s.total_ns;
        out.max_ns = out.max_ns.max(s.max_ns);
        for (o, b) in out.buckets.iter_mut().zip(s.buckets.iter()) {
            *o += b;
        }
    }
    out
}

/// What happened between two cumulative readings.
///
/// Counters subtract. The maximum cannot: when the cumulative maximum grew, the new maximum
/// happened in this window and is exact; otherwise the window's maximum is bounded by the top
/// of its highest non-empty bucket (and by the cumulative maximum).
pub fn window(cur: &SyscallStats, prev: &SyscallStats) -> SyscallStats {
    let mut out = SyscallStats {
        count: cur.count.saturating_sub(prev.count),
        errors: cur.errors.saturating_sub(prev.errors),
        total_ns: cur.total_ns.saturating_sub(prev.total_ns),
        max_ns: 0,
        buckets: [0; LATENCY_BUCKETS],
    };
    for (i, o) in out.buckets.iter_mut().enumerate() {
        *o = cur.buckets[i].saturating_sub(prev.buckets[i]);
    }
    out.max_ns = if cur.max_ns > prev.max_ns {
        cur.max_ns
    } else {
        out.buckets
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |i| bucket_upper(i).min(cur.max_ns))
    };
    out
}

/// Lowest duration of bucket `i`.
pub fn bucket_lower(i: usize) -> u64 {
    if i == 0 { 0 } else { 1u64 << i }
}

/// Highest duration of bucket `i` (the last bucket is open-ended: u64::MAX).
pub fn bucket_upper(i: usize) -> u64 {
    if i + 1 >= LATENCY_BUCKETS {
        u64::MAX
    } else {
        (1u64 << (i + 1)) - 1
    }
}

/// The `q` quantile (0..=1) of a log2 histogram, interpolated linearly inside its bucket and
/// never above the observed maximum. 0 for an empty histogram.
pub fn percentile(buckets: &[u64; LATENCY_BUCKETS], max_ns: u64, q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0;
    }
    // Rank of the wanted sample, 1-based, as in "the 99th of 100".
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if seen + n >= rank {
            let lo = bucket_lower(i);
            let hi = bucket_upper(i).min(max_ns.max(lo));
            let within = (rank - seen) as f64 / n as f64;
            return lo + ((hi - lo) as f64 * within) as u64;
        }
        seen += n;
    }
    max_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use lavtrace_common::syscalls::latency_bucket;

    fn hist(samples: &[u64]) -> SyscallStats {
        let mut s = SyscallStats::default();
        for &ns in samples {
            s.count += 1;
            s.total_ns += ns;
            s.max_ns = s.max_ns.max(ns);
            s.buckets[latency_bucket(ns)] += 1;
        }
        s
    }

    #[test]
    fn percentile_of_empty_is_zero() {
        assert_eq!(percentile(&[0; LATENCY_BUCKETS], 0, 0.5), 0);
    }

    #[test]
    fn percentile_stays_in_the_right_bucket() {
        // 99 fast calls (~300 ns) and one slow one (1 ms).
        let mut samples = vec![300; 99];
        samples.push(1_000_000);
        let s = hist(&samples);
        let p50 = percentile(&s.buckets, s.max_ns, 0.5);
        assert!((256..512).contains(&p50), "p50 {p50}");
        let p99 = percentile(&s.buckets, s.max_ns, 0.99);
        assert!((256..512).contains(&p99), "p99 {p99}");
        let p100 = percentile(&s.buckets, s.max_ns, 1.0);
        assert_eq!(p100, 1_000_000, "the top sample is clamped to the max");
    }

    #[test]
    fn percentile_never_exceeds_max() {
        let s = hist(&[1000, 1000, 1000]);
        assert!(percentile(&s.buckets, s.max_ns, 0.99) <= 1000);
    }

    #[test]
    fn merge_sums_counters_and_keeps_the_largest_max() {
        let a = hist(&[10, 20]);
        let b = hist(&[5000]);
        let m = merge_cpus([&a, &b]);
        assert_eq!(m.count, 3);
        assert_eq!(m.total_ns, 5030);
        assert_eq!(m.max_ns, 5000);
        assert_eq!(m.buckets.iter().sum::<u64>(), 3);
    }

    #[test]
    fn window_subtracts_and_bounds_the_max() {
        let prev = hist(&[100, 5_000_000]);
        let cur = merge_cpus([&prev, &hist(&[100, 200])]);
        let w = window(&cur, &prev);
        assert_eq!(w.count, 2);
        assert_eq!(w.total_ns, 300);
        // The cumulative max (5 ms) is older than this window: bounded by the 128..255 bucket.
        assert_eq!(w.max_ns, 255);

        let grew = merge_cpus([&cur, &hist(&[9_000_000])]);
        assert_eq!(window(&grew, &cur).max_ns, 9_000_000, "a new max is exact");
    }
}
