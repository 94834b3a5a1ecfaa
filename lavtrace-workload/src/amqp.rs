//! Mode `amqp`: a real AMQP 0-9-1 client with known behaviour, against a real broker.
//!
//! After the go line: `--marker-getppid` getppid calls (so a test can prove the client's own
//! syscalls are not counted as the broker's), then `--connections` connections, each
//! publishing its share of `--messages` persistent messages of `--size` bytes to one durable
//! queue with publisher confirms; then the first connection consumes and acks them all; then
//! every connection is closed by the client. Prints one `stats {json}` line before `done`.
//!
//! With `--transient`, lavinmqperf's default load: non-persistent messages, a non-durable
//! queue, no confirms.
//!
//! With `--held N`, N connections are opened before `ready` (a broker with many long-lived
//! connections when the tracer attaches): the publishing load then runs on the first
//! `--connections` of them, and all N are closed at the end. Their client ports are in
//! /proc for whoever wants to check them.

use std::io::Write as _;

use futures_lite::StreamExt as _;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Broker URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value_t = 3)]
    pub connections: u32,
    #[arg(long, default_value_t = 1000)]
    pub messages: u32,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value = "lavtrace-e2e")]
    pub queue: String,
    #[arg(long, default_value_t = 0)]
    pub marker_getppid: u64,
    /// Publishes in flight before their confirms are awaited (1: each publish waits).
    #[arg(long, default_value_t = 1)]
    pub confirm_window: usize,
    /// Connections opened before `ready` and kept until the end; the load uses the first
    /// `--connections` of them instead of new ones.
    #[arg(long, default_value_t = 0)]
    pub held: u32,
    /// After the load and its stats line, wait for a line on stdin before closing the
    /// connections (a tracer can look at them all still open).
    #[arg(long)]
    pub wait_before_close: bool,
    /// After consuming, on a new confirm channel: 3 publishes to a queue with
    /// x-max-length 1 and x-overflow reject-publish (1 confirmed, 2 nacked), a basic.get of
    /// its message (acked), 3 publishes to a third queue (confirmed) and 3 basic.gets from
    /// it: one rejected, one nacked, one acked.
    #[arg(long)]
    pub extras: bool,
    /// lavinmqperf's default load instead: non-persistent messages to a non-durable queue,
    /// without publisher confirms (`confirmed` stays 0).
    #[arg(long)]
    pub transient: bool,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    connections: u32,
    /// Every connection closed at the end (`--held`, or the `--connections` when none held).
    held: u32,
    published: u64,
    confirmed: u64,
    consumed: u64,
    /// `--extras`: publishes nacked by the broker, basic.get-ok received, and the gets'
    /// acks, rejects and nacks.
    nacked: u64,
    got: u64,
    get_acked: u64,
    get_rejected: u64,
    body_bytes: u64,
    /// Wall time of the whole exchange (connect to close).
    elapsed_ns: u64,
}

/// The whole mode, start protocol included (ready, go, the exchange, done).
pub fn run(args: &Args) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.held > 0 {
        raise_fd_limit(args.held)?;
    }
    let held = runtime
        .block_on(connect(&args.url, args.held))
        .map_err(std::io::Error::other)?;
    lavtrace_common::start::announce_ready_then_wait_go()?;
    for _ in 0..args.marker_getppid {
        // SAFETY: no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let started = std::time::Instant::now();
    let mut stats = runtime
        .block_on(exchange(args, held, started))
        .map_err(std::io::Error::other)?;
    stats.elapsed_ns = started.elapsed().as_nanos() as u64;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "stats {}", serde_json::to_string(&stats)?)?;
    stdout.flush()?;
    drop(stdout);
    lavtrace_common::start::announce_done()
}

/// See `Args::extras`.
async fn extras(args: &Args, conn: &Connection, stats: &mut Stats) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let overflow = format!("{}-overflow", args.queue);
    let mut limits = FieldTable::default();
    limits.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    limits.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(
        overflow.as_str().into(),
        QueueDeclareOptions::default(),
        limits,
    )
    .await?;
    let body = vec![b'e'; args.size];
    let publish = |queue: String| {
        let ch = ch.clone();
        let body = body.clone();
        async move {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?
            .await
        }
    };
    for _ in 0..3 {
        let confirmation = publish(overflow.clone()).await?;
        stats.published += 1;
        if confirmation.is_ack() {
            stats.confirmed += 1;
        } else {
            stats.nacked += 1;
        }
    }
    let get = |queue: String| {
        let ch = ch.clone();
        async move {
            ch.basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
        }
    };
    // A queue of its own: the main one still has the consumer, which would take them.
    let gets = format!("{}-gets", args.queue);
    ch.queue_declare(
        gets.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    if let Some(m) = get(overflow.clone()).await? {
        stats.got += 1;
        m.delivery.ack(BasicAckOptions::default()).await?;
        stats.get_acked += 1;
    }
    for _ in 0..3 {
        if publish(gets.clone()).await?.is_ack() {
            stats.confirmed += 1;
        }
        stats.published += 1;
    }
    for i in 0..3 {
        let Some(m) = get(gets.clone()).await? else {
            continue;
        };
        stats.got += 1;
        match i {
            0 => {
                m.delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                stats.get_rejected += 1;
            }
            1 => {
                m.delivery
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    })
                    .await?;
                stats.get_rejected += 1;
            }
            _ => {
                m.delivery.ack(BasicAckOptions::default()).await?;
                stats.get_acked += 1;
            }
        }
    }
    for q in [&overflow, &gets] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    ch.close(200, "extras".into()).await?;
    Ok(())
}

/// A socket per connection, and the few fds of the process besides.
fn raise_fd_limit(connections: u32) -> std::io::Result<()> {
    let want = u64::from(connections) + 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to a rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    lim.rlim_cur = want.max(lim.rlim_cur);
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: a valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

async fn connect(url: &str, n: u32) -> Result<Vec<Connection>, lapin::Error> {
    let mut connections = Vec::with_capacity(n as usize);
    for _ in 0..n {
        connections.push(Connection::connect(url, ConnectionProperties::default()).await?);
    }
    Ok(connections)
}

/// `started`: when the exchange began (the stats line printed before the close carries the
/// time until then).
async fn exchange(
    args: &Args,
    held: Vec<Connection>,
    started: std::time::Instant,
) -> Result<Stats, lapin::Error> {
    let mut stats = Stats::default();
    let wanted = args.connections.max(1) as usize;
    let mut connections = if held.is_empty() {
        connect(&args.url, wanted as u32).await?
    } else {
        held
    };
    // The load runs on the first `wanted`; any others are only held (and closed at the end).
    let idle = connections.split_off(wanted.min(connections.len()));
    stats.connections = connections.len() as u32;
    let body = vec![b'm'; args.size];
    let properties = BasicProperties::default().with_delivery_mode(if args.transient {
        1
    } else {
        2 // persistent
    });
    let per_connection = args.messages.div_ceil(stats.connections);
    let mut remaining = args.messages;
    for (i, conn) in connections.iter().enumerate() {
        let channel = conn.create_channel().await?;
        if i == 0 {
            channel
                .queue_declare(
                    args.queue.as_str().into(),
                    if args.transient {
                        QueueDeclareOptions::default()
                    } else {
                        QueueDeclareOptions::durable()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        // Without confirm mode, each publish's confirmation resolves at once as not requested.
        if !args.transient {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        let n = per_connection.min(remaining);
        remaining -= n;
        let mut in_flight = Vec::with_capacity(args.confirm_window.max(1));
        for sent in 1..=n {
            in_flight.push(
                channel
                    .basic_publish(
                        "".into(),
                        args.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone(),
                    )
                    .await?,
            );
            stats.published += 1;
            stats.body_bytes += body.len() as u64;
            if in_flight.len() >= args.confirm_window.max(1) || sent == n {
                for confirm in in_flight.drain(..) {
                    if confirm.await?.is_ack() {
                        stats.confirmed += 1;
                    }
                }
            }
        }
        channel.close(200, "published".into()).await?;
    }

    let channel = connections[0].create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "lavtrace-workload".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while stats.consumed < stats.published {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        delivery?.ack(BasicAckOptions::default()).await?;
        stats.consumed += 1;
    }
    if args.extras {
        extras(args, &connections[0], &mut stats).await?;
    }
    channel
        .queue_delete(args.queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    channel.close(200, "consumed".into()).await?;
    if args.wait_before_close {
        stats.elapsed_ns = started.elapsed().as_nanos() as u64;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "stats {}",
            serde_json::to_string(&stats).unwrap_or_default()
        );
        let _ = stdout.flush();
        drop(stdout);
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    for conn in connections.iter().chain(&idle) {
        conn.close(200, "bye".into()).await?;
    }
    stats.held = idle.len() as u32 + stats.connections;
    Ok(stats)
}
