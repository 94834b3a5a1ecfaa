//! The live view on ratatui's TestBackend: which panes exist, where they go, what a row says,
//! and what the keys do.

use std::{collections::BTreeMap, time::Duration};

use lavtrace_common::syscalls::{SyscallStats, latency_bucket};
use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, layout::Rect, style::Color};

use super::{
    ViewState,
    panes::{self, Pane},
};
use crate::{
    family::SortKey,
    fsync::{Bucket, FsyncRow},
    kernel::Hook,
    mmap::MmapSection,
    output::Sections,
    storage::lavinmq::Kind,
    syscalls::SyscallRow,
    target::Target,
    tcp::{ConnRow, TcpSection, TransitionRow},
};

fn hooks(families: &[&'static str]) -> Vec<Hook> {
    families
        .iter()
        .map(|&family| Hook {
            family,
            program: "p",
            via: "tracepoint x:y".into(),
        })
        .collect()
}

fn target() -> Target {
    Target {
        // Not a real process: the view reads its thread count and keeps the last good one.
        pid: u32::MAX,
        comm: "lavinmq".into(),
        threads: 12,
    }
}

fn syscall(nr: i64, count: u64, ns: u64) -> SyscallRow {
    let mut s = SyscallStats {
        count,
        total_ns: count * ns,
        max_ns: ns,
        ..SyscallStats::default()
    };
    s.buckets[latency_bucket(ns)] = count;
    SyscallRow::new(nr as u32, &s, None)
}

fn syncfs_row() -> FsyncRow {
    FsyncRow {
        syscall: "syncfs",
        path: "/var/lib/lavinmq".into(),
        kind: Kind::DataDir,
        mount: None,
        flags: None,
        count: 13,
        errors: 0,
        bytes: 0,
        total_ns: 13_000_000,
        avg_ns: 1_000_000,
        p50_ns: 600_000,
        p90_ns: 2_000_000,
        p99_ns: 3_000_000,
        p999_ns: 3_000_000,
        max_ns: 3_100_000,
        histogram: vec![
            Bucket {
                lo_ns: 524_288,
                hi_ns: 1_048_575,
                count: 8,
            },
            Bucket {
                lo_ns: 1_048_576,
                hi_ns: 2_097_151,
                count: 0,
            },
            Bucket {
                lo_ns: 2_097_152,
                hi_ns: 4_194_303,
                count: 5,
            },
        ],
        tid: Some(4242),
        thread: Some("Publish confirm".into()),
        queue: None,
        display: "/var/lib/lavinmq (data dir)".into(),
    }
}

fn mmap(live: u64, max: u64, warning: bool) -> MmapSection {
    MmapSection {
        syscalls: Vec::new(),
        kinds: Vec::new(),
        files: Vec::new(),
        live_mappings: Some(live),
        max_map_count: Some(max),
        map_count_warning: warning,
        threads: None,
    }
}

fn conn(local: &str, open: bool, age_ns: Option<u64>, transitions: Vec<TransitionRow>) -> ConnRow {
    ConnRow {
        local: local.into(),
        remote: "10.0.0.9:5672".into(),
        service: Some("AMQP"),
        state: if open { "ESTABLISHED" } else { "CLOSE" }.into(),
        origin: "accept",
        open,
        opened_at_ns: None,
        closed_at_ns: None,
        age_ns,
        lifetime_ns: None,
        state_ns: None,
        transitions,
        bytes_sent: 0,
        bytes_received: 0,
        send_rate: 2048,
        receive_rate: 100,
        retransmits: 0,
        resets_sent: 0,
        resets_received: 0,
        closed_by: None,
        rtt_us: None,
    }
}

fn tcp() -> TcpSection {
    TcpSection {
        hooks: "tracepoint",
        listening: Vec::new(),
        connections: vec![
            conn(
                "10.0.0.1:40000",
                true,
                Some(3_000_000_000),
                vec![TransitionRow {
                    from: "SYN_RECV".into(),
                    to: "ESTABLISHED".into(),
                    at_ns: 1_500_000_000,
                    prev_state_ns: None,
                }],
            ),
            conn("10.0.0.1:40001", true, None, Vec::new()),
        ],
        transitions: BTreeMap::new(),
        opened: 1,
        closed: 0,
        lifetimes: None,
        evicted: 0,
    }
}

fn all_sections(warning: bool) -> Sections {
    all_sections_with(warning, vec![syncfs_row()])
}

fn all_sections_with(warning: bool, fsync_rows: Vec<FsyncRow>) -> Sections {
    Sections::default()
        .with(crate::syscalls::Section {
            rows: vec![
                syscall(libc::SYS_read, 900, 400),
                syscall(libc::SYS_syncfs, 13, 1_000_000),
            ],
            threads: None,
            ..Default::default()
        })
        .with(crate::fsync::Section(fsync_rows))
        .with(if warning {
            mmap(60_000, 65_530, true)
        } else {
            mmap(345, 65_530, false)
        })
        .with(tcp())
}

fn draw(state: &ViewState, w: u16, h: u16) -> (String, Buffer) {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| state.render(f)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let text = (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n");
    (text, buf)
}

#[test]
fn one_pane_per_traced_family_in_a_fixed_order() {
    assert_eq!(
        panes::panes_for(["syscalls", "floor"]),
        vec![Pane::Syscalls]
    );
    assert_eq!(
        panes::panes_for(["tcp", "mmap", "fsync", "syscalls"]),
        vec![
            Pane::Syscalls,
            Pane::Durability,
            Pane::Mappings,
            Pane::Connections
        ]
    );
    assert_eq!(
        panes::panes_for(["fsync", "tcp"]),
        vec![Pane::Durability, Pane::Connections]
    );
    assert_eq!(
        panes::panes_for(["tcp", "faults", "mmap"]),
        vec![Pane::Mappings, Pane::Faults, Pane::Connections]
    );
    assert!(panes::panes_for(["floor"]).is_empty());
}

#[test]
fn the_focused_pane_grows() {
    let area = Rect::new(0, 0, 100, 40);
    let all = panes::panes_for(["syscalls", "fsync", "mmap", "tcp"]);
    let placed = panes::layout(&all, Pane::Durability, area);
    let height = |p: Pane| placed.iter().find(|(q, _)| *q == p).unwrap().1.height;
    assert_eq!(placed.iter().map(|(_, r)| r.height).sum::<u16>(), 40);
    for other in [Pane::Syscalls, Pane::Mappings, Pane::Connections] {
        assert!(height(Pane::Durability) > 2 * height(other), "{placed:?}");
    }
    let alone = panes::layout(&[Pane::Syscalls], Pane::Syscalls, area);
    assert_eq!(alone, vec![(Pane::Syscalls, area)]);
}

#[test]
fn rows_say_what_the_operator_needs() {
    let row = syncfs_row();
    // 8 calls, an empty bucket, 5 calls: scaled to the fullest bucket.
    assert_eq!(panes::spark(&row.histogram), "524µs █ ▅ 4.19ms");
    let cells = panes::durability_cells(&row);
    assert_eq!(cells[0], "syncfs");
    assert_eq!(cells[4], "3.00ms");
    assert_eq!(
        cells[7],
        "/var/lib/lavinmq (data dir) · Publish confirm (4242)"
    );

    let section = tcp();
    let mut last = panes::LastTransitions::new();
    panes::note_transitions(&mut last, &section);
    let cells = panes::connection_cells(&section.connections[0], &last);
    assert_eq!(
        cells,
        [
            "10.0.0.1:40000",
            "10.0.0.9:5672 (AMQP)",
            "ESTABLISHED",
            "3.00s",
            "2.0KiB/s",
            "100B/s",
            "SYN_RECV→ESTABLISHED at t+1.5s"
        ]
    );
    let pre = panes::connection_cells(&section.connections[1], &last);
    assert_eq!((pre[3].as_str(), pre[6].as_str()), ("older", ""));

    let (label, ratio) = panes::map_count(&mmap(345, 65_530, false));
    assert_eq!(label, "345 live mappings of vm.max_map_count 65530 (0.5%)");
    assert!((ratio - 345.0 / 65_530.0).abs() < 1e-9);
}

#[test]
fn view_shows_every_traced_family_and_the_keys_work() {
    let mut state = ViewState::new(
        &target(),
        &hooks(&["syscalls", "fsync", "mmap", "tcp"]),
        SortKey::Count,
    );
    let (text, _) = draw(&state, 140, 48);
    assert!(text.contains("waiting for the first interval"), "{text}");

    state.update(1, Duration::from_secs(1), all_sections(false));
    let (text, _) = draw(&state, 140, 48);
    for needle in [
        "lavtrace · pid 4294967295 (lavinmq, 12 threads)",
        "[tab] focus: syscalls  [s]ort: count",
        " syscalls · this interval · by count ",
        " durability · this interval · by count ",
        " mappings · rates over this interval ",
        " connections · open 2 (ESTABLISHED 2) · 1 opened, 0 closed this interval · 0 listening · by bytes/s ",
        "524µs █ ▅ 4.19ms",
        "345 live mappings of vm.max_map_count 65530 (0.5%)",
        "SYN_RECV→ESTABLISHED at t+1.5s",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }

    state.key('\t');
    state.key('s');
    let (text, _) = draw(&state, 140, 48);
    assert!(
        text.contains("[tab] focus: durability  [s]ort: p99"),
        "{text}"
    );
    assert!(
        text.contains(" durability · this interval · by p99 "),
        "{text}"
    );
    // The syscalls pane kept its own order.
    assert!(
        text.contains(" syscalls · this interval · by count "),
        "{text}"
    );

    // Paused: a new interval is not shown.
    state.key('p');
    let next = all_sections_with(false, Vec::new());
    state.update(2, Duration::from_secs(1), next);
    let (text, _) = draw(&state, 140, 48);
    assert!(text.contains("PAUSED"), "{text}");
    assert!(text.contains("524µs █ ▅ 4.19ms"), "{text}");

    // Focus wraps around the panes that exist.
    for _ in 0..3 {
        state.key('\t');
    }
    let (text, _) = draw(&state, 140, 48);
    assert!(text.contains("[tab] focus: syscalls"), "{text}");
}

#[test]
fn only_traced_families_get_panes() {
    let mut state = ViewState::new(&target(), &hooks(&["syscalls"]), SortKey::Time);
    state.update(
        1,
        Duration::from_secs(1),
        Sections::default().with(crate::syscalls::Section {
            rows: vec![syscall(libc::SYS_read, 5, 400)],
            threads: None,
            ..Default::default()
        }),
    );
    let (text, _) = draw(&state, 120, 30);
    assert!(
        text.contains(" syscalls · this interval · by time "),
        "{text}"
    );
    for absent in ["durability", "mappings", "connections", "threads ·"] {
        assert!(!text.contains(absent), "{absent} shown:\n{text}");
    }
}

#[test]
fn map_count_gauge_turns_red_above_the_threshold() {
    let gauge_colours = |warning: bool| -> Vec<Option<Color>> {
        let mut state = ViewState::new(&target(), &hooks(&["mmap"]), SortKey::Count);
        state.update(1, Duration::from_secs(1), all_sections(warning));
        let (text, buf) = draw(&state, 120, 20);
        let y = text
            .lines()
            .position(|l| l.contains("live mappings of vm.max_map_count"))
            .expect("gauge line") as u16;
        (0..120).map(|x| buf[(x, y)].style().fg).collect()
    };
    let warn = gauge_colours(true);
    assert!(warn.contains(&Some(Color::Red)), "{warn:?}");
    assert!(!warn.contains(&Some(Color::Green)));
    let fine = gauge_colours(false);
    assert!(fine.contains(&Some(Color::Green)), "{fine:?}");
    assert!(!fine.contains(&Some(Color::Red)));
}

#[test]
fn a_hostile_thread_name_is_escaped_in_its_pane() {
    let row = crate::syscalls::threads::ThreadRow {
        tid: 7,
        name: Some("evil\x1b[2J\n".into()),
        count: 1,
        errors: 0,
        total_ns: 0,
        syscalls: Vec::new(),
    };
    assert_eq!(panes::thread_cells(&row)[0], r"evil\x1b[2J\n");
}

#[test]
fn the_header_shows_the_limits_in_red_from_eighty_percent() {
    use crate::lavinmq::limits::{Limits, Report};
    let header = |fds_open: u64| -> (String, Vec<Option<Color>>) {
        let mut s = all_sections(false);
        let limits = Limits {
            fd_limit: Some(1000),
            fds_open: Some(fds_open),
            max_map_count: Some(65_530),
            mappings: Some(345),
            ..Limits::default()
        };
        s.limits = Some(Report {
            warnings: limits.warnings(),
            limits,
            data_dir: None,
        });
        let mut state = ViewState::new(&target(), &hooks(&["tcp"]), SortKey::Count);
        state.update(1, Duration::from_secs(1), s);
        let (text, buf) = draw(&state, 160, 30);
        let y = text
            .lines()
            .position(|l| l.starts_with("LIMITS"))
            .expect("a LIMITS line in the header");
        assert!(y < 5, "in the header:\n{text}");
        let line = text.lines().nth(y).unwrap().trim_end().to_string();
        (
            line,
            (0..160).map(|x| buf[(x, y as u16)].style().fg).collect(),
        )
    };
    // The tcp section has two open connections: fds they hold are counted with the rest.
    let (line, colours) = header(799);
    assert!(
        line.starts_with("LIMITS  fds 799/1000 (79 %), 2 TCP · mappings 345/65530 (0 %)"),
        "{line}"
    );
    assert!(!line.contains("WARNING") && !colours.contains(&Some(Color::Red)));
    let (line, colours) = header(800);
    assert!(line.ends_with("· WARNING: fds near the limit"), "{line}");
    assert!(colours.contains(&Some(Color::Red)));
}

#[test]
fn the_flight_recorder_shows_its_window_and_d_dumps() {
    use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
    let key = |c| Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    assert!(matches!(
        super::action(&key('d')),
        Some(super::Action::View('d'))
    ));
    assert!(super::action(&key('x')).is_none());

    let mut state = ViewState::new(&target(), &hooks(&["syscalls"]), SortKey::Count);
    state.update(1, Duration::from_secs(1), all_sections(false));
    let (text, _) = draw(&state, 140, 30);
    assert!(!text.contains("[d]ump"), "no recorder, no key:\n{text}");
    let kept = "flight recorder: 6 intervals, 6s of 10m, 12.0KiB of 64.0MiB kept";
    state.recorder = Some(kept.into());
    let (text, _) = draw(&state, 140, 30);
    assert!(text.contains(kept), "{text}");
    assert!(text.contains("[p]ause  [d]ump now"), "{text}");
    // The panes still start below the header, whose last line is the keys.
    assert!(text.contains(" syscalls · this interval "), "{text}");
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap();
    assert!(at("LIMITS") < at(kept) && at(kept) < at("[d]ump now") && at("[d]ump now") < 5);
}

/// A family without a pane of its own in the view (sched here) gets its table as a pane once
/// its first section offers one, after the others, named and focusable; a hostile thread
/// name is shown escaped.
#[test]
fn a_family_table_becomes_a_pane_of_its_own() {
    use lavtrace_common::sched::{ThreadSched, state};
    let mut state = ViewState::new(&target(), &hooks(&["syscalls", "sched"]), SortKey::Count);
    assert_eq!(state.panes, vec![Pane::Syscalls]);
    let starved = ThreadSched {
        on_cpu_ns: 2_000_000,
        runq_count: 4,
        runq_max_ns: 9_000_000,
        voluntary: 7,
        ..ThreadSched::default()
    };
    let mut buckets = starved;
    buckets.runq_buckets[lavtrace_common::syscalls::latency_bucket(8_000_000)] = 4;
    let sections = all_sections(false).with(crate::sched::Section {
        threads: vec![
            crate::sched::ThreadRow::new(
                11,
                Some("idle".into()),
                &ThreadSched::default(),
                state::SLEEP,
            ),
            crate::sched::ThreadRow::new(12, Some("conf\x1b[2Jirm".into()), &buckets, state::RUNQ),
        ],
        table_full: 0,
        missed: 0,
    });
    state.update(1, Duration::from_secs(1), sections);
    assert_eq!(state.panes.last(), Some(&Pane::Table("scheduling")));
    state.key('\t');
    assert_eq!(state.focus, Pane::Table("scheduling"));
    let (text, _) = draw(&state, 140, 50);
    assert!(
        text.contains("scheduling · this interval · 2 threads"),
        "{text}"
    );
    assert!(text.contains("RQ P99"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    // The starved thread first.
    let starved_at = text.find("conf").unwrap();
    let idle_at = text.find("idle").unwrap();
    assert!(starved_at < idle_at, "{text}");
}
#[test]
fn the_faults_pane_lists_files_and_turns_red_when_a_writer_is_throttled() {
    let mut state = ViewState::new(&target(), &hooks(&["faults"]), SortKey::Count);
    let row = crate::faults::FileRow {
        path: "/d/q/msgs.0000000001".into(),
        kind: "segment".into(),
        display: "vhost:42099b4a/queue:8c6e326c/msgs.0000000001".into(),
        queue: None,
        faults: 245,
        major: Some(1),
        minor: Some(244),
        write_faults: Some(245),
        pages_faulted: 245,
        fault_time_ns: None,
        resident_pages: None,
    };
    let mut writeback = crate::faults::writeback::WritebackSection::default();
    writeback
        .throttle
        .push(crate::faults::writeback::ThrottleRow {
            bdi: "254:0".into(),
            count: 14,
            paused: 14,
            pause_ms: 184,
            max_pause_ms: 16,
            histogram: Default::default(),
        });
    state.update(
        1,
        Duration::from_secs(1),
        Sections::default().with(crate::faults::FaultsSection {
            files: vec![row],
            kernel_counted: None,
            writeback,
            table_full: 0,
        }),
    );
    let (text, buf) = draw(&state, 120, 30);
    assert!(
        text.contains(" faults · per mapped file, this interval "),
        "{text}"
    );
    assert!(
        text.contains("dirty throttling: 14 (184 ms paused)"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("msgs.0000000001"))
        .unwrap_or_else(|| panic!("no segment row:\n{text}"));
    let cells: Vec<&str> = line
        .split_whitespace()
        .map(|c| c.trim_matches(|ch: char| !ch.is_ascii()))
        .filter(|c| !c.is_empty())
        .collect();
    assert!(
        cells.starts_with(&["245", "1", "245", "245", "segment"]),
        "{line}"
    );
    let y = text
        .lines()
        .position(|l| l.contains("dirty throttling"))
        .unwrap() as u16;
    // A column of the buffer counts characters, not bytes (the borders are multi-byte).
    let l = text.lines().nth(y as usize).unwrap();
    let x = l[..l.find("dirty").unwrap()].chars().count() as u16;
    assert_eq!(buf[(x, y)].fg, Color::Red);
}

#[test]
fn the_amqp_pane_shows_each_connection() {
    use crate::amqp::report;
    use lavtrace_common::amqp::Counters;
    assert_eq!(
        panes::panes_for(["tcp", "amqp"]),
        vec![Pane::Connections, Pane::Amqp]
    );
    let mut c = Counters {
        published: 10,
        confirmed: 9,
        nacked: 1,
        delivered: 4,
        acked: 3,
        rejected: 1,
        confirm_published: 10,
        ..Counters::default()
    };
    c.confirm_latency[10] = 10; // 1024..2047 ns
    let id = report::Identity {
        local: Some("127.0.0.1:5672".parse().unwrap()),
        remote: Some("127.0.0.1:40000".parse().unwrap()),
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
    let row = report::conn_row(5, id, &c, &c, true);
    let cells = panes::amqp_cells(&row);
    assert_eq!(
        cells[..6],
        ["127.0.0.1:5672", "127.0.0.1:40000", "/", "10", "9/1", "0"]
    );
    assert_eq!(cells[7..], ["4", "3/1", "0", "0"]);
    assert!(cells[6].contains('/'), "{cells:?}");
}
