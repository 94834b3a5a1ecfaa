//! The panes of the live view: which exist for the traced families, where they go, and their
//! rows. Everything here is pure (data in, widgets or strings out) so it is tested with
//! ratatui's TestBackend.

use crate::printable::printable;
use std::{cmp::Reverse, collections::HashMap, time::Duration};

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    widgets::{Block, Gauge, Row, Table},
};

use crate::{
    amqp::{AmqpSection, report::ConnRow as AmqpRow},
    family::{SortKey, TablePane},
    faults::{FaultsSection, FileRow},
    fsync::{Bucket, FsyncRow},
    mmap::MmapSection,
    syscalls::{SyscallRow, threads::ThreadRow},
    tcp::{ConnRow, TcpSection},
    units,
};

/// The panes, in display and focus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pane {
    Syscalls,
    /// `--per-thread`: the syscalls family per thread.
    Threads,
    Durability,
    Mappings,
    /// The faults family: page faults per mapped file, dirty throttling.
    Faults,
    Connections,
    /// A family's own table (`Section::pane`), by its pane name; after the others.
    Table(&'static str),
    /// The amqp family: per AMQP connection.
    Amqp,
}

impl Pane {
    pub const ALL: [Pane; 7] = [
        Pane::Syscalls,
        Pane::Threads,
        Pane::Durability,
        Pane::Mappings,
        Pane::Faults,
        Pane::Connections,
        Pane::Amqp,
    ];

    /// The pane showing probe family `family` (none for `floor`).
    fn of_family(family: &str) -> Option<Pane> {
        Some(match family {
            "syscalls" => Pane::Syscalls,
            "fsync" => Pane::Durability,
            "mmap" => Pane::Mappings,
            "faults" => Pane::Faults,
            "tcp" => Pane::Connections,
            "amqp" => Pane::Amqp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Pane::Syscalls => "syscalls",
            Pane::Threads => "threads",
            Pane::Durability => "durability",
            Pane::Mappings => "mappings",
            Pane::Faults => "faults",
            Pane::Connections => "connections",
            Pane::Table(name) => name,
            Pane::Amqp => "amqp",
        }
    }

    /// The orders `s` cycles through (none: `s` does nothing in this pane).
    pub fn sorts(self) -> &'static [&'static str] {
        match self {
            Pane::Syscalls => &["count", "time", "errors", "max"],
            Pane::Threads => &["count", "time", "errors"],
            Pane::Durability => &["count", "p99", "max"],
            Pane::Mappings | Pane::Faults => &[],
            Pane::Connections => &["bytes/s", "age", "state"],
            Pane::Table(_) => &[],
            Pane::Amqp => &["published", "delivered", "confirm p99"],
        }
    }
}

/// The panes for the families being traced, in display order.
pub fn panes_for<'a>(families: impl IntoIterator<Item = &'a str>) -> Vec<Pane> {
    let present: Vec<Pane> = families.into_iter().filter_map(Pane::of_family).collect();
    Pane::ALL
        .into_iter()
        .filter(|p| present.contains(p))
        .collect()
}

/// Stacks the panes; the focused one gets three shares of the height, the others one.
pub fn layout(panes: &[Pane], focus: Pane, area: Rect) -> Vec<(Pane, Rect)> {
    let constraints = panes
        .iter()
        .map(|&p| Constraint::Fill(if p == focus { 3 } else { 1 }));
    let areas = Layout::vertical(constraints).split(area);
    panes.iter().copied().zip(areas.iter().copied()).collect()
}

/// `--sort` as the syscalls pane's sort index, and back.
pub fn syscall_sort_index(sort: SortKey) -> usize {
    match sort {
        SortKey::Count => 0,
        SortKey::Time => 1,
        SortKey::Errors => 2,
        SortKey::Max => 3,
    }
}

fn syscall_sort(index: usize) -> SortKey {
    [SortKey::Count, SortKey::Time, SortKey::Errors, SortKey::Max][index % 4]
}

pub fn syscall_cells(r: &SyscallRow) -> Vec<String> {
    vec![
        r.name.clone(),
        r.count.to_string(),
        r.errors.to_string(),
        r.top_errno
            .as_ref()
            .map(|e| format!("{} ({})", e.name, e.count))
            .unwrap_or_default(),
        units::ns(r.total_ns),
        units::ns(r.avg_ns),
        units::ns(r.p50_ns),
        units::ns(r.p99_ns),
        units::ns(r.max_ns),
    ]
}

pub fn syscalls(f: &mut Frame, area: Rect, block: Block, rows: &[SyscallRow], sort: usize) {
    let mut sorted: Vec<&SyscallRow> = rows.iter().collect();
    crate::syscalls::sort_rows(&mut sorted, syscall_sort(sort));
    let header = Row::new([
        "SYSCALL",
        "COUNT",
        "ERRORS",
        "TOP ERRNO",
        "TOTAL",
        "AVG",
        "P50",
        "P99",
        "MAX",
    ])
    .bold();
    let widths = [
        Constraint::Length(20),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let body = sorted.iter().map(|r| Row::new(syscall_cells(r)));
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}

pub fn thread_cells(t: &ThreadRow) -> Vec<String> {
    vec![
        printable(t.name.as_deref().unwrap_or("?")).into_owned(),
        t.tid.to_string(),
        t.count.to_string(),
        t.errors.to_string(),
        units::ns(t.total_ns),
        crate::syscalls::threads::top_syscalls(t, 4),
    ]
}

pub fn threads(f: &mut Frame, area: Rect, block: Block, rows: &[ThreadRow], sort: usize) {
    let mut sorted: Vec<&ThreadRow> = rows.iter().collect();
    match sort {
        1 => sorted.sort_by_key(|t| Reverse(t.total_ns)),
        2 => sorted.sort_by_key(|t| Reverse(t.errors)),
        _ => sorted.sort_by_key(|t| Reverse(t.count)),
    }
    let header = Row::new(["THREAD", "TID", "CALLS", "ERRORS", "TIME", "TOP SYSCALLS"]).bold();
    let widths = [
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    let body = sorted.iter().map(|t| Row::new(thread_cells(t)));
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}

/// The log2 histogram as block characters from its lowest to its highest non-empty bucket,
/// with the bounds: `4.10µs ▂█▁ 131µs`.
pub fn spark(histogram: &[Bucket]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (Some(first), Some(last)) = (histogram.first(), histogram.last()) else {
        return String::new();
    };
    let peak = histogram.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let bars: String = histogram
        .iter()
        .map(|b| match b.count {
            0 => ' ',
            n => BARS[((n * 8).div_ceil(peak) as usize).clamp(1, 8) - 1],
        })
        .collect();
    let hi = if last.hi_ns == u64::MAX {
        "…".to_string()
    } else {
        units::ns(last.hi_ns + 1)
    };
    format!("{} {bars} {hi}", units::ns(first.lo_ns))
}

pub fn durability_cells(r: &FsyncRow) -> Vec<String> {
    let what = match &r.flags {
        Some(fl) => format!("{} {fl}", r.syscall),
        None => r.syscall.to_string(),
    };
    let mut file = r.display.clone();
    if let Some(tid) = r.tid {
        file.push_str(&format!(
            " · {} ({tid})",
            printable(r.thread.as_deref().unwrap_or("?"))
        ));
    }
    vec![
        what,
        r.count.to_string(),
        r.errors.to_string(),
        units::ns(r.p50_ns),
        units::ns(r.p99_ns),
        units::ns(r.max_ns),
        spark(&r.histogram),
        file,
    ]
}

pub fn durability(f: &mut Frame, area: Rect, block: Block, rows: &[FsyncRow], sort: usize) {
    let mut sorted: Vec<&FsyncRow> = rows.iter().collect();
    match sort {
        1 => sorted.sort_by_key(|r| Reverse(r.p99_ns)),
        2 => sorted.sort_by_key(|r| Reverse(r.max_ns)),
        _ => sorted.sort_by_key(|r| Reverse(r.count)),
    }
    let header = Row::new([
        "CALL",
        "COUNT",
        "ERR",
        "P50",
        "P99",
        "MAX",
        "LATENCY (log2 buckets)",
        "FILE",
    ])
    .bold();
    let widths = [
        Constraint::Length(22),
        Constraint::Length(7),
        Constraint::Length(4),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(30),
        Constraint::Fill(1),
    ];
    let body = sorted.iter().map(|r| Row::new(durability_cells(r)));
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}

/// `345 live of vm.max_map_count 65530 (0.5%)`, and the share (0 when unknown).
pub fn map_count(s: &MmapSection) -> (String, f64) {
    match (s.live_mappings, s.max_map_count) {
        (Some(live), Some(max)) if max > 0 => {
            let ratio = live as f64 / max as f64;
            (
                format!(
                    "{live} live mappings of vm.max_map_count {max} ({:.1}%){}",
                    ratio * 100.0,
                    if s.map_count_warning {
                        " — WARNING: near the limit"
                    } else {
                        ""
                    }
                ),
                ratio.min(1.0),
            )
        }
        (Some(live), _) => (format!("{live} live mappings"), 0.0),
        _ => ("live mappings unknown".into(), 0.0),
    }
}

pub fn mappings(f: &mut Frame, area: Rect, block: Block, s: &MmapSection) {
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [gauge, table] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(inner);
    let (label, ratio) = map_count(s);
    let colour = if s.map_count_warning {
        Color::Red
    } else {
        Color::Green
    };
    f.render_widget(
        Gauge::default()
            .ratio(ratio)
            .label(label)
            .gauge_style(Style::new().fg(colour))
            .use_unicode(true),
        gauge,
    );
    let header = Row::new(["SYSCALL", "CALLS/s", "BYTES/s", "CALLS", "ERRORS", "BYTES"]).bold();
    let widths = [
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(10),
    ];
    let body = s.syscalls.iter().map(|r| {
        Row::new([
            r.syscall.to_string(),
            format!("{:.1}", r.calls_per_s),
            format!("{}/s", units::bytes(r.bytes_per_s as u64)),
            r.count.to_string(),
            r.errors.to_string(),
            units::bytes(r.bytes),
        ])
    });
    f.render_widget(Table::new(body, widths).header(header), table);
}

/// A faults row's cells: faults, major, write, pages, kind, file.
pub fn fault_cells(r: &FileRow) -> Vec<String> {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    vec![
        r.faults.to_string(),
        opt(r.major),
        opt(r.write_faults),
        r.pages_faulted.to_string(),
        r.kind.clone(),
        r.display.clone(),
    ]
}

/// Page faults per mapped file this interval, most first, and a throttling line.
pub fn faults(f: &mut Frame, area: Rect, block: Block, s: &FaultsSection) {
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [line, table] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(inner);
    let throttled: u64 = s.writeback.throttle.iter().map(|t| t.count).sum();
    let paused_ms: u64 = s.writeback.throttle.iter().map(|t| t.pause_ms).sum();
    let waits: u64 = s
        .writeback
        .stable_page_waits
        .iter()
        .flatten()
        .map(|r| r.count)
        .sum();
    let style = if throttled > 0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    f.render_widget(
        ratatui::widgets::Paragraph::new(format!(
            "dirty throttling: {throttled} ({paused_ms} ms paused) · stable-page waits: {waits}"
        ))
        .style(style),
        line,
    );
    let header = Row::new(["FAULTS", "MAJOR", "WRITE", "PAGES", "KIND", "FILE"]).bold();
    let widths = [
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    let body = s.files.iter().map(|r| Row::new(fault_cells(r)));
    f.render_widget(Table::new(body, widths).header(header), table);
}

/// The last state change each connection was seen to make (kept across intervals).
pub type LastTransitions = HashMap<(String, String), String>;

/// Remembers this window's last transition of every connection.
pub fn note_transitions(last: &mut LastTransitions, s: &TcpSection) {
    for c in &s.connections {
        if let Some(t) = c.transitions.last() {
            last.insert(
                (c.local.clone(), c.remote.clone()),
                format!(
                    "{}→{} at t+{:.1}s",
                    t.from,
                    t.to,
                    Duration::from_nanos(t.at_ns).as_secs_f64()
                ),
            );
        }
    }
}

pub fn connection_cells(c: &ConnRow, last: &LastTransitions) -> Vec<String> {
    let remote = match c.service {
        Some(s) => format!("{} ({s})", c.remote),
        None => c.remote.clone(),
    };
    let age = match (c.age_ns, c.lifetime_ns) {
        (Some(a), _) | (None, Some(a)) => units::ns(a),
        // Open before tracing started.
        _ => "older".into(),
    };
    vec![
        c.local.clone(),
        remote,
        c.state.clone(),
        age,
        format!("{}/s", units::bytes(c.send_rate)),
        format!("{}/s", units::bytes(c.receive_rate)),
        last.get(&(c.local.clone(), c.remote.clone()))
            .cloned()
            .unwrap_or_default(),
    ]
}

pub fn connections(
    f: &mut Frame,
    area: Rect,
    block: Block,
    s: &TcpSection,
    sort: usize,
    last: &LastTransitions,
) {
    let mut sorted: Vec<&ConnRow> = s.connections.iter().collect();
    match sort {
        1 => sorted.sort_by_key(|c| Reverse(c.age_ns.or(c.lifetime_ns).unwrap_or(u64::MAX))),
        2 => sorted.sort_by(|a, b| a.state.cmp(&b.state)),
        _ => sorted.sort_by_key(|c| Reverse(c.send_rate + c.receive_rate)),
    }
    // Open connections first; the ones closed in this window after them, dimmed.
    sorted.sort_by_key(|c| !c.open);
    let header = Row::new([
        "LOCAL",
        "REMOTE",
        "STATE",
        "AGE",
        "SEND",
        "RECV",
        "LAST TRANSITION",
    ])
    .bold();
    let widths = [
        Constraint::Length(22),
        Constraint::Length(30),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    let body = sorted.iter().map(|c| {
        let row = Row::new(connection_cells(c, last));
        if c.open {
            row
        } else {
            row.style(Style::new().add_modifier(Modifier::DIM))
        }
    });
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}

/// A family's own table: its header, then as many rows as fit; each column as wide as its
/// widest cell (the header included), the last one taking what is left.
pub fn table(f: &mut Frame, area: Rect, block: Block, pane: &TablePane) {
    let shown = usize::from(area.height.saturating_sub(3));
    let rows: Vec<&Vec<String>> = pane.rows.iter().take(shown).collect();
    let widths: Vec<Constraint> = (0..pane.header.len())
        .map(|i| {
            let widest = rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([pane.header[i].len()])
                .max()
                .unwrap_or(0);
            if i + 1 == pane.header.len() {
                Constraint::Min(widest as u16)
            } else {
                Constraint::Length(widest as u16)
            }
        })
        .collect();
    let header =
        Row::new(pane.header.iter().copied()).style(Style::new().add_modifier(Modifier::BOLD));
    let body = rows
        .into_iter()
        .map(|r| Row::new(r.iter().map(|c| printable(c).into_owned())));
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}

/// One AMQP connection's cells: its ends, messages each way, in flight, confirm latency.
pub fn amqp_cells(c: &AmqpRow) -> Vec<String> {
    let f = &c.figures;
    let in_flight = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    vec![
        c.local.clone().unwrap_or_else(|| "?".into()),
        c.remote.clone().unwrap_or_else(|| "?".into()),
        c.vhost.clone().unwrap_or_else(|| "?".into()),
        f.published.to_string(),
        format!("{}/{}", f.confirmed, f.nacked),
        in_flight(c.unconfirmed),
        if f.confirm_latency.count > 0 {
            format!(
                "{}/{}",
                units::ns(f.confirm_latency.p50_ns),
                units::ns(f.confirm_latency.p99_ns)
            )
        } else {
            "-".into()
        },
        f.delivered.to_string(),
        format!("{}/{}", f.acked, f.rejected),
        in_flight(c.unacked),
        f.unsynced_bytes.to_string(),
    ]
}

pub fn amqp(f: &mut Frame, area: Rect, block: Block, s: &AmqpSection, sort: usize) {
    let mut sorted: Vec<&AmqpRow> = s.connections.iter().collect();
    match sort {
        1 => sorted.sort_by_key(|c| Reverse(c.figures.delivered)),
        2 => sorted.sort_by_key(|c| Reverse(c.figures.confirm_latency.p99_ns)),
        _ => sorted.sort_by_key(|c| Reverse(c.figures.published)),
    }
    sorted.sort_by_key(|c| !c.open);
    let header = Row::new([
        "LOCAL",
        "REMOTE",
        "VHOST",
        "PUB",
        "CONF/NACK",
        "UNCONF",
        "CONFIRM p50/p99",
        "DELIV",
        "ACK/REJ",
        "UNACKED",
        "UNSYNCED",
    ])
    .bold();
    let widths = [
        Constraint::Length(22),
        Constraint::Length(22),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(17),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    let body = sorted.iter().map(|c| {
        let row = Row::new(amqp_cells(c));
        if c.open {
            row
        } else {
            row.style(Style::new().add_modifier(Modifier::DIM))
        }
    });
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}
