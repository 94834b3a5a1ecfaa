//! Fuzzing of what lavtrace reads from the kernel and from other people's files: ring records,
//! /proc, tracefs, the broker's data dir. None of it may panic lavtrace, and a record that does
//! not decode is counted (as the family's lost events). proptest, in the unit tests: a fixed
//! seed (a failure is the same failure on every machine) and a bounded number of cases, so the
//! whole set stays a few seconds. The tests that need a module's private parsers live in that
//! module and take their config from here.

use std::mem::size_of;

use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, RngSeed},
};

/// Fixed seed, `cases` cases, no failure files written into the source tree.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x1a57_5eed),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// Bytes of any length up to `max`.
pub fn garbage(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// A record of exactly `T`'s size with random contents but for `head` at offset 0 (its kind,
/// and for a call its number): what a kernel program of another version, or a bit flip,
/// would send. It decodes, and the family must cope with whatever the fields say.
pub fn shaped<T>(head: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (head, vec(any::<u8>(), size_of::<T>())).prop_map(|(head, mut bytes)| {
        let n = head.len().min(bytes.len());
        bytes[..n].copy_from_slice(&head[..n]);
        bytes
    })
}

/// Text that looks like /proc or tracefs lines: the separators and digits those files use, a
/// few hostile characters, and sometimes anything at all.
pub fn proc_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(" ".to_string()),
        Just(":".to_string()),
        Just(";".to_string()),
        Just("\t".to_string()),
        Just("\n".to_string()),
        Just("-".to_string()),
        Just("/".to_string()),
        Just("[".to_string()),
        Just("\\".to_string()),
        Just("\u{1b}[2J".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n:x}")),
        any::<i64>().prop_map(|n| n.to_string()),
        vec(any::<char>(), 1..6).prop_map(String::from_iter),
    ];
    vec(piece, 0..12).prop_map(|p| p.concat())
}

/// The syscall numbers the storage families act on, and a few they do not.
pub fn storage_nr() -> impl Strategy<Value = u32> {
    use crate::storage::nr;
    prop_oneof![
        prop::sample::select(vec![
            nr::FSYNC,
            nr::FDATASYNC,
            nr::SYNCFS,
            nr::SYNC,
            nr::SYNC_FILE_RANGE,
            nr::MSYNC,
            nr::MMAP,
            nr::MUNMAP,
            nr::MREMAP,
            nr::MADVISE,
            nr::BRK,
        ]),
        any::<u32>(),
    ]
}

/// One storage ring record: garbage, or a record of a known kind's size with random fields.
pub fn storage_record() -> impl Strategy<Value = Vec<u8>> {
    use lavtrace_common::storage::{CallEvent, FdEvent, OpenEvent, kind};
    let head = |k: u32| Just(k.to_ne_bytes().to_vec());
    prop_oneof![
        garbage(size_of::<OpenEvent>() + 8),
        shaped::<CallEvent>((storage_nr()).prop_map(|nr| {
            let mut h = kind::CALL.to_ne_bytes().to_vec();
            h.extend(nr.to_ne_bytes());
            h
        })),
        shaped::<OpenEvent>(head(kind::OPEN)),
        shaped::<FdEvent>(head(kind::CLOSE)),
        shaped::<FdEvent>(head(kind::DUP)),
    ]
}

#[cfg(test)]
mod tests {
    use lavtrace_common::{
        dump::DumpChunk,
        storage::{CallEvent, FdEvent, OpenEvent},
        tcp::TcpEvent,
    };

    use super::*;
    use crate::{ringbuf::decode, storage, tcp};

    proptest! {
        #![proptest_config(config(2000))]

        /// Every wire type decodes from exactly its size and from nothing else.
        #[test]
        fn ring_records_decode_only_at_their_size(bytes in garbage(600)) {
            fn check<T: aya::Pod>(bytes: &[u8]) {
                assert_eq!(decode::<T>(bytes).is_some(), bytes.len() == size_of::<T>());
                if bytes.len() >= size_of::<T>() {
                    assert!(decode::<T>(&bytes[..size_of::<T>()]).is_some());
                }
            }
            check::<CallEvent>(&bytes);
            check::<OpenEvent>(&bytes);
            check::<FdEvent>(&bytes);
            check::<TcpEvent>(&bytes);
            check::<DumpChunk>(&bytes);
        }

    }

    proptest! {
        // Each case seeds a model from this process's /proc (fds, maps): the costly part.
        #![proptest_config(config(300))]

        /// The shared storage bookkeeping (descriptors, mappings, names) takes any sequence of
        /// records, decodable or not.
        #[test]
        fn storage_records_never_panic_the_model(records in vec(storage_record(), 0..64)) {
            let mut model = storage::Model::seed(std::process::id());
            for bytes in &records {
                let Some(record) = storage::decode_record(bytes) else { continue };
                if let Some(call) = model.apply(record) {
                    let _ = model.map_change(&call);
                    let _ = model.maps.lookup(call.args[0]);
                    let _ = model.fds.path(call.args[0] as i32);
                }
            }
        }

    }

    proptest! {
        #![proptest_config(config(500))]

        /// The connection table takes any sequence of TCP records.
        #[test]
        fn tcp_records_never_panic_the_table(
            records in vec(
                prop_oneof![
                    garbage(size_of::<TcpEvent>() + 8),
                    // kind 1..=5 (the known ones and one past), sk from a small set so that
                    // records meet the same connection.
                    shaped::<TcpEvent>((0u64..4, 0u32..6).prop_map(|(sk, kind)| {
                        let mut h = 0u64.to_ne_bytes().to_vec();
                        h.extend(sk.to_ne_bytes());
                        h.extend(kind.to_ne_bytes());
                        h
                    })),
                ],
                0..64,
            )
        ) {
            let mut table = tcp::table::Table::default();
            for bytes in &records {
                if let Some(e) = decode::<TcpEvent>(bytes) {
                    table.apply(&e);
                }
            }
            let _ = table.live().count();
            let _ = table.needs_local_ports();
        }

        /// /proc/net/tcp{,6} lines, shaped or not.
        #[test]
        fn proc_net_tcp_lines_never_panic(
            line in prop_oneof![
                proc_text(),
                (vec("[0-9A-F]{1,33}:[0-9A-F]{1,5}", 2), "[0-9A-F]{1,3}", vec("[0-9]{1,12}", 7))
                    .prop_map(|(addrs, st, rest)| {
                        format!("0: {} {} {st} {}", addrs[0], addrs[1], rest.join(" "))
                    }),
            ],
            v6 in any::<bool>(),
        ) {
            let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u16;
            if let Some(sock) = tcp::procfs::parse_line(&line, family) {
                let _ = sock.key();
            }
        }
    }
}
