//! `--metrics ADDR`: an OpenMetrics / Prometheus text endpoint at `GET /metrics`, so one
//! lavtrace per broker node is scraped by the Prometheus the operators already run. Figures
//! are cumulative since attach, folded in from each interval's sections (see `model`), and
//! carry the target's `pid` and `comm`. With `--follow`, a restarted target replaces the
//! previous instance's series (new `pid`), as a restarted exporter would.
//!
//! The address is bound before anything is attached: a taken port is one error line and
//! exit 6, not a tracer that runs without the endpoint it was asked for.

pub mod addr;
mod encode;
mod model;

use std::{net::SocketAddr, thread};

use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use tracing::{debug, info};

use crate::{error::Fatal, output::Sections, target::Target};
use encode::Current;
use model::Instance;

/// OpenMetrics 1.0 text, for scrapers that ask for it (Prometheus does).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for everything else (curl, older scrapers).
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running endpoint; clones feed the same one.
#[derive(Clone)]
pub struct Exporter {
    current: Current,
}

impl Exporter {
    /// Binds `addr` and serves it on its own thread until lavtrace exits.
    pub fn serve(addr: SocketAddr) -> Result<Exporter> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Fatal::Metrics(format!("--metrics {addr}: cannot listen: {e}")))?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("serving metrics on {addr}"))?;
        let current = Current::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(current.clone()));
        thread::Builder::new()
            .name("lavtrace-metrics".into())
            .spawn(move || serve(&server, &registry))
            .context("starting the metrics thread")?;
        info!(%addr, "serving metrics at /metrics");
        Ok(Exporter { current })
    }

    /// Folds one interval's sections into the figures of `target`'s instance.
    pub fn observe(&self, target: &Target, sections: &Sections) {
        let mut current = self.current.lock();
        let instance = match current.as_mut() {
            Some(i) if i.pid == target.pid => i,
            _ => current.insert(Instance::new(target.pid, &target.comm)),
        };
        instance.add(sections);
    }
}

fn serve(server: &tiny_http::Server, registry: &Registry) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let response = match (request.method(), path) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                let openmetrics = request.headers().iter().any(|h| {
                    h.field.equiv("Accept")
                        && h.value.as_str().contains("application/openmetrics-text")
                });
                match exposition(registry, openmetrics) {
                    Ok(body) => tiny_http::Response::from_string(body).with_header(content_type(
                        if openmetrics { OPENMETRICS } else { PROMETHEUS },
                    )),
                    Err(_) => {
                        tiny_http::Response::from_string("encoding failed\n").with_status_code(500)
                    }
                }
            }
            (_, "/metrics") => tiny_http::Response::from_string("GET only\n").with_status_code(405),
            _ => tiny_http::Response::from_string("lavtrace: metrics are at /metrics\n")
                .with_status_code(404),
        };
        if let Err(e) = request.respond(response) {
            debug!("metrics client went away: {e}");
        }
    }
}

fn content_type(value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes("Content-Type", value).expect("a valid header")
}

fn exposition(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
    }
    Ok(body)
}
