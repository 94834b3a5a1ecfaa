//! Human-readable numbers for text output.

/// A duration in ns as a short string with 3 significant digits: `812ns`, `4.21µs`, `12.3ms`, `1.05s`.
pub fn ns(ns: u64) -> String {
    let v = ns as f64;
    let (value, unit) = if ns < 1_000 {
        return format!("{ns}ns");
    } else if ns < 1_000_000 {
        (v / 1e3, "µs")
    } else if ns < 1_000_000_000 {
        (v / 1e6, "ms")
    } else {
        (v / 1e9, "s")
    };
    if value < 10.0 {
        format!("{value:.2}{unit}")
    } else if value < 100.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(super::ns(812), "812ns");
        assert_eq!(super::ns(4_210), "4.21µs");
        assert_eq!(super::ns(12_340_000), "12.3ms");
        assert_eq!(super::ns(1_050_000_000), "1.05s");
        assert_eq!(super::ns(250_000), "250µs");
    }
}
