//! Where a running broker keeps its data.
//!
//! Facts (LavinMQ 2.9.1, "Config and CLI" and "Data directory"): `--data-dir DIR` on the
//! command line, or `-c FILE` naming an INI file whose `[main]` section has `data_dir`; the
//! default is /var/lib/lavinmq; the data dir holds `.lock` and `vhosts.json`.

use std::{fs, path::Path};

/// Where the default broker keeps its data.
pub const DEFAULT: &str = "/var/lib/lavinmq";

/// How the data dir was found, for the operator to judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    CommandLine,
    ConfigFile,
    OpenFile,
    Default,
}

/// The data dir of process `pid` as it sees it: from its command line or config file, else
/// from the `.lock` or `vhosts.json` it holds open, else the default if it exists there.
///
/// The open files come before the default: they are what the process is actually using,
/// while /var/lib/lavinmq may belong to another broker on the same host.
pub fn find(pid: u32) -> Option<(String, Source)> {
    let proc = format!("/proc/{pid}");
    let (args, cwd) = cmdline_and_cwd(pid)?;
    let cwd = cwd.as_str();
    match from_args(&args) {
        Some(Given::DataDir(d)) => return Some((absolute(cwd, &d), Source::CommandLine)),
        Some(Given::Config(c)) => {
            let file = format!("{proc}/root{}", absolute(cwd, &c));
            if let Some(d) = fs::read_to_string(file).ok().and_then(|t| from_ini(&t)) {
                return Some((absolute(cwd, &d), Source::ConfigFile));
            }
        }
        None => {}
    }
    if let Some(d) = open_data_files(pid).into_iter().next() {
        return Some((d, Source::OpenFile));
    }
    let default = Path::new(&proc).join("root").join(&DEFAULT[1..]);
    default
        .join("vhosts.json")
        .exists()
        .then(|| (DEFAULT.to_string(), Source::Default))
}

#[derive(Debug, PartialEq, Eq)]
enum Given {
    DataDir(String),
    Config(String),
}

/// `--data-dir DIR`, `--data-dir=DIR`, `-c FILE`, `--config FILE`, `--config=FILE`; the data
/// dir wins over a config file, as an explicit flag overrides the file.
fn from_args(args: &[String]) -> Option<Given> {
    flag(args, &["--data-dir"])
        .map(Given::DataDir)
        .or_else(|| flag(args, CONFIG_FLAGS).map(Given::Config))
}

const CONFIG_FLAGS: &[&str] = &["-c", "--config"];

/// The value of the first of `names` in `args`, as `NAME VALUE` or `NAME=VALUE`.
fn flag(args: &[String], names: &[&str]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        names.iter().find_map(|n| {
            if a == n {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(n)
                    .and_then(|r| r.strip_prefix('='))
                    .map(str::to_string)
            }
        })
    })
}

/// The config file named on `pid`'s command line (`-c FILE`), absolute as the process sees it.
pub fn config_path(pid: u32) -> Option<String> {
    let (args, cwd) = cmdline_and_cwd(pid)?;
    flag(&args, CONFIG_FLAGS).map(|c| absolute(&cwd, &c))
}

fn cmdline_and_cwd(pid: u32) -> Option<(Vec<String>, String)> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let cwd = cwd
        .as_deref()
        .and_then(Path::to_str)
        .unwrap_or("/")
        .to_string();
    Some((args, cwd))
}

/// `[main] data_dir = ...`
fn from_ini(text: &str) -> Option<String> {
    let ini = ini::Ini::load_from_str(text).ok()?;
    let dir = ini.get_from(Some("main"), "data_dir")?.trim();
    (!dir.is_empty()).then(|| dir.to_string())
}

fn absolute(cwd: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", cwd.trim_end_matches('/'))
    }
}

/// The directories of the open `.lock` and `vhosts.json` files, in fd order.
fn open_data_files(pid: u32) -> Vec<String> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(u32, String)> = fds
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            let (dir, name) = target.to_str()?.rsplit_once('/')?;
            matches!(name, ".lock" | "vhosts.json").then(|| (fd, dir.to_string()))
        })
        .collect();
    fds.sort();
    fds.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_are_read_in_both_spellings() {
        let dd = |a: &[&str]| from_args(&args(a));
        assert_eq!(
            dd(&["lavinmq", "--data-dir", "/d"]),
            Some(Given::DataDir("/d".into()))
        );
        assert_eq!(
            dd(&["lavinmq", "--data-dir=/e", "-c", "/x.ini"]),
            Some(Given::DataDir("/e".into()))
        );
        assert_eq!(
            dd(&["lavinmq", "-c", "/etc/lavinmq/lavinmq.ini"]),
            Some(Given::Config("/etc/lavinmq/lavinmq.ini".into()))
        );
        assert_eq!(
            dd(&["lavinmq", "--config=c.ini"]),
            Some(Given::Config("c.ini".into()))
        );
        assert_eq!(dd(&["lavinmq", "--data-dir"]), None);
        assert_eq!(dd(&["lavinmq"]), None);
    }

    #[test]
    fn the_ini_main_section_gives_the_data_dir() {
        let ini = "[main]\nlog_level = info\ndata_dir = /srv/lmq\n\n[amqp]\nport = 5672\n";
        assert_eq!(from_ini(ini).as_deref(), Some("/srv/lmq"));
        assert_eq!(from_ini("[amqp]\ndata_dir = /nope\n"), None);
        assert_eq!(from_ini("[main\n=="), None);
    }

    #[test]
    fn an_open_lock_file_names_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".lock");
        let _held = fs::File::create(&lock).unwrap();
        // Another test of this binary may hold a data dir's .lock open at the same time.
        let want = dir.path().to_str().unwrap().to_string();
        let open = open_data_files(std::process::id());
        assert!(open.contains(&want), "{open:?}");
        let (found, source) = find(std::process::id()).unwrap();
        assert_eq!(source, Source::OpenFile);
        assert!(open.contains(&found));
    }

    #[test]
    fn relative_paths_are_taken_from_the_cwd() {
        assert_eq!(absolute("/home/x", "data"), "/home/x/data");
        assert_eq!(absolute("/", "data"), "/data");
        assert_eq!(absolute("/home/x", "/abs"), "/abs");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::fuzz::config(1000))]

        /// Any command line (the target's, so anyone's) and any config file text.
        #[test]
        fn any_command_line_and_ini_text(
            args in prop::collection::vec(
                prop_oneof![
                    Just("--data-dir".to_string()),
                    Just("-c".to_string()),
                    Just("--config=".to_string()),
                    any::<String>(),
                ],
                0..6,
            ),
            ini in prop_oneof![
                any::<String>(),
                any::<String>().prop_map(|v| format!("[main]\ndata_dir = {v}\n")),
            ],
            cwd in any::<String>(),
        ) {
            if let Some(Given::DataDir(d) | Given::Config(d)) = from_args(&args) {
                let _ = absolute(&cwd, &d);
            }
            let _ = from_ini(&ini);
        }
    }
}
