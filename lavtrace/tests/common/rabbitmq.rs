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
    /// The management plugin's HTTP port (`start_with_management`).
    pub management: Option<u16>,
    pub dir: tempfile::TempDir,
    launcher: Child,
}

impl RabbitMq {
    pub fn start() -> RabbitMq {
        RabbitMq::launch(false)
    }

    /// With the management plugin: its HTTP API is the ground truth of `api`.
    pub fn start_with_management() -> RabbitMq {
        RabbitMq::launch(true)
    }

    fn launch(management: bool) -> RabbitMq {
        assert!(
            Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
            "rabbitmq-server is not installed: run `cargo xtask setup` (it installs Debian's package)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, dist_port) = (super::free_port(), super::free_port());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-local");
        let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
        let management = management.then(super::free_port);
        let launcher = Command::new(script)
            .arg(dir.path())
            .arg(port.to_string())
            .arg(dist_port.to_string())
            .args(management.map(|p| p.to_string()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting RabbitMQ");
        let mut broker = RabbitMq {
            pid: 0,
            port,
            management,
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
                && management.is_none_or(|m| TcpStream::connect(("127.0.0.1", m)).is_ok())
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

    /// `GET /api/PATH` of the management API (guest/guest), as JSON.
    pub fn api(&self, path: &str) -> serde_json::Value {
        use std::io::{Read as _, Write as _};
        let port = self.management.expect("started with the management plugin");
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("management port");
        // guest:guest, base64.
        write!(
            s,
            "GET /api/{path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
        assert!(head.contains(" 200 "), "{head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
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
