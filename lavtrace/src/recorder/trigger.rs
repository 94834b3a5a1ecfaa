//! `--dump-on SPEC`: what makes the flight recorder dump, read from an interval's sections
//! through the same `Sections` API output and metrics use.

use std::time::Duration;

use crate::{fsync, output::Sections, syscalls, tcp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// `NAME>DURATION`: a call's max in the interval over the limit (durability rows of the
    /// fsync family, and the syscalls table).
    Slower { call: String, over: Duration },
    /// `lost`: any lost events in the interval.
    Lost,
    /// `resets>N`: more than N connection resets (sent and received) in the tcp section.
    Resets(u64),
}

/// The `--dump-on` value parser.
pub fn parse(spec: &str) -> Result<Trigger, String> {
    if spec == "lost" {
        return Ok(Trigger::Lost);
    }
    let Some((name, limit)) = spec.split_once('>') else {
        return Err("expected NAME>LIMIT (syncfs>200ms, read>1s, resets>10) or lost".into());
    };
    if name == "resets" {
        let n = limit
            .parse()
            .map_err(|e| format!("resets>N: N must be a count: {e}"))?;
        return Ok(Trigger::Resets(n));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{name:?} is not a syscall name"));
    }
    let over =
        humantime::parse_duration(limit).map_err(|e| format!("{e} (examples: 200ms, 1s)"))?;
    Ok(Trigger::Slower {
        call: name.to_string(),
        over,
    })
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Slower { call, over } => {
                write!(f, "{call}>{}", humantime::format_duration(*over))
            }
            Trigger::Lost => f.write_str("lost"),
            Trigger::Resets(n) => write!(f, "resets>{n}"),
        }
    }
}

impl Trigger {
    /// Why it fires on this interval, or None.
    pub fn fires(&self, s: &Sections) -> Option<String> {
        match self {
            Trigger::Slower { call, over } => {
                let limit = u64::try_from(over.as_nanos()).unwrap_or(u64::MAX);
                let durability = s
                    .get::<fsync::Section>()
                    .into_iter()
                    .flat_map(|f| &f.0)
                    .filter(|r| r.syscall == call.as_str())
                    .map(|r| r.max_ns);
                let table = s
                    .get::<syscalls::Section>()
                    .into_iter()
                    .flat_map(|t| &t.rows)
                    .filter(|r| r.name == *call)
                    .map(|r| r.max_ns);
                let max = durability.chain(table).max()?;
                (max > limit).then(|| {
                    format!(
                        "{call} took {} (over {})",
                        crate::units::ns(max),
                        humantime::format_duration(*over)
                    )
                })
            }
            Trigger::Lost => {
                let lost: u64 = s.lost_events.values().sum();
                (lost > 0).then(|| format!("{lost} events lost"))
            }
            Trigger::Resets(n) => {
                let resets: u64 = s
                    .get::<tcp::TcpSection>()
                    .into_iter()
                    .flat_map(|t| &t.connections)
                    .map(|c| c.resets_sent + c.resets_received)
                    .sum();
                (resets > *n).then(|| format!("{resets} connection resets (over {n})"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for spec in ["syncfs>200ms", "read>1s", "lost", "resets>10"] {
            assert_eq!(parse(spec).unwrap().to_string(), spec);
        }
        assert_eq!(
            parse("fsync>20ms"),
            Ok(Trigger::Slower {
                call: "fsync".into(),
                over: Duration::from_millis(20)
            })
        );
        for bad in ["syncfs", "syncfs>soon", "resets>many", ">1s", "a b>1s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
