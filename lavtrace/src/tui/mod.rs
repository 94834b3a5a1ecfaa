//! The live view: a full-screen display redrawn in place each interval when stdout is a
//! terminal. A header (with the interval's GC pauses when the gc family runs), then one pane
//! per traced family (syscalls, durability calls, mappings, connections). Keys: q / Ctrl-C quit (the summary is then printed to the normal screen),
//! Tab moves the focus (the focused pane grows), s cycles the focused pane's sort, p pauses
//! the display.

mod panes;

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Block, Paragraph},
};
use tokio::sync::mpsc;

use crate::{
    family::SortKey,
    fsync,
    kernel::{Bystanders, Hook},
    mmap::MmapSection,
    output::Sections,
    overhead, syscalls,
    target::Target,
    tcp::TcpSection,
};
use panes::{LastTransitions, Pane};

/// What a key (or a terminal resize) asks for.
pub enum Action {
    Quit,
    Redraw,
    /// A view key: s, p, Tab, or d (the flight recorder's dump).
    View(char),
}

/// The action of a terminal event. `d` (dump now) is passed on whether or not a flight
/// recorder runs: the session knows, and ignores it without one.
fn action(ev: &Event) -> Option<Action> {
    match ev {
        Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
            KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
            KeyCode::Char(c @ ('s' | 'p' | 'd')) => Some(Action::View(c)),
            KeyCode::Tab => Some(Action::View('\t')),
            _ => None,
        },
        Event::Resize(..) => Some(Action::Redraw),
        _ => None,
    }
}

/// What the view shows and how; everything but the terminal, so it renders on any backend.
struct ViewState {
    panes: Vec<Pane>,
    focus: Pane,
    /// Per pane: index into its `sorts()` (absent: 0).
    sorts: HashMap<Pane, usize>,
    paused: bool,
    started: Instant,
    pid: u32,
    comm: String,
    /// The target's thread count at the last update.
    threads: usize,
    hooks: String,
    last: Option<(u64, Duration, Sections)>,
    transitions: LastTransitions,
    /// The flight recorder's kept window (`Recorder::describe`); None without `--keep`.
    recorder: Option<String>,
}

pub struct Tui {
    terminal: DefaultTerminal,
    keys: mpsc::UnboundedReceiver<Action>,
    state: ViewState,
}

impl Tui {
    pub fn start(target: &Target, hooks: &[Hook], sort: SortKey) -> io::Result<Tui> {
        let terminal = ratatui::try_init()?;
        let (tx, keys) = mpsc::unbounded_channel();
        // Blocking key reads on their own thread; they end with the process.
        std::thread::spawn(move || {
            while let Ok(ev) = event::read() {
                if let Some(a) = action(&ev)
                    && tx.send(a).is_err()
                {
                    return;
                }
            }
        });
        Ok(Tui {
            terminal,
            keys,
            state: ViewState::new(target, hooks, sort),
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
        self.state.key(key);
        self.draw()
    }

    pub fn update(&mut self, seq: u64, window: Duration, sections: Sections) -> io::Result<()> {
        self.state.update(seq, window, sections);
        self.draw()
    }

    /// The flight recorder's line in the header (shown even while paused: it is lavtrace's
    /// own state, not the target's).
    pub fn set_recorder(&mut self, describe: Option<String>) {
        self.state.recorder = describe;
    }

    pub fn draw(&mut self) -> io::Result<()> {
        let state = &self.state;
        self.terminal.draw(|f| state.render(f)).map(|_| ())
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

impl ViewState {
    fn new(target: &Target, hooks: &[Hook], sort: SortKey) -> ViewState {
        let mut families: Vec<&str> = hooks.iter().map(|h| h.family).collect();
        families.dedup();
        let panes = panes::panes_for(families.iter().copied());
        let sorts = HashMap::from([(Pane::Syscalls, panes::syscall_sort_index(sort))]);
        ViewState {
            focus: panes.first().copied().unwrap_or(Pane::Syscalls),
            panes,
            sorts,
            paused: false,
            started: Instant::now(),
            pid: target.pid,
            comm: crate::printable::printable(&target.comm).into_owned(),
            threads: target.threads,
            hooks: format!(
                "{} hooks ({}){}",
                hooks.len(),
                families.join(", "),
                if Bystanders::of(hooks).every_syscall.is_empty() {
                    ""
                } else {
                    " · HOST-WIDE syscall slow path"
                }
            ),
            last: None,
            transitions: LastTransitions::new(),
            recorder: None,
        }
    }

    fn key(&mut self, key: char) {
        match key {
            's' => {
                let n = self.focus.sorts().len();
                if n > 0 {
                    let i = self.sorts.entry(self.focus).or_default();
                    *i = (*i + 1) % n;
                }
            }
            'p' => self.paused = !self.paused,
            '\t' if !self.panes.is_empty() => {
                let i = self
                    .panes
                    .iter()
                    .position(|&p| p == self.focus)
                    .unwrap_or(0);
                self.focus = self.panes[(i + 1) % self.panes.len()];
            }
            _ => {}
        }
    }

    fn update(&mut self, seq: u64, window: Duration, sections: Sections) {
        if self.paused {
            return;
        }
        if let Some(tcp) = sections.get::<TcpSection>() {
            panes::note_transitions(&mut self.transitions, tcp);
        }
        // --per-thread: its pane comes with the first sections that have threads.
        let has_threads = sections
            .get::<syscalls::Section>()
            .is_some_and(|s| s.threads.is_some());
        if has_threads && !self.panes.contains(&Pane::Threads) {
            let at = usize::from(self.panes.first() == Some(&Pane::Syscalls));
            self.panes.insert(at, Pane::Threads);
        }
        // A family's own table comes with its first section that offers one.
        for table in sections.table_panes() {
            let pane = Pane::Table(table.name);
            if !self.panes.contains(&pane) {
                self.panes.push(pane);
            }
        }
        let threads = crate::target::thread_count(self.pid);
        if threads > 0 {
            self.threads = threads;
        }
        self.last = Some((seq, window, sections));
    }

    fn render(&self, f: &mut Frame) {
        let [header, body] =
            Layout::vertical([Constraint::Length(5), Constraint::Min(3)]).areas(f.area());
        self.header(f, header);
        let Some((_, _, s)) = &self.last else {
            f.render_widget(
                Paragraph::new("waiting for the first interval…").block(Block::bordered()),
                body,
            );
            return;
        };
        for (pane, area) in panes::layout(&self.panes, self.focus, body) {
            let sort = self.sort_of(pane);
            let block = self.block(pane, s);
            match pane {
                Pane::Syscalls => {
                    let rows = s.get::<syscalls::Section>().map(|x| &x.rows[..]);
                    panes::syscalls(f, area, block, rows.unwrap_or(&[]), sort)
                }
                Pane::Threads => {
                    let rows = s
                        .get::<syscalls::Section>()
                        .and_then(|x| x.threads.as_deref());
                    panes::threads(f, area, block, rows.unwrap_or(&[]), sort)
                }
                Pane::Durability => {
                    let rows = s.get::<fsync::Section>().map(|x| &x.0[..]);
                    panes::durability(f, area, block, rows.unwrap_or(&[]), sort)
                }
                Pane::Mappings => match s.get::<MmapSection>() {
                    Some(m) => panes::mappings(f, area, block, m),
                    None => f.render_widget(block, area),
                },
                Pane::Faults => match s.get::<crate::faults::FaultsSection>() {
                    Some(x) => panes::faults(f, area, block, x),
                    None => f.render_widget(block, area),
                },
                Pane::Connections => match s.get::<TcpSection>() {
                    Some(t) => panes::connections(f, area, block, t, sort, &self.transitions),
                    None => f.render_widget(block, area),
                },
                Pane::Table(name) => match s.table_panes().find(|t| t.name == name) {
                    Some(t) => panes::table(f, area, block, &t),
                    None => f.render_widget(block, area),
                },
                Pane::Amqp => match s.get::<crate::amqp::AmqpSection>() {
                    Some(a) => panes::amqp(f, area, block, a, sort),
                    None => f.render_widget(block, area),
                },
            }
        }
    }

    fn block(&self, pane: Pane, s: &Sections) -> Block<'static> {
        let mut title = format!(" {} ", pane.name());
        match pane {
            Pane::Syscalls | Pane::Threads | Pane::Durability => title.push_str("· this interval "),
            Pane::Mappings => title.push_str("· rates over this interval "),
            Pane::Faults => title.push_str("· per mapped file, this interval "),
            Pane::Connections => {
                if let Some(t) = s.get::<TcpSection>() {
                    let open = crate::tcp::open_by_state(t)
                        .map_or_else(|| "0".into(), |(n, states)| format!("{n} ({states})"));
                    title.push_str(&format!(
                        "· open {open} · {} opened, {} closed this interval · {} listening ",
                        t.opened,
                        t.closed,
                        t.listening.len()
                    ));
                }
            }
            Pane::Table(name) => {
                if let Some(t) = s.table_panes().find(|t| t.name == name) {
                    title.push_str(&t.title);
                    title.push(' ');
                }
            }
            Pane::Amqp => {
                if let Some(a) = s.get::<crate::amqp::AmqpSection>() {
                    let t = &a.totals;
                    title.push_str(&format!(
                        "· this interval: {} published, {} confirmed, {} delivered, {} acked ",
                        t.published, t.confirmed, t.delivered, t.acked
                    ));
                    if a.tls_not_parsed > 0 {
                        title.push_str(&format!("· {} TLS, not parsed ", a.tls_not_parsed));
                    }
                }
            }
        }
        if let Some(sort) = pane.sorts().get(self.sort_of(pane)) {
            title.push_str(&format!("· by {sort} "));
        }
        let block = Block::bordered().title(title);
        if pane == self.focus {
            block.border_style(Style::new().bold())
        } else {
            block.border_style(Style::new().add_modifier(Modifier::DIM))
        }
    }

    fn sort_of(&self, pane: Pane) -> usize {
        self.sorts.get(&pane).copied().unwrap_or(0)
    }

    fn header(&self, f: &mut Frame, area: Rect) {
        let secs = self.started.elapsed().as_secs();
        let mut first = format!(
            "lavtrace · pid {} ({}, {} threads) · up {}:{:02}:{:02} · {}",
            self.pid,
            self.comm,
            self.threads,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.hooks
        );
        if self.paused {
            first.push_str(" · PAUSED");
        }
        let (lost, gc, cost) = match &self.last {
            Some((_, _, s)) => (
                s.lost_events.values().sum::<u64>(),
                s.get::<crate::gc::Section>()
                    .map(|g| format!("{} · ", g.headline()))
                    .unwrap_or_default(),
                // The totals; the per-program detail does not fit a line.
                s.overhead
                    .as_ref()
                    .map(|o| {
                        let full = overhead::text(o);
                        full.split(" (").next().unwrap_or_default().to_string()
                    })
                    .unwrap_or_default(),
            ),
            None => (0, String::new(), String::new()),
        };
        let sort = self
            .focus
            .sorts()
            .get(self.sort_of(self.focus))
            .copied()
            .unwrap_or("-");
        let limits = match self.last.as_ref().and_then(|(_, _, s)| s.limits.as_ref()) {
            Some(l) => {
                let connections = self
                    .last
                    .as_ref()
                    .and_then(|(_, _, s)| s.get::<TcpSection>())
                    .map(|t| t.connections.iter().filter(|c| c.open).count());
                let text = l.text(connections);
                let mut lines = text.lines();
                let mut line = lines.next().unwrap_or_default().to_string();
                // The warnings' own text does not fit the header: their count and what they
                // are about do, in red, and the text output and JSON carry the rest.
                if !l.warnings.is_empty() {
                    let what: Vec<String> = l
                        .warnings
                        .iter()
                        .map(|w| format!("{w:?}").to_lowercase())
                        .collect();
                    line.push_str(&format!(" · WARNING: {} near the limit", what.join(", ")));
                    Line::from(line).style(Style::new().red().bold())
                } else {
                    Line::from(line)
                }
            }
            None => Line::from("LIMITS  …"),
        };
        let mut keys = format!(
            "[q]uit  [tab] focus: {}  [s]ort: {sort}  [p]ause",
            self.focus.name()
        );
        let mut lines = vec![
            Line::from(first).bold(),
            Line::from(format!("lost events: {lost} · {gc}{cost}")),
            limits,
        ];
        // Its own line (the header has room for five): the bound must not be cut off.
        if let Some(r) = &self.recorder {
            lines.push(Line::from(r.clone()));
            keys.push_str("  [d]ump now");
        }
        lines.push(Line::from(keys).style(Style::new().add_modifier(Modifier::DIM)));
        f.render_widget(Paragraph::new(lines), area);
    }
}

#[cfg(test)]
mod tests;
