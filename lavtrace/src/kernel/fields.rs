//! Tracepoint record fields read from the running kernel: the tracefs
//! `events/<category>/<event>/format` file of every event a loaded family reads gives each
//! field's offset and size. The offsets become read-only globals of the eBPF object (the
//! tables: `lavtrace_common::<family>::FIELDS`), so no program reads a record at an offset
//! nobody checked on this kernel.

use std::{
    collections::{HashMap, hash_map::Entry},
    path::Path,
};

use lavtrace_common::field::FieldSpec;

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of a format file's text. Lines that are not well-formed field lines are skipped:
/// a kernel that adds a new kind of line must not break the fields that are there.
pub fn parse(text: &str) -> Vec<Field> {
    text.lines().filter_map(parse_line).collect()
}

/// `field:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;`
fn parse_line(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size) = (None, None);
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    // The name is the declaration's last word, without an array suffix or pointer stars
    // (`__u8 saddr[4]`, `const void * skaddr`, `__data_loc char[] name`).
    let last = decl?.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    if name.is_empty() {
        return None;
    }
    Some(Field {
        name: name.to_string(),
        offset: offset?,
        size: size?,
    })
}

/// The globals to set before loading: offsets (`u32`) and presence flags of optional fields
/// (`u8`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub offsets: Vec<(&'static str, u32)>,
    pub flags: Vec<(&'static str, u8)>,
}

/// Checks every spec of `families` (family name, its table) against the format texts
/// `read(category, event)` returns, and gives the globals to set, or one line saying which
/// field of which event does not match what the family's programs read. An event this kernel
/// does not have (NotFound) is skipped: attaching to it fails anyway, and the family's hook
/// table decides whether that is fatal.
pub fn resolve(
    families: impl IntoIterator<Item = (&'static str, &'static [FieldSpec])>,
    mut read: impl FnMut(&str, &str) -> std::io::Result<String>,
) -> Result<Overrides, String> {
    let mut formats: HashMap<(&str, &str), Option<Vec<Field>>> = HashMap::new();
    let mut offsets: Vec<(&'static str, u32, &'static FieldSpec)> = Vec::new();
    let mut flags: Vec<(&'static str, u8)> = Vec::new();
    for (family, specs) in families {
        for spec in specs {
            let event = format!("{}:{}", spec.category, spec.event);
            let fields = match formats.entry((spec.category, spec.event)) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => slot.insert(match read(spec.category, spec.event) {
                    Ok(text) => Some(parse(&text)),
                    // No such event on this kernel: its programs cannot attach, and the
                    // family's hook table says so (or falls back) when it tries.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(format!(
                            "cannot read the format of tracepoint {event} (the {family} family reads it): {e}"
                        ));
                    }
                }),
            };
            let Some(fields) = fields else {
                if let Some(flag) = spec.present {
                    flags.push((flag, 0));
                }
                continue;
            };
            let found = fields.iter().find(|f| f.name == spec.field);
            let offset = match (found, spec.present) {
                (Some(f), _) if f.size == spec.size => f.offset,
                (Some(f), _) => {
                    return Err(format!(
                        "field {} of tracepoint {event} is {} bytes on this kernel, the {family} family reads {}",
                        spec.field, f.size, spec.size
                    ));
                }
                (None, Some(flag)) => {
                    flags.push((flag, 0));
                    continue;
                }
                (None, None) => {
                    return Err(format!(
                        "tracepoint {event} has no field {} on this kernel (the {family} family reads it)",
                        spec.field
                    ));
                }
            };
            if let Some(flag) = spec.present {
                flags.push((flag, 1));
            }
            match offsets.iter().find(|(g, _, _)| *g == spec.global) {
                Some((_, other, first)) if *other != offset => {
                    return Err(format!(
                        "field {} is at offset {offset} in tracepoint {event} but {} is at {other} in {}:{}; \
                         one program reads both at one offset",
                        spec.field, first.field, first.category, first.event
                    ));
                }
                Some(_) => {}
                None => offsets.push((spec.global, offset, spec)),
            }
        }
    }
    flags.dedup();
    Ok(Overrides {
        offsets: offsets.into_iter().map(|(g, o, _)| (g, o)).collect(),
        flags,
    })
}

/// `resolve` against this kernel's tracefs.
pub fn from_tracefs(
    tracefs: &Path,
    families: impl IntoIterator<Item = (&'static str, &'static [FieldSpec])>,
) -> Result<Overrides, String> {
    resolve(families, |category, event| {
        std::fs::read_to_string(
            tracefs
                .join("events")
                .join(category)
                .join(event)
                .join("format"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Format texts as this machine's kernel (6.18) prints them.
    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu dport=%hu\", REC->family, REC->protocol, REC->sport, REC->dport
";

    const SYS_ENTER: &str = "name: sys_enter
ID: 443
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;

print fmt: \"NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)\", REC->id, REC->args[0], REC->args[1], REC->args[2], REC->args[3], REC->args[4], REC->args[5]
";

    const SYS_EXIT: &str = "name: sys_exit
ID: 442
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: \"NR %ld = %ld\", REC->id, REC->ret
";

    fn reader(
        texts: &'static [(&'static str, &'static str)],
    ) -> impl FnMut(&str, &str) -> std::io::Result<String> {
        move |category, event| {
            let key = format!("{category}:{event}");
            texts
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, t)| t.to_string())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn parses_names_offsets_and_sizes() {
        let fields = parse(INET_SOCK_SET_STATE);
        assert_eq!(fields.len(), 15);
        let get = |n: &str| fields.iter().find(|f| f.name == n).cloned().unwrap();
        assert_eq!(get("common_type").offset, 0);
        assert_eq!(
            get("skaddr"),
            Field {
                name: "skaddr".into(),
                offset: 8,
                size: 8
            }
        );
        assert_eq!((get("saddr").offset, get("saddr").size), (32, 4));
        assert_eq!((get("daddr_v6").offset, get("daddr_v6").size), (56, 16));
        let args = parse(SYS_ENTER).into_iter().find(|f| f.name == "args");
        assert_eq!(args.map(|f| (f.offset, f.size)), Some((16, 48)));
    }

    #[test]
    fn odd_lines_are_skipped_not_fatal() {
        let text = "format:\n\tfield:int ok;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:;\toffset:x;\n\
                    \tfield:__data_loc char[] name;\toffset:12;\tsize:4;\tsigned:0;\nfield:int nosize;\toffset:3;\n";
        let names: Vec<_> = parse(text).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["ok", "name"]);
        assert!(parse("").is_empty());
    }

    #[test]
    fn resolves_a_family_table() {
        let texts = &[
            ("raw_syscalls:sys_enter", SYS_ENTER),
            ("raw_syscalls:sys_exit", SYS_EXIT),
        ];
        let got = resolve(
            [("syscalls", lavtrace_common::syscalls::FIELDS)],
            reader(texts),
        );
        assert_eq!(
            got,
            Ok(Overrides {
                offsets: vec![("SYSCALLS_ID_OFFSET", 8), ("SYSCALLS_RET_OFFSET", 16)],
                flags: vec![],
            })
        );
    }

    #[test]
    fn a_missing_field_is_a_clear_error() {
        let without_ret =
            SYS_EXIT.replace("\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n", "");
        let texts: &'static [(&str, &str)] = Box::leak(Box::new([
            ("raw_syscalls:sys_enter", SYS_ENTER),
            ("raw_syscalls:sys_exit", &*without_ret.leak()),
        ]));
        let err = resolve(
            [("syscalls", lavtrace_common::syscalls::FIELDS)],
            reader(texts),
        );
        assert_eq!(
            err,
            Err("tracepoint raw_syscalls:sys_exit has no field ret on this kernel (the syscalls family reads it)".into())
        );
    }

    #[test]
    fn a_field_of_another_size_is_a_clear_error() {
        let narrow = SYS_ENTER.replace(
            "field:long id;\toffset:8;\tsize:8",
            "field:int id;\toffset:8;\tsize:4",
        );
        let texts: &'static [(&str, &str)] = Box::leak(Box::new([
            ("raw_syscalls:sys_enter", &*narrow.leak()),
            ("raw_syscalls:sys_exit", SYS_EXIT),
        ]));
        let err = resolve(
            [("syscalls", lavtrace_common::syscalls::FIELDS)],
            reader(texts),
        );
        assert_eq!(
            err,
            Err("field id of tracepoint raw_syscalls:sys_enter is 4 bytes on this kernel, the syscalls family reads 8".into())
        );
    }

    #[test]
    fn an_unreadable_format_names_the_event() {
        let denied = |_: &str, _: &str| -> std::io::Result<String> {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        };
        let err = resolve([("syscalls", lavtrace_common::syscalls::FIELDS)], denied).unwrap_err();
        assert!(
            err.starts_with("cannot read the format of tracepoint raw_syscalls:sys_enter (the syscalls family reads it)"),
            "{err}"
        );
    }

    #[test]
    fn an_absent_event_is_left_to_the_hook_table() {
        let texts = &[("raw_syscalls:sys_exit", SYS_EXIT)];
        let got = resolve(
            [("syscalls", lavtrace_common::syscalls::FIELDS)],
            reader(texts),
        );
        assert_eq!(
            got.map(|o| o.offsets),
            Ok(vec![("SYSCALLS_RET_OFFSET", 16)])
        );
    }

    #[test]
    fn one_global_for_two_events_needs_one_offset() {
        const SPECS: &[FieldSpec] = &[
            FieldSpec::new("G", "raw_syscalls", "sys_enter", "args", 48),
            FieldSpec::new("G", "raw_syscalls", "sys_exit", "ret", 8),
        ];
        let texts = &[
            ("raw_syscalls:sys_enter", SYS_ENTER),
            ("raw_syscalls:sys_exit", SYS_EXIT),
        ];
        assert_eq!(
            resolve([("x", SPECS)], reader(texts)).map(|o| o.offsets),
            Ok(vec![("G", 16)])
        );
        const CLASH: &[FieldSpec] = &[
            FieldSpec::new("G", "raw_syscalls", "sys_enter", "id", 8),
            FieldSpec::new("G", "raw_syscalls", "sys_exit", "ret", 8),
        ];
        let err = resolve([("x", CLASH)], reader(texts)).unwrap_err();
        assert!(
            err.contains("at offset 16 in tracepoint raw_syscalls:sys_exit but id is at 8"),
            "{err}"
        );
    }

    #[test]
    fn an_optional_field_sets_its_flag() {
        const SPECS: &[FieldSpec] = &[
            FieldSpec::new("A", "raw_syscalls", "sys_exit", "ret", 8).optional("HAS_RET"),
            FieldSpec::new("B", "raw_syscalls", "sys_exit", "err", 4).optional("HAS_ERR"),
        ];
        let texts = &[("raw_syscalls:sys_exit", SYS_EXIT)];
        assert_eq!(
            resolve([("x", SPECS)], reader(texts)),
            Ok(Overrides {
                offsets: vec![("A", 16)],
                flags: vec![("HAS_RET", 1), ("HAS_ERR", 0)],
            })
        );
    }

    /// Every family's table against this machine's kernel: what `lavtrace` will do at load.
    #[test]
    fn this_kernel_has_every_field_the_programs_read() {
        let Some(tracefs) = crate::kernel::tracefs::tracefs_dir() else {
            return; // no tracefs mounted (not root): nothing to compare with
        };
        let got = from_tracefs(
            Path::new(tracefs),
            [
                ("syscalls", lavtrace_common::syscalls::FIELDS),
                ("fsync", lavtrace_common::storage::FIELDS),
                ("tcp", lavtrace_common::tcp::FIELDS),
            ],
        )
        .unwrap();
        let at = |g: &str| got.offsets.iter().find(|(n, _)| *n == g).map(|(_, o)| *o);
        assert_eq!(at("STORAGE_NR_OFFSET"), Some(8));
        assert_eq!(at("STORAGE_ARGS_OFFSET"), Some(16));
        assert_eq!(at("TCP_SS_DADDR_V6"), Some(56));
        assert_eq!(at("TCP_DESTROY_SKADDR"), Some(8));
        let distinct: std::collections::HashSet<_> = [
            lavtrace_common::syscalls::FIELDS,
            lavtrace_common::storage::FIELDS,
            lavtrace_common::tcp::FIELDS,
        ]
        .iter()
        .flat_map(|t| t.iter().map(|s| s.global))
        .collect();
        let optional_missing = got.flags.iter().filter(|(_, v)| *v == 0).count();
        assert_eq!(got.offsets.len() + optional_missing, distinct.len());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{config, proc_text};

    /// A format file's line, well-formed or nearly.
    fn format_line() -> impl Strategy<Value = String> {
        prop_oneof![
            proc_text(),
            (
                "[a-z_ *\\[\\]]{0,24}",
                any::<i64>(),
                any::<i64>(),
                "[a-z:0-9;]{0,12}"
            )
                .prop_map(|(decl, off, size, tail)| {
                    format!("\tfield:{decl};\toffset:{off};\tsize:{size};{tail}")
                }),
        ]
    }

    proptest! {
        #![proptest_config(config(200))]

        /// Any format text parses to fields or nothing, and checking every family's table
        /// against it gives the globals or one error line, never a panic.
        #[test]
        fn any_format_text_resolves_or_errs(
            lines in prop::collection::vec(format_line(), 0..16),
        ) {
            let text = lines.join("\n");
            for f in parse(&text) {
                prop_assert!(!f.name.is_empty());
            }
            let families = [
                ("storage", lavtrace_common::storage::FIELDS),
                ("tcp", lavtrace_common::tcp::FIELDS),
                ("dump", lavtrace_common::dump::FIELDS),
            ];
            if let Err(line) = resolve(families, |_, _| Ok(text.clone())) {
                prop_assert!(!line.contains('\n'), "{line}");
            }
        }
    }
}
