//! The kernels of the matrix: Debian's cloud kernel packages, fetched with `apt-get download`
//! through a private apt state (its own sources list, lists and cache) so the host's apt
//! configuration is never touched and nothing is installed on the host, then unpacked with
//! `dpkg -x` and cached outside the clone so repeated runs on one machine reuse them.

use std::{
    cmp::Ordering,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{output, status};

/// One entry of the matrix: the newest package whose name has this prefix and suffix.
pub struct Spec {
    pub name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian's stable kernel lines: bullseye's 5.10 (archived, so the newest stays 5.10.0-32),
/// bookworm's 6.1 and bookworm-security's 6.12 backport. Cloud flavours boot fastest under
/// TCG (few drivers, lz4/zstd compressed).
pub const MATRIX: &[Spec] = &[
    Spec {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    Spec {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    Spec {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
    },
];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
";

impl Spec {
    pub fn find(name: &str) -> Result<&'static Spec> {
        MATRIX.iter().find(|s| s.name == name).with_context(|| {
            let names: Vec<_> = MATRIX.iter().map(|s| s.name).collect();
            format!(
                "unknown kernel {name:?}; the matrix has {}",
                names.join(", ")
            )
        })
    }

    fn matches(&self, package: &str) -> bool {
        package.len() > self.prefix.len() + self.suffix.len()
            && package.starts_with(self.prefix)
            && package.ends_with(self.suffix)
    }
}

/// A kernel ready to boot.
pub struct Kernel {
    pub name: &'static str,
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `modules/<release>`: the modules the guest loads before the tests (see [`MODULES`]).
    pub modules: PathBuf,
}

/// Modules the tests need that Debian builds as modules, in load order: sock_diag's INET and
/// TCP handlers (lavtrace's tcp byte counters; a host loads them on demand, the guest has no
/// module tree to load from). Kept uncompressed, numbered for the order.
pub const MODULES: &[&str] = &["inet_diag", "tcp_diag"];

/// The kernel's module directory in the cache (`modules/<release>`), when it was kept.
fn modules_of(dir: &Path) -> Option<PathBuf> {
    let release = std::fs::read_dir(dir.join("modules"))
        .ok()?
        .flatten()
        .next()?;
    Some(release.path())
}

/// Where kernels and the private apt state live: outside the clone, kept between CI runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LAVTRACE_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/lavtrace-vm"))
}

/// The cached kernel for each spec, fetched first if there is none (or `refresh` asks for the
/// archive's newest). The archive is asked at most once.
pub fn get(specs: &[&'static Spec], refresh: bool) -> Result<Vec<Kernel>> {
    let mut apt = None;
    specs
        .iter()
        .map(|s| get_one(s, refresh, &mut apt))
        .collect()
}

fn get_one(spec: &'static Spec, refresh: bool, apt: &mut Option<Apt>) -> Result<Kernel> {
    let root = cache_dir();
    let kernels = root.join("kernels");
    if !refresh && let Some(kernel) = newest_cached(spec, &kernels)? {
        return Ok(kernel);
    }
    let apt = match apt {
        Some(apt) => apt,
        None => {
            let fresh = Apt::new(&root.join("apt"))?;
            fresh.update()?;
            apt.insert(fresh)
        }
    };
    let package = apt
        .packages()?
        .into_iter()
        .filter(|p| spec.matches(p))
        .max_by(|a, b| natural_cmp(a, b))
        .with_context(|| format!("no package {}*{} in the archive", spec.prefix, spec.suffix))?;
    let dir = kernels.join(&package);
    if !dir.join("vmlinuz").is_file() || modules_of(&dir).is_none() {
        fetch(apt, &package, &dir)?;
    }
    Ok(Kernel {
        name: spec.name,
        vmlinuz: dir.join("vmlinuz"),
        modules: modules_of(&dir).context("no modules kept")?,
        package,
    })
}

fn newest_cached(spec: &'static Spec, kernels: &Path) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(kernels) else {
        return Ok(None);
    };
    let newest = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| {
            let dir = kernels.join(p);
            spec.matches(p) && dir.join("vmlinuz").is_file() && modules_of(&dir).is_some()
        })
        .max_by(|a, b| natural_cmp(a, b));
    Ok(newest.and_then(|package| {
        let dir = kernels.join(&package);
        Some(Kernel {
            name: spec.name,
            vmlinuz: dir.join("vmlinuz"),
            modules: modules_of(&dir)?,
            package,
        })
    }))
}

/// Downloads the package and keeps only its kernel image (and config, to read options from)
/// and the [`MODULES`].
fn fetch(apt: &Apt, package: &str, dir: &Path) -> Result<()> {
    // Package names have dots: `with_extension` would cut them.
    let mut work = dir.as_os_str().to_owned();
    work.push(".partial");
    let work = PathBuf::from(work);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!("xtask vm: downloading {package}");
    status(
        apt.cmd("apt-get")
            .current_dir(&work)
            .args(["download", package]),
    )?;
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    let tree = work.join("tree");
    status(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
    let boot = tree.join("boot");
    for entry in std::fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let keep = if name.starts_with("vmlinuz-") {
            "vmlinuz"
        } else if name.starts_with("config-") {
            "config"
        } else {
            continue;
        };
        std::fs::rename(&path, work.join(keep))?;
    }
    if !work.join("vmlinuz").is_file() {
        bail!("{} has no /boot/vmlinuz-*", deb.display());
    }
    keep_modules(&tree, &work)?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::remove_file(&deb)?;
    // Last, so a half-done fetch is never taken for a cached kernel.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir).with_context(|| format!("renaming to {}", dir.display()))
}

/// Copies the [`MODULES`] from the package's tree to `work/modules/<release>/N-name.ko`,
/// decompressed (busybox insmod reads plain .ko). A module built into this kernel (none in
/// the tree) is skipped: nothing to load.
fn keep_modules(tree: &Path, work: &Path) -> Result<()> {
    let lib = tree.join("lib/modules");
    let lib = if lib.is_dir() {
        lib
    } else {
        tree.join("usr/lib/modules")
    };
    let release = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .next()
        .with_context(|| format!("no release under {}", lib.display()))?;
    let out = work.join("modules").join(release.file_name());
    std::fs::create_dir_all(&out)?;
    let ipv4 = release.path().join("kernel/net/ipv4");
    for (i, name) in MODULES.iter().enumerate() {
        let dest = out.join(format!("{i}-{name}.ko"));
        let plain = ipv4.join(format!("{name}.ko"));
        if plain.is_file() {
            std::fs::copy(&plain, &dest)?;
            continue;
        }
        for (ext, tool) in [("xz", "xz"), ("zst", "zstd")] {
            let packed = ipv4.join(format!("{name}.ko.{ext}"));
            if packed.is_file() {
                let file = std::fs::File::create(&dest)?;
                let st = Command::new(tool)
                    .arg("-dc")
                    .arg(&packed)
                    .stdout(file)
                    .status()
                    .with_context(|| format!("running {tool}"))?;
                if !st.success() {
                    bail!("{tool} -dc {} failed ({st})", packed.display());
                }
            }
        }
    }
    Ok(())
}

/// apt with every path of its state redirected into `root`: lists, package cache, sources.
/// The host's `/etc/apt` is read for the rest (proxy, keyrings), never written.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(root: &Path) -> Result<Apt> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.d",
            "preferences.d",
        ] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let sources = root.join("sources.list");
        std::fs::write(&sources, SOURCES)
            .with_context(|| format!("writing {}", sources.display()))?;
        let d = |p: &str| root.join(p).display().to_string();
        let options = [
            ("Dir::State", d("")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::Cache", d("cache")),
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("sources.d")),
            ("Dir::Etc::Preferences", d("preferences")),
            ("Dir::Etc::PreferencesParts", d("preferences.d")),
            // Only the package lists: no translations, AppStream or Contents indexes.
            ("Acquire::Languages", "none".into()),
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled",
                "false".into(),
            ),
            // Downloads land in our own directory, which the _apt user cannot write to.
            ("APT::Sandbox::User", "root".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect();
        Ok(Apt { options })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options).arg("-q");
        cmd
    }

    fn update(&self) -> Result<()> {
        eprintln!(
            "xtask vm: apt-get update (private state under {})",
            cache_dir().display()
        );
        let out = self
            .cmd("apt-get")
            .arg("update")
            .output()
            .context("running apt-get update")?;
        if !out.status.success() {
            bail!(
                "apt-get update (private state) failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn packages(&self) -> Result<Vec<String>> {
        let names = output(self.cmd("apt-cache").args(["pkgnames", "linux-image-"]))?;
        Ok(names.lines().map(str::to_string).collect())
    }
}

/// Package names compared with their digit runs as numbers: 6.1.0-9 < 6.1.0-47.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_abi_numerically() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-47-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned-dbg",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
        ];
        let spec = Spec::find("6.1").unwrap();
        let newest = names
            .iter()
            .filter(|n| spec.matches(n))
            .max_by(|a, b| natural_cmp(a, b));
        assert_eq!(newest, Some(&"linux-image-6.1.0-56-cloud-amd64-unsigned"));
        let spec = Spec::find("6.12").unwrap();
        assert!(spec.matches("linux-image-6.12.117+deb12-cloud-amd64-unsigned"));
        assert!(!spec.matches("linux-image-6.1.0-56-cloud-amd64-unsigned"));
        assert!(Spec::find("4.19").is_err());
    }
}
