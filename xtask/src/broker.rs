//! `cargo xtask broker`: a throwaway RabbitMQ on 127.0.0.1 for tracing by hand.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub fn run(port: u16) -> Result<()> {
    crate::setup::debian_packages(&["rabbitmq-server"])?;
    let dir = std::env::temp_dir().join(format!("lavtrace-rabbitmq-{port}"));
    let _ = std::fs::remove_file(dir.join("pid"));
    let mut child = Command::new(crate::workspace_root().join("scripts/rabbitmq-local"))
        .arg(&dir)
        .arg(port.to_string())
        .arg((port as u32 + 20000).min(65535).to_string())
        .spawn()
        .context("starting RabbitMQ")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let pid = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "RabbitMQ exited during start ({status}); logs in {}",
                dir.join("log").display()
            );
        }
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if let (true, Ok(pid)) = (ready, std::fs::read_to_string(dir.join("pid"))) {
            break pid.trim().to_string();
        }
        if Instant::now() > deadline {
            bail!("RabbitMQ did not accept AMQP on port {port} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "\nxtask: RabbitMQ (beam.smp) pid {pid} on amqp://guest:guest@127.0.0.1:{port}/%2f, data in {}\n\
         xtask:   trace it:  target/release/lavtrace trace --pid {pid}\n\
         xtask:   load it:   echo go | target/release/lavtrace workload amqp --url amqp://guest:guest@127.0.0.1:{port}/%2f --messages 20000\n\
         xtask: Ctrl-C stops it.",
        dir.display()
    );
    let status = child.wait()?;
    eprintln!("xtask: RabbitMQ stopped ({status})");
    Ok(())
}
