//! The report's Environment: the target's own binary's version, and the OS.

use std::{fs, process::Command, time::Duration};

use super::run;

const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Environment {
    pub exe: String,
    /// First line of `exe --version`, or why there is none.
    pub version: Result<String, String>,
    /// The binary is LavinMQ: named lavinmq and printing a bare version (`2.9.1`).
    pub is_lavinmq: bool,
    pub os_release: String,
    pub uname: String,
}

impl Environment {
    pub fn of(pid: u32) -> Environment {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).map_or_else(
            |_| "unknown".to_string(),
            |p| p.to_string_lossy().into_owned(),
        );
        // /proc/PID/exe, not the path: the binary the target runs, even if replaced on disk.
        let version = run::output(
            Command::new(format!("/proc/{pid}/exe")).arg("--version"),
            VERSION_TIMEOUT,
        )
        .and_then(|out| {
            out.lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .ok_or_else(|| "printed nothing".to_string())
        });
        let is_lavinmq = version.as_deref().is_ok_and(is_bare_version)
            && exe
                .rsplit('/')
                .next()
                .is_some_and(|n| n.trim_end_matches(" (deleted)").starts_with("lavinmq"));
        let os_release = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| pretty_name(&t))
            .unwrap_or_else(|| "unknown (/etc/os-release unreadable)".into());
        let uname = run::output(Command::new("uname").arg("-a"), VERSION_TIMEOUT)
            .map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_string());
        Environment {
            exe,
            version,
            is_lavinmq,
            os_release,
            uname,
        }
    }

    /// The version line for report.md, saying plainly when the target is not LavinMQ.
    pub fn version_line(&self) -> String {
        match (&self.version, self.is_lavinmq) {
            (Ok(v), true) => format!("LavinMQ {v}"),
            (Ok(v), false) => format!("not LavinMQ: `{} --version` printed `{v}`", self.exe),
            (Err(e), _) => format!("unknown: `{} --version`: {e}", self.exe),
        }
    }
}

/// `2.9.1`, `1.0.1-beta.2`: what `lavinmq --version` prints.
fn is_bare_version(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_os_names_parse() {
        assert!(is_bare_version("2.9.1"));
        assert!(is_bare_version("1.0.1-beta.2"));
        assert!(!is_bare_version("lavtrace 0.1.0"));
        assert!(!is_bare_version("sleep (GNU coreutils) 9.1"));
        assert_eq!(
            pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn our_own_binary_is_not_lavinmq() {
        let env = Environment::of(std::process::id());
        assert!(!env.is_lavinmq);
        assert!(env.version_line().starts_with("not LavinMQ") || env.version.is_err());
    }
}
