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

/// A byte count with binary prefixes: `512B`, `8.0MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
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

    #[test]
    fn bytes_use_binary_prefixes() {
        assert_eq!(super::bytes(512), "512B");
        assert_eq!(super::bytes(8 << 20), "8.0MiB");
        assert_eq!(super::bytes(1_597_832), "1.5MiB");
        assert_eq!(super::bytes(1023), "1023B");
    }
}
