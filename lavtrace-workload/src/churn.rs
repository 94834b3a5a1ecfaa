//! Mode `tcp-churn`: N short connections to the target's own listener, one at a time, each
//! closed before the next opens. The target holds both ends, so every connection is two
//! sockets of the target: a connect and an accept, each with a known history.
//!
//! | connections | client (connect side)                         | server (accept side)        |
//! |-------------|-----------------------------------------------|-----------------------------|
//! | even (0, 2, …) | shuts down first, reads the server's FIN:  | reads EOF, closes:          |
//! |             | CLOSE→SYN_SENT→ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE | SYN_RECV→ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE |
//! | odd         | resets (SO_LINGER 0): …→ESTABLISHED→CLOSE     | reads the reset: SYN_RECV→ESTABLISHED→CLOSE |
//!
//! The server reads EOF before it closes, so its FIN acknowledges the client's and no
//! simultaneous close (CLOSING) can happen. The listener exists before `ready`.

use std::{
    io::{ErrorKind, Read as _, Result},
    net::{Shutdown, TcpListener, TcpStream},
};

use crate::tcp::{linger_zero, read_eof};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Connections to open and close after `go`.
    #[arg(long, default_value_t = 2000)]
    pub connections: u64,
    /// After `done`, wait for stdin to close (a tracer can be read before the target exits).
    #[arg(long)]
    pub hold: bool,
    /// The listener's port on 127.0.0.1 (0: any free one), e.g. the same port number in two
    /// network namespaces.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

pub fn prepare(args: &Args) -> Result<impl FnOnce() -> Result<()>> {
    let listener = TcpListener::bind(("127.0.0.1", args.port))?;
    let n = args.connections;
    Ok(move || {
        let addr = listener.local_addr()?;
        for i in 0..n {
            let mut client = TcpStream::connect(addr)?;
            let (mut server, _) = listener.accept()?;
            if i % 2 == 0 {
                client.shutdown(Shutdown::Write)?;
                read_eof(&mut server)?;
                drop(server);
                read_eof(&mut client)?;
            } else {
                linger_zero(&client)?;
                drop(client);
                let mut buf = [0u8; 1];
                match server.read(&mut buf) {
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                    other => {
                        return Err(std::io::Error::other(format!(
                            "connection {i}: expected a reset, got {other:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    })
}
