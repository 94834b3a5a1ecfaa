//! What waited on the disk in a window, side by side: the durability calls (fsync family),
//! the publisher confirms (amqp: LavinMQ acks a confirm batch after its syncfs), and the
//! kernel's writeback throttling (faults). Each family reports its own figures; this puts the
//! three next to each other so an operator sees at a glance whether confirms wait for the
//! disk, and whether the disk waits for writeback. Built from the sections alone (no family
//! knows another).

use std::fmt::Write as _;

use serde::Serialize;

use crate::{amqp::AmqpSection, faults::FaultsSection, fsync, output::Sections, units};

/// The window's figures (JSON `disk_waits`); a part is None when its family is not loaded or
/// saw nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskWaits {
    pub syncfs: Option<Calls>,
    /// fsync and fdatasync together.
    pub fsync: Option<Calls>,
    pub confirms: Option<Calls>,
    pub writeback: Option<Throttling>,
}

/// Calls and their latency. `p99_ns` and `max_ns` are the worst of the rows they come from
/// (a row per file for the durability calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Calls {
    pub count: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Throttling {
    /// balance_dirty_pages records of the target's threads, and their pauses.
    pub throttled: u64,
    pub throttle_pause_ms: u64,
    /// Waits for a page under writeback.
    pub stable_page_waits: u64,
}

impl Calls {
    fn add(acc: &mut Option<Calls>, count: u64, p99_ns: u64, max_ns: u64) {
        if count == 0 {
            return;
        }
        let c = acc.get_or_insert_default();
        c.count += count;
        c.p99_ns = c.p99_ns.max(p99_ns);
        c.max_ns = c.max_ns.max(max_ns);
    }
}

impl DiskWaits {
    /// None unless at least two of the three families have something to set side by side.
    pub fn of(s: &Sections) -> Option<DiskWaits> {
        let mut w = DiskWaits::default();
        if let Some(f) = s.get::<fsync::Section>() {
            for r in &f.0 {
                let acc = match r.syscall {
                    "syncfs" => &mut w.syncfs,
                    "fsync" | "fdatasync" => &mut w.fsync,
                    _ => continue,
                };
                Calls::add(acc, r.count, r.p99_ns, r.max_ns);
            }
        }
        if let Some(a) = s.get::<AmqpSection>() {
            let l = &a.totals.confirm_latency;
            Calls::add(&mut w.confirms, l.count, l.p99_ns, l.max_ns);
        }
        if let Some(f) = s.get::<FaultsSection>() {
            let wb = &f.writeback;
            w.writeback = Some(Throttling {
                throttled: wb.throttle.iter().map(|t| t.count).sum(),
                throttle_pause_ms: wb.throttle.iter().map(|t| t.pause_ms).sum(),
                stable_page_waits: wb.stable_page_waits.iter().flatten().map(|r| r.count).sum(),
            });
        }
        let disk = w.syncfs.is_some() || w.fsync.is_some();
        (disk && (w.confirms.is_some() || w.writeback.is_some())).then_some(w)
    }

    /// One line: `WAITS ON DISK  syncfs 13 p99 3.1ms max 4.2ms · confirms 200 p99 3.4ms ...`.
    pub fn write_text(&self, out: &mut String) {
        let calls = |name: &str, c: &Calls| {
            format!(
                "{name} {} p99 {} max {}",
                c.count,
                units::ns(c.p99_ns),
                units::ns(c.max_ns)
            )
        };
        let mut parts = Vec::new();
        if let Some(c) = &self.syncfs {
            parts.push(calls("syncfs", c));
        }
        if let Some(c) = &self.fsync {
            parts.push(calls("fsync", c));
        }
        if let Some(c) = &self.confirms {
            parts.push(calls("publish→confirm", c));
        }
        if let Some(t) = &self.writeback {
            parts.push(format!(
                "writeback: {} throttled ({} ms paused), {} stable-page waits",
                t.throttled, t.throttle_pause_ms, t.stable_page_waits
            ));
        }
        let _ = writeln!(out, "WAITS ON DISK  {}", parts.join(" · "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        amqp::report,
        fsync::{Bucket, FsyncRow},
        storage::lavinmq::Kind,
    };

    fn syncfs(count: u64, p99_ns: u64) -> FsyncRow {
        FsyncRow {
            syscall: "syncfs",
            path: "/var/lib/lavinmq".into(),
            kind: Kind::DataDir,
            mount: None,
            flags: None,
            count,
            errors: 0,
            bytes: 0,
            total_ns: count * p99_ns,
            avg_ns: p99_ns,
            p50_ns: p99_ns,
            p90_ns: p99_ns,
            p99_ns,
            p999_ns: p99_ns,
            max_ns: p99_ns,
            histogram: Vec::<Bucket>::new(),
            tid: None,
            thread: None,
            queue: None,
            display: "vhost /".into(),
        }
    }

    #[test]
    fn confirms_are_set_next_to_the_syncfs_of_the_same_window() {
        let mut c = lavtrace_common::amqp::Counters {
            published: 5,
            confirmed: 5,
            ..Default::default()
        };
        c.confirm_latency[lavtrace_common::syscalls::latency_bucket(3_000_000)] = 5;
        let id = report::Identity {
            local: None,
            remote: None,
            seeded: false,
            tls: false,
            vhost: Some("/"),
            close: None,
            channels_opened: 1,
            channels_closed: 0,
            blocked: 0,
            unblocked: 0,
            blocked_ns: 0,
        };
        let amqp = report::section(
            "kprobe",
            None,
            &[5672],
            vec![report::conn_row(9, id, &c, &c, true)],
            report::KernelDiag::default(),
            report::Tls {
                not_parsed: 0,
                ..report::Tls::default()
            },
        );
        let s = Sections::default()
            .with(fsync::Section(vec![
                syncfs(13, 2_000_000),
                syncfs(2, 5_000_000),
            ]))
            .with(amqp);
        let w = DiskWaits::of(&s).unwrap();
        assert_eq!(
            w.syncfs,
            Some(Calls {
                count: 15,
                p99_ns: 5_000_000,
                max_ns: 5_000_000
            })
        );
        assert_eq!(w.confirms.map(|c| c.count), Some(5));
        assert!(w.confirms.unwrap().p99_ns >= 3_000_000);
        let mut text = String::new();
        w.write_text(&mut text);
        assert!(text.starts_with("WAITS ON DISK  syncfs 15 p99"), "{text}");
        assert!(text.contains("publish→confirm 5 p99"), "{text}");
        // The disk alone has nothing to be set beside.
        let alone = Sections::default().with(fsync::Section(vec![syncfs(1, 1)]));
        assert_eq!(DiskWaits::of(&alone), None);
    }
}
