//! The live view: a full-screen display redrawn in place each interval when stdout is a
//! terminal. Keys: q / Ctrl-C quit (the summary is then printed to the normal screen), s cycles
//! the syscall sort, p pauses the display, Tab moves the focus (the focused pane grows).

use std::{
    io,
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};
use tokio::sync::mpsc;

use crate::{
    cli::SortKey, ebpf::Hook, output::Sections, overhead, syscalls::SyscallRow, target::Target,
    units,
};

/// What a key (or a terminal resize) asks for.
pub enum Action {
    Quit,
    Redraw,
    /// A view key: s, p or Tab.
    View(char),
}

/// The panes, in focus order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pane {
    Syscalls,
}

const PANES: [Pane; 1] = [Pane::Syscalls];

pub struct Tui {
    terminal: DefaultTerminal,
    keys: mpsc::UnboundedReceiver<Action>,
    sort: SortKey,
    focus: Pane,
    paused: bool,
    started: Instant,
    title: String,
    hooks: String,
    last: Option<(u64, Duration, Sections)>,
}

impl Tui {
    pub fn start(target: &Target, hooks: &[Hook], sort: SortKey) -> io::Result<Tui> {
        let terminal = ratatui::try_init()?;
        let (tx, keys) = mpsc::unbounded_channel();
        // Blocking key reads on their own thread; they end with the process.
        std::thread::spawn(move || {
            while let Ok(ev) = event::read() {
                let action = match ev {
                    Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                            Some(Action::Quit)
                        }
                        KeyCode::Char(c @ ('s' | 'p')) => Some(Action::View(c)),
                        KeyCode::Tab => Some(Action::View('\t')),
                        _ => None,
                    },
                    Event::Resize(..) => Some(Action::Redraw),
                    _ => None,
                };
                if let Some(a) = action
                    && tx.send(a).is_err()
                {
                    return;
                }
            }
        });
        let mut families: Vec<&str> = hooks.iter().map(|h| h.family).collect();
        families.dedup();
        Ok(Tui {
            terminal,
            keys,
            sort,
            focus: Pane::Syscalls,
            paused: false,
            started: Instant::now(),
            title: format!(
                "lavtrace · pid {} ({}, {} threads)",
                target.pid, target.comm, target.threads
            ),
            hooks: format!("{} hooks ({})", hooks.len(), families.join(", ")),
            last: None,
        })
    }

    /// The next key action (never resolves once the key thread is gone).
    pub async fn next_action(&mut self) -> Action {
        match self.keys.recv().await {
            Some(a) => a,
            None => std::future::pending().await,
        }
    }

    /// Applies a view key and redraws.
    pub fn key(&mut self, key: char) -> io::Result<()> {
        match key {
            's' => {
                self.sort = match self.sort {
                    SortKey::Count => SortKey::Time,
                    SortKey::Time => SortKey::Errors,
                    SortKey::Errors => SortKey::Max,
                    SortKey::Max => SortKey::Count,
                }
            }
            'p' => self.paused = !self.paused,
            '\t' => {
                let i = PANES.iter().position(|&p| p == self.focus).unwrap_or(0);
                self.focus = PANES[(i + 1) % PANES.len()];
            }
            _ => {}
        }
        self.draw()
    }

    pub fn update(&mut self, seq: u64, window: Duration, sections: Sections) -> io::Result<()> {
        if !self.paused {
            self.last = Some((seq, window, sections));
        }
        self.draw()
    }

    pub fn draw(&mut self) -> io::Result<()> {
        let view = View {
            title: &self.title,
            hooks: &self.hooks,
            uptime: self.started.elapsed(),
            sort: self.sort,
            focus: self.focus,
            paused: self.paused,
            last: self.last.as_ref(),
        };
        self.terminal.draw(|f| view.render(f)).map(|_| ())
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

struct View<'a> {
    title: &'a str,
    hooks: &'a str,
    uptime: Duration,
    sort: SortKey,
    focus: Pane,
    paused: bool,
    last: Option<&'a (u64, Duration, Sections)>,
}

impl View<'_> {
    fn render(&self, f: &mut Frame) {
        let [header, body] =
            Layout::vertical([Constraint::Length(4), Constraint::Min(3)]).areas(f.area());
        self.header(f, header);
        match self.last {
            Some((_, _, s)) => self.syscalls(f, body, s.syscalls.as_deref().unwrap_or(&[])),
            None => f.render_widget(
                Paragraph::new("waiting for the first interval…").block(Block::bordered()),
                body,
            ),
        }
    }

    fn header(&self, f: &mut Frame, area: Rect) {
        let secs = self.uptime.as_secs();
        let mut first = format!(
            "{} · up {}:{:02}:{:02} · {}",
            self.title,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.hooks
        );
        if self.paused {
            first.push_str(" · PAUSED");
        }
        let (lost, cost) = match self.last {
            Some((_, _, s)) => (
                s.lost_events.values().sum::<u64>(),
                s.overhead.as_ref().map(overhead::text).unwrap_or_default(),
            ),
            None => (0, String::new()),
        };
        let lines = vec![
            Line::from(first).bold(),
            Line::from(format!("lost events: {lost} · {cost}")),
            Line::from(format!(
                "[q]uit  [s]ort: {:?}  [p]ause  [tab] focus",
                self.sort
            ))
            .style(Style::new().add_modifier(Modifier::DIM)),
        ];
        f.render_widget(Paragraph::new(lines), area);
    }

    fn syscalls(&self, f: &mut Frame, area: Rect, rows: &[SyscallRow]) {
        let mut sorted: Vec<&SyscallRow> = rows.iter().collect();
        crate::syscalls::sort_rows(&mut sorted, self.sort);
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
        let body = sorted.iter().map(|r| {
            Row::new([
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
            ])
        });
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
        let mut block = Block::bordered().title(" syscalls (per interval) ");
        if self.focus == Pane::Syscalls {
            block = block.border_style(Style::new().bold());
        }
        f.render_widget(Table::new(body, widths).header(header).block(block), area);
    }
}
