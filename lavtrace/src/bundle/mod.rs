//! `lavtrace bundle`: everything the LavinMQ troubleshooting guide asks a bug reporter for,
//! collected in one run and written as one .tar.gz (see README.md, "Bundle").
//!
//! The trace runs as two `lavtrace trace` children of this executable (JSON and text, side by
//! side), so the bundle holds exactly what `trace` writes; the rest is read from /proc, the
//! target's own files and journald while they run.

mod config;
mod environment;
pub(crate) mod html;
mod logs;
mod report;
pub(crate) mod resources;
mod run;
pub(crate) mod summary;
mod usr1;

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use crate::{cli::BundleArgs, target::Target};

/// How long a trace child may take past `--duration` (load, attach, the last interval).
const TRACE_GRACE: Duration = Duration::from_secs(60);
/// Where usr1.txt's own capture ends and journald's copy of the dump begins.
pub const JOURNAL_SEPARATOR: &str = "\n----- journalctl -u lavinmq -----\n";

/// Everything collected, before it is written.
pub struct Bundle {
    pub pid: u32,
    pub comm: String,
    pub taken_at: u64,
    pub env: environment::Environment,
    pub usr1: usr1::Capture,
    pub config: Result<config::ConfigFile, String>,
    pub resources: resources::Resources,
    pub journal: Result<String, String>,
    pub stack_traces: Vec<String>,
    pub trace: summary::TraceSummary,
    pub trace_error: Option<String>,
}

pub fn run(args: &BundleArgs) -> Result<()> {
    let target = Target::resolve(&args.target)?;
    let pid = target.pid;
    let taken_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "lavtrace-bundle-{}-{pid}-{taken_at}.tar.gz",
            target.comm
        ))
    });
    // Before anything starts: an unwritable -o or a missing privilege is one clear line now,
    // not after the whole --duration.
    let partial = out.with_extension("partial");
    let file = std::fs::File::create(&partial)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    if let Err(e) = crate::kernel::preflight() {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let json = TraceChild::spawn(pid, args.duration, &["--format", "json"])?;
    let text = TraceChild::spawn(pid, args.duration, &["--format", "text", "--no-tui"])?;
    // The dump first: answering it touches the target's memory (its handler's stack and
    // buffers), and the resource figures should be the ones /proc shows afterwards.
    let usr1 = usr1::capture(pid);
    let resources = resources::Resources::of(pid);
    let journal = logs::journal();
    let stack_traces = journal
        .as_deref()
        .map(logs::stack_traces)
        .unwrap_or_default();
    let config = config::collect(pid);
    let env = environment::Environment::of(pid);
    let deadline = Instant::now() + args.duration + TRACE_GRACE;
    let (json_out, json_err) = json.finish(deadline);
    let (text_out, text_err) = text.finish(deadline);
    let trace_error = json_err.or(text_err);
    let bundle = Bundle {
        pid,
        comm: target.comm.clone(),
        taken_at,
        env,
        usr1,
        config,
        resources,
        journal,
        stack_traces,
        trace: summary::TraceSummary::parse(&json_out),
        trace_error,
    };
    if let Err(e) = write(&bundle, file, &partial, &out, &json_out, &text_out) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    for n in &bundle.usr1.notes {
        eprintln!("lavtrace: {n}");
    }
    if let Some(e) = &bundle.trace_error {
        eprintln!("lavtrace: trace: {e}");
    }
    println!("{}", out.display());
    Ok(())
}

fn write(
    b: &Bundle,
    file: std::fs::File,
    partial: &Path,
    out: &Path,
    trace_json: &str,
    trace_txt: &str,
) -> Result<()> {
    let title = format!("{} (pid {})", b.comm, b.pid);
    let html = html::render(&title, &b.env.version_line(), &b.trace)?;
    let mut usr1 = b.usr1.text.clone();
    if let Ok(j) = &b.journal {
        usr1.push_str(JOURNAL_SEPARATOR);
        usr1.push_str(j);
    }
    let mut logs_txt = match &b.journal {
        Ok(j) => j.clone(),
        Err(e) => format!("no journal logs: {e}\n"),
    };
    logs_txt.push_str("\n----- Unhandled exception stack traces -----\n");
    for st in &b.stack_traces {
        logs_txt.push_str(st);
        logs_txt.push_str("\n\n");
    }
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("report.md".into(), report::markdown(b).into_bytes()),
        ("report.html".into(), html.into_bytes()),
        ("usr1.txt".into(), usr1.into_bytes()),
        ("logs.txt".into(), logs_txt.into_bytes()),
        ("resources.txt".into(), b.resources.text().into_bytes()),
        ("trace.json".into(), trace_json.as_bytes().to_vec()),
        ("trace.txt".into(), trace_txt.as_bytes().to_vec()),
    ];
    match &b.config {
        Ok(c) => {
            let name = c.path.rsplit('/').next().unwrap_or("config");
            files.push((format!("config/{name}"), c.text.clone().into_bytes()));
        }
        Err(e) => files.push(("config/NONE.txt".into(), format!("{e}\n").into_bytes())),
    }
    let top = out
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .unwrap_or("lavtrace-bundle")
        .to_string();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(b.taken_at);
        tar.append_data(&mut header, format!("{top}/{name}"), bytes.as_slice())
            .with_context(|| format!("writing {name} into {}", partial.display()))?;
    }
    tar.into_inner()?.finish()?.flush()?;
    std::fs::rename(partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// One `lavtrace trace` child, its output read on threads so neither pipe fills.
struct TraceChild {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl TraceChild {
    fn spawn(pid: u32, duration: Duration, format: &[&str]) -> Result<TraceChild> {
        let exe = std::env::current_exe().context("finding lavtrace's own executable")?;
        let mut child = Command::new(exe)
            .args(["trace", "--pid", &pid.to_string(), "--duration"])
            .arg(humantime::format_duration(duration).to_string())
            .args(format)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lavtrace trace")?;
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = r.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let stdout = read(Box::new(child.stdout.take().context("trace stdout")?));
        let stderr = read(Box::new(child.stderr.take().context("trace stderr")?));
        Ok(TraceChild {
            child,
            stdout,
            stderr,
        })
    }

    /// Its stdout, and what went wrong if it failed or was late.
    fn finish(mut self, deadline: Instant) -> (String, Option<String>) {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    // Our own child, late: stop it.
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        let problem = match status {
            Some(st) if st.success() => None,
            Some(st) => Some(format!("{st}: {}", err.trim())),
            None => Some("did not finish in time and was stopped".into()),
        };
        (out, problem)
    }
}
