//! `--metrics ADDR`: where the endpoint listens. A bare port stays on the loopback address: a
//! tracer's figures (file names, peers) are not for the whole network unless the operator says
//! so by naming an address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const EXPECTED: &str = "expected PORT, :PORT or ADDRESS:PORT (e.g. 9464, 0.0.0.0:9464, [::1]:9464)";

/// Parses `9464`, `:9464` (both 127.0.0.1), `localhost:9464`, `0.0.0.0:9464`, `[::1]:9464`.
pub fn parse(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    let addr = if let Ok(port) = port_only.parse::<u16>() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else if let Some(port) = s.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| EXPECTED.to_string())?;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        s.parse::<SocketAddr>().map_err(|_| EXPECTED.to_string())?
    };
    if addr.port() == 0 {
        return Err("port 0 would pick a port nobody knows: name one (e.g. 9464)".into());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_stays_on_loopback() {
        assert_eq!(parse("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse(":9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            parse("localhost:9464"),
            Ok("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn a_named_address_is_used_as_given() {
        assert_eq!(parse("0.0.0.0:9464"), Ok("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(parse("[::1]:9464"), Ok("[::1]:9464".parse().unwrap()));
        assert_eq!(parse("[::]:80"), Ok("[::]:80".parse().unwrap()));
        assert_eq!(parse("10.1.2.3:9100"), Ok("10.1.2.3:9100".parse().unwrap()));
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "", ":", "x", "65536", "1.2.3.4", "::1:9464", "host:99", ":0", "0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("9464x").unwrap_err().contains("ADDRESS:PORT"));
    }
}
