//! A real RabbitMQ for the end-to-end tests (scripts/rabbitmq-local): bound to 127.0.0.1 on
//! free ports, its data under a temp dir, stopped when dropped (also when a test fails).

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const START_TIMEOUT: Duration = Duration::from_secs(90);

pub struct RabbitMq {
    /// The broker process (beam.smp), the one to trace.
    pub pid: u32,
    pub port: u16,
    pub dir: tempfile::TempDir,
    launcher: Child,
}

impl RabbitMq {
    pub fn start() -> RabbitMq {
        assert!(
            Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
            "rabbitmq-server is not installed: run `cargo xtask setup` (it installs Debian's package)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, dist_port) = (super::free_port(), super::free_port());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-local");
        let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
        let launcher = Command::new(script)
            .arg(dir.path())
            .arg(port.to_string())
            .arg(dist_port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting RabbitMQ");
        let mut broker = RabbitMq {
            pid: 0,
            port,
            dir,
            launcher,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = broker.launcher.try_wait().unwrap() {
                panic!("RabbitMQ exited ({status}) during start:\n{}", broker.log());
            }
            let pid = std::fs::read_to_string(broker.dir.path().join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if let Some(pid) = pid
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                broker.pid = pid;
                return broker;
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not accept AMQP within {START_TIMEOUT:?}:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("mnesia")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("launcher.log")).unwrap_or_default()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let pids = [self.pid as i32, self.launcher.id() as i32];
        for pid in pids.into_iter().filter(|&p| p > 0) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        if self.pid > 0 {
            // SAFETY: plain kill(2); the broker ignored SIGTERM for 30 s.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        // The port mapper the broker started; refuses to die while other nodes use it.
        let _ = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
