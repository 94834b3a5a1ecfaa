//! LavinMQ's on-disk names and `definitions.amqp` records, written as a real broker writes them
//! (measured on LavinMQ 2.9.1: `../shared/lavinmq-facts.md`, "Names on disk"): directories are
//! sha1(name) in hex; definitions.amqp is a u32 schema version, then AMQP 0-9-1 method frames
//! whose integers are in the machine's byte order, not AMQP's wire order. One copy for the
//! workload that writes them and for lavtrace, which reads them back (`lavtrace/src/lavinmq`).

pub const EXCHANGE_CLASS: u16 = 40;
pub const EXCHANGE_DECLARE: u16 = 10;
pub const QUEUE_CLASS: u16 = 50;
pub const QUEUE_DECLARE: u16 = 10;
pub const QUEUE_DELETE: u16 = 40;
/// AMQP's frame-end octet.
pub const FRAME_END: u8 = 0xCE;
/// type u8 + channel u16 + size u32.
pub const FRAME_HEADER: usize = 7;

/// sha1 of `name` as LavinMQ names its directories: 40 lowercase hex digits.
pub fn dir_hash(name: &str) -> String {
    sha1_smol::Sha1::from(name).digest().to_string()
}

/// One definitions.amqp record as LavinMQ writes it (machine byte order), for the workload
/// and the tests: `payload` is the arguments after class and method.
pub fn frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let size = (4 + args.len()) as u32;
    let mut f = Vec::with_capacity(FRAME_HEADER + 4 + args.len() + 1);
    f.push(1); // a method frame
    f.extend_from_slice(&0u16.to_ne_bytes()); // channel 0
    f.extend_from_slice(&size.to_ne_bytes());
    f.extend_from_slice(&class.to_ne_bytes());
    f.extend_from_slice(&method.to_ne_bytes());
    f.extend_from_slice(args);
    f.push(FRAME_END);
    f
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

/// exchange.declare (40,10): reserved u16, exchange, type, bits, empty table.
pub fn exchange_declare(name: &str, kind: &str) -> Vec<u8> {
    let mut args = 0u16.to_ne_bytes().to_vec();
    shortstr(&mut args, name);
    shortstr(&mut args, kind);
    args.push(0b10); // durable
    args.extend_from_slice(&0u32.to_ne_bytes());
    frame(EXCHANGE_CLASS, EXCHANGE_DECLARE, &args)
}

/// queue.declare (50,10): reserved u16, queue, bits, empty table.
pub fn queue_declare(name: &str) -> Vec<u8> {
    let mut args = 0u16.to_ne_bytes().to_vec();
    shortstr(&mut args, name);
    args.push(0b10); // durable
    args.extend_from_slice(&0u32.to_ne_bytes());
    frame(QUEUE_CLASS, QUEUE_DECLARE, &args)
}

/// queue.delete (50,40): reserved u16, queue, bits.
pub fn queue_delete(name: &str) -> Vec<u8> {
    let mut args = 0u16.to_ne_bytes().to_vec();
    shortstr(&mut args, name);
    args.push(0);
    frame(QUEUE_CLASS, QUEUE_DELETE, &args)
}

/// The schema version definitions.amqp starts with.
pub const DEFINITIONS_VERSION: u32 = 1;
