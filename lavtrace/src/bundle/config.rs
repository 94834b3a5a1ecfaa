//! The broker's configuration file(s), as the bundle carries them: found through the target's
//! own view of the filesystem, and with every secret replaced before it is written.
//!
//! Facts (LavinMQ 2.9.1, "Config and CLI"): `lavinmq -c FILE` (default
//! /etc/lavinmq/lavinmq.ini), an INI file; its secrets are `default_password_hash` in `[main]`,
//! TLS key paths, and the etcd credentials in `[clustering]`.

use std::fs;

use crate::lavinmq::data_dir;

/// The config file a packaged broker reads when started without `-c`.
pub const DEFAULT: &str = "/etc/lavinmq/lavinmq.ini";
/// What a secret's value becomes.
pub const REDACTED: &str = "[redacted by lavtrace]";
/// Bigger files are not config files.
const MAX_BYTES: u64 = 1 << 20;

/// Parts of a key that make its value a secret, or the location of one (a TLS key file's
/// path says where to steal it from).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "key",
    "token",
    "credential",
    "passphrase",
    "auth",
];

/// One config file: its path as the target sees it, and its redacted text.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: String,
    pub text: String,
    pub redacted: usize,
}

/// The config file of `pid` (its `-c` path, else the default), read through /proc/PID/root.
/// Err: why there is none, for report.md.
pub fn collect(pid: u32) -> Result<ConfigFile, String> {
    let path = data_dir::config_path(pid).unwrap_or_else(|| DEFAULT.to_string());
    let disk = format!("/proc/{pid}/root{path}");
    let meta = fs::metadata(&disk).map_err(|e| format!("no config file at {path} ({e})"))?;
    if !meta.is_file() || meta.len() > MAX_BYTES {
        return Err(format!(
            "{path} is not a config file (not a file, or over 1 MiB)"
        ));
    }
    let raw = fs::read(&disk).map_err(|e| format!("reading {path}: {e}"))?;
    let (text, redacted) = redact(&String::from_utf8_lossy(&raw));
    Ok(ConfigFile {
        path,
        text,
        redacted,
    })
}

/// The INI text with every secret's value replaced, comments and layout kept (commented-out
/// settings too: `;default_password_hash = ...` is still a hash). Returns the count replaced.
pub fn redact(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let (new, n) = redact_line(body);
        count += n;
        out.push_str(&new);
        out.push_str(end);
    }
    (out, count)
}

fn redact_line(line: &str) -> (String, usize) {
    let trimmed = line.trim_start();
    let comment = trimmed.starts_with([';', '#']);
    let setting = trimmed.trim_start_matches([';', '#', ' ', '\t']);
    let Some(eq) = setting.find(['=', ':']) else {
        return redact_urls(line);
    };
    let key = setting[..eq].trim().to_ascii_lowercase();
    if key.starts_with('[') || key.is_empty() {
        return (line.to_string(), 0);
    }
    if SECRET_WORDS.iter().any(|w| key.contains(w)) {
        let value_at = line.len() - setting.len() + eq + 1;
        let value = line[value_at..].trim();
        if value.is_empty() && !comment {
            return (line.to_string(), 0);
        }
        return (format!("{} {REDACTED}", &line[..value_at]), 1);
    }
    redact_urls(line)
}

/// `scheme://user:password@host` anywhere in a line (etcd endpoints, AMQP URIs): the user
/// info goes.
fn redact_urls(line: &str) -> (String, usize) {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut count = 0;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let host_end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == ',' || c == '"')
            .unwrap_or(tail.len());
        match tail[..host_end].rfind('@') {
            Some(userinfo) => {
                out.push_str(REDACTED);
                out.push_str(&tail[userinfo..host_end]);
                count += 1;
            }
            None => out.push_str(&tail[..host_end]),
        }
        rest = &tail[host_end..];
    }
    out.push_str(rest);
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: &str = "s3cr3t-MARKER";

    #[test]
    fn every_secret_of_a_lavinmq_ini_is_redacted() {
        let ini = format!(
            "; LavinMQ config\n[main]\ndata_dir = /var/lib/lavinmq\n\
             default_user = admin\ndefault_password_hash = +pHuxkR9fCyrrwXjOD4BP4XbzO3l8LJr8YkThMgJ0yVHFRE+{MARK}\n\
             ;default_password_hash=old{MARK}\n\
             tls_cert = /etc/lavinmq/cert.pem\ntls_key = /etc/lavinmq/private/{MARK}.pem\n\
             [amqp]\nport = 5672\n\
             [clustering]\nenabled = true\netcd_endpoints = http://root:{MARK}@10.0.0.1:2379,http://10.0.0.2:2379\n\
             etcd_password: {MARK}\nempty_secret =\n"
        );
        let (out, n) = redact(&ini);
        assert!(!out.contains(MARK), "{out}");
        assert_eq!(n, 5, "{out}");
        // Everything else is kept as written.
        for kept in [
            "; LavinMQ config\n",
            "[main]\n",
            "data_dir = /var/lib/lavinmq\n",
            "default_user = admin\n",
            "tls_cert = /etc/lavinmq/cert.pem\n",
            "port = 5672\n",
            "etcd_endpoints = http://[redacted by lavtrace]@10.0.0.1:2379,http://10.0.0.2:2379\n",
            "empty_secret =\n",
        ] {
            assert!(out.contains(kept), "{kept:?} in {out}");
        }
        assert!(out.contains(&format!("default_password_hash = {REDACTED}\n")));
        assert!(out.contains(&format!(";default_password_hash= {REDACTED}\n")));
        assert!(out.ends_with("empty_secret =\n"));
        assert_eq!(out.lines().count(), ini.lines().count());
    }

    #[test]
    fn a_config_without_secrets_is_unchanged() {
        let ini = "[main]\nlog_level = info\n[mgmt]\nport = 15672";
        assert_eq!(redact(ini), (ini.to_string(), 0));
    }
}
