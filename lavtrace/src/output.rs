//! The three kinds of record lavtrace writes, as NDJSON or as text. JSON schema: README.md.

use crate::printable::printable;
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write as _},
    time::Duration,
};

use serde::{Serialize, ser::SerializeMap as _};

use crate::{
    cli::{Format, ReportArgs},
    family::{Section, TextOptions},
    kernel::{Bystanders, Hook},
    target::{Target, TargetExit},
};

/// Every loaded family's section of one window, in registry order; a family not loaded has
/// no section and so no keys in the JSON.
#[derive(Debug, Default)]
pub struct Sections {
    parts: Vec<Box<dyn Section>>,
    /// Events the kernel side could not record or deliver, per family. Never silent.
    pub lost_events: BTreeMap<&'static str, u64>,
    /// What tracing cost in this window.
    pub overhead: Option<crate::overhead::Overhead>,
    /// The target's limits at the end of this window (fds, mappings, disk).
    pub limits: Option<crate::lavinmq::limits::Report>,
}

impl Sections {
    pub fn push(&mut self, section: Box<dyn Section>) {
        self.parts.push(section);
    }

    /// `push`, for building sections by hand (tests).
    #[cfg(test)]
    pub fn with(mut self, section: impl Section) -> Sections {
        self.parts.push(Box::new(section));
        self
    }

    /// The section of type `T` (the family that makes it), if that family is loaded.
    pub fn get<T: Section>(&self) -> Option<&T> {
        self.parts.iter().find_map(|p| p.as_any().downcast_ref())
    }

    /// The live-view tables of the families that offer one (`Section::pane`).
    pub fn table_panes(&self) -> impl Iterator<Item = crate::family::TablePane> + '_ {
        self.parts.iter().filter_map(|p| p.pane())
    }

    fn write_text(&self, out: &mut String, args: &ReportArgs, summary: bool) {
        let text = TextOptions {
            sort: args.sort.into(),
            top: args.top,
            summary,
        };
        for part in &self.parts {
            part.write_text(out, &text);
        }
        if let Some(w) = crate::waits::DiskWaits::of(self) {
            w.write_text(out);
        }
        if let Some(l) = &self.limits {
            let connections = self
                .get::<crate::tcp::TcpSection>()
                .map(|t| t.connections.iter().filter(|c| c.open).count());
            out.push_str(&l.text(connections));
        }
        let lost: Vec<String> = self
            .lost_events
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(family, n)| format!("{family} {n}"))
            .collect();
        if !lost.is_empty() {
            let _ = writeln!(out, "LOST EVENTS: {}", lost.join(", "));
        }
        if let Some(o) = &self.overhead {
            let _ = writeln!(out, "{}", crate::overhead::text(o));
        }
    }
}

/// The families' keys in order, then `lost_events` and `overhead`: flattened into a record.
impl Serialize for Sections {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for part in &self.parts {
            for (key, value) in part.json().map_err(serde::ser::Error::custom)? {
                map.serialize_entry(key, &value)?;
            }
        }
        if let Some(w) = crate::waits::DiskWaits::of(self) {
            map.serialize_entry("disk_waits", &w)?;
        }
        if let Some(l) = &self.limits {
            map.serialize_entry("limits", l)?;
        }
        map.serialize_entry("lost_events", &self.lost_events)?;
        if let Some(o) = &self.overhead {
            map.serialize_entry("overhead", o)?;
        }
        map.end()
    }
}

/// Why tracing stopped.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum End {
    Duration,
    Signal {
        signal: &'static str,
    },
    /// `q` in the live view.
    Quit,
    TargetExited(TargetExit),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record<'a> {
    Attached {
        target: &'a Target,
        probes: Vec<&'static str>,
        hooks: &'a [Hook],
        /// What processes other than the target pay while these hooks are attached.
        bystanders: Bystanders,
        interval_ms: u128,
    },
    Interval {
        seq: u64,
        /// Time since attach at the end of this window.
        elapsed_ms: u128,
        /// Length of this window.
        window_ms: u128,
        #[serde(flatten)]
        sections: &'a Sections,
    },
    /// `--follow`: the target exited and a new process of its name was found.
    Restart {
        previous_pid: u32,
        pid: u32,
        comm: &'a str,
        gap_ms: u128,
    },
    Summary {
        /// The process instance this summary covers.
        pid: u32,
        duration_ms: u128,
        intervals: u64,
        end: &'a End,
        #[serde(flatten)]
        sections: &'a Sections,
    },
}

pub struct Output {
    format: Format,
    args: ReportArgs,
    /// Appended to the text header (the flight recorder's "keeping 10m, ...").
    pub note: Option<String>,
}

/// An interval record's JSON line, exactly as `--format json` prints it (the flight recorder).
pub fn interval_json(
    seq: u64,
    elapsed: Duration,
    window: Duration,
    sections: &Sections,
) -> serde_json::Result<String> {
    serde_json::to_string(&Record::Interval {
        seq,
        elapsed_ms: elapsed.as_millis(),
        window_ms: window.as_millis(),
        sections,
    })
}

impl Output {
    pub fn new(args: &ReportArgs) -> Output {
        Output {
            format: args.format,
            args: args.clone(),
            note: None,
        }
    }

    pub fn attached(
        &self,
        target: &Target,
        probes: Vec<&'static str>,
        hooks: &[Hook],
    ) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::Attached {
                target,
                probes,
                hooks,
                bystanders: Bystanders::of(hooks),
                interval_ms: self.args.interval.as_millis(),
            }),
            Format::Text => {
                let mut s = format!(
                    "lavtrace: tracing pid {} ({}, {} threads) with {}; interval {}",
                    target.pid,
                    printable(&target.comm),
                    target.threads,
                    probes.join(","),
                    humantime::format_duration(self.args.interval)
                );
                if let Some(d) = self.args.duration {
                    let _ = write!(s, ", for {}", humantime::format_duration(d));
                }
                if let Some(n) = Bystanders::of(hooks).header_note() {
                    let _ = write!(s, "; {n}");
                }
                if let Some(n) = &self.note {
                    let _ = write!(s, "; {n}");
                }
                s.push_str(". Ctrl-C for the summary.\n");
                self.text(&s)
            }
        }
    }

    pub fn interval(
        &self,
        seq: u64,
        elapsed: Duration,
        window: Duration,
        sections: &Sections,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::Interval {
                seq,
                elapsed_ms: elapsed.as_millis(),
                window_ms: window.as_millis(),
                sections,
            }),
            Format::Text => {
                let mut s = format!(
                    "\n── interval {seq} · t+{:.1}s · {:.2}s{} ──\n",
                    elapsed.as_secs_f64(),
                    window.as_secs_f64(),
                    self.note
                        .as_deref()
                        .map(|n| format!(" · {n}"))
                        .unwrap_or_default()
                );
                sections.write_text(&mut s, &self.args, false);
                self.text(&s)
            }
        }
    }

    pub fn restart(&self, previous: &Target, next: &Target, gap: Duration) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::Restart {
                previous_pid: previous.pid,
                pid: next.pid,
                comm: &next.comm,
                gap_ms: gap.as_millis(),
            }),
            Format::Text => self.text(&format!(
                "\n▶ {} pid {} exited; restarted as pid {} after {:.1}s (totals start again)\n",
                printable(&next.comm),
                previous.pid,
                next.pid,
                gap.as_secs_f64()
            )),
        }
    }

    pub fn summary(
        &self,
        pid: u32,
        duration: Duration,
        intervals: u64,
        end: &End,
        sections: &Sections,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::Summary {
                pid,
                duration_ms: duration.as_millis(),
                intervals,
                end,
                sections,
            }),
            Format::Text => {
                let why = match end {
                    End::Duration => "duration reached".to_string(),
                    End::Signal { signal } => format!("{signal} received"),
                    End::Quit => "quit from the live view".to_string(),
                    End::TargetExited(exit) => match (exit.code, exit.signal) {
                        (Some(code), _) => format!("target exited with status {code}"),
                        (_, Some(sig)) => format!("target killed by signal {sig}"),
                        _ => "target exited".to_string(),
                    },
                };
                let mut s = format!("\n══ summary · {:.1}s · {why} ══\n", duration.as_secs_f64());
                sections.write_text(&mut s, &self.args, true);
                self.text(&s)
            }
        }
    }

    fn json<T: Serialize>(&self, record: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut stdout = io::stdout().lock();
        stdout.write_all(&line)?;
        stdout.flush()
    }

    fn text(&self, s: &str) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        stdout.write_all(s.as_bytes())?;
        stdout.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsync;

    #[test]
    fn sections_flatten_into_the_record_in_registry_order() {
        let mut sections = Sections::default()
            .with(crate::syscalls::Section::default())
            .with(fsync::Section(Vec::new()));
        sections.lost_events.insert("syscalls", 3);
        sections.lost_events.insert("fsync", 0);
        let json = serde_json::to_string(&Record::Interval {
            seq: 1,
            elapsed_ms: 1000,
            window_ms: 1000,
            sections: &sections,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"interval","seq":1,"elapsed_ms":1000,"window_ms":1000,"syscalls":[],"fsync":[],"lost_events":{"fsync":0,"syscalls":3}}"#
        );
        // --per-thread adds the syscalls family's second key right after its first.
        let sections = Sections::default().with(crate::syscalls::Section {
            rows: Vec::new(),
            threads: Some(Vec::new()),
            ..Default::default()
        });
        let json = serde_json::to_string(&sections).unwrap();
        assert_eq!(json, r#"{"syscalls":[],"threads":[],"lost_events":{}}"#);
    }
}
