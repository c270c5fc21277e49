//! The command line: `daena-trace-agent [--config FILE]` runs the agent,
//! `daena-trace-agent check --config FILE` validates and prints the effective config,
//! `daena-trace-agent healthcheck [--config FILE]` asks a running agent whether it is ready.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use daena_trace_agent::app::Agent;
use daena_trace_agent::config::{Config, parse_listen_addr};
use daena_trace_agent::telemetry;
use daena_trace_agent::telemetry::reload::ReloadHandle;

/// An OTLP trace sidecar for Daena services: receives spans over gRPC (4317) and
/// HTTP (4318), batches them and forwards them to Jaeger, Tempo or Grafana Cloud.
#[derive(Debug, Parser)]
#[command(name = "daena-trace-agent", version, about)]
pub struct Cli {
    /// The YAML config file; without one the agent listens on 127.0.0.1:4317/4318 and
    /// exports to OTEL_EXPORTER_OTLP_ENDPOINT, or to the console when that is unset.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error); overrides telemetry.log_level.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates the config and prints the effective config with secrets masked; exits 1 on errors.
    Check,
    /// Asks the agent running with this config whether it is ready (`GET /readyz` on
    /// telemetry.endpoint) and prints one line; exits 0 when ready, 1 when not ready or
    /// unreachable, 2 when the config is bad.
    Healthcheck,
}

/// The exit code of `healthcheck` for a config it cannot use.
const BAD_CONFIG: u8 = 2;
/// How long `healthcheck` waits for the whole answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Cli {
    /// Runs the chosen command and returns the process exit code.
    pub fn execute(self) -> ExitCode {
        let lookup = |name: &str| std::env::var(name).ok();
        let config = match Config::load(self.config.as_deref(), &lookup) {
            Ok(config) => config,
            Err(errors) => {
                eprintln!("{errors}");
                // 1 means "not ready" to a health check: a bad config must not look like it.
                return match self.command {
                    Some(Command::Healthcheck) => ExitCode::from(BAD_CONFIG),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        match self.command {
            Some(Command::Check) => {
                let source = self.config.as_ref().map_or_else(
                    || "no config file (defaults and environment)".to_owned(),
                    |p| p.display().to_string(),
                );
                say(&format!(
                    "# {source}: valid. Effective config (secrets masked):\n{}",
                    config.masked().to_yaml().trim_end()
                ));
                ExitCode::SUCCESS
            }
            Some(Command::Healthcheck) => healthcheck(&config),
            None => {
                let level = self
                    .log_level
                    .unwrap_or_else(|| config.telemetry.log_level.clone());
                telemetry::init_logging(&level, config.telemetry.log_format);
                match run(config, self.config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        tracing::error!("{error:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM; with a config `file`, SIGHUP reloads it.
fn run(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut agent = Agent::bind(config)
            .await?
            .releasing_memory_with(crate::malloc::release_free_memory);
        if let Some(file) = file {
            agent = agent.reloading_with(move || {
                Config::load(Some(&file), &|name: &str| std::env::var(name).ok())
            });
        }
        reload_on_hangup(agent.reload_handle());
        agent.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// Reloads the config on every SIGHUP (the agent logs the outcome).
fn reload_on_hangup(handle: ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be watched; reload with POST /-/reload instead");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let _ = handle.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(handle);
}

/// Probes `/readyz` on the config's telemetry endpoint and prints what it answered.
fn healthcheck(config: &Config) -> ExitCode {
    let Some(endpoint) = &config.telemetry.endpoint else {
        eprintln!("telemetry.endpoint is off (null): there is no /readyz to ask");
        return ExitCode::from(BAD_CONFIG);
    };
    let addr = match parse_listen_addr(endpoint) {
        Ok(addr) => probe_addr(addr),
        Err(message) => {
            eprintln!("telemetry.endpoint: {message}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                tokio::time::timeout(PROBE_TIMEOUT, get_readyz(addr))
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"))?
            })
        });
    match answer {
        Ok((200, _)) => {
            say("ready");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            say(&format!("not ready: {}", describe_not_ready(status, &body)));
            ExitCode::FAILURE
        }
        Err(error) => {
            say(&format!(
                "not ready: cannot reach http://{addr}/readyz: {error:#}"
            ));
            ExitCode::FAILURE
        }
    }
}

/// Where to reach a listener bound to `addr`: an unspecified address (`0.0.0.0`, `[::]`)
/// listens on loopback too.
fn probe_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `GET /readyz` over one HTTP/1.1 connection: the status and the body.
async fn get_readyz(addr: SocketAddr) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/readyz")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

/// The reasons of a `/readyz` answer on one line, e.g. `exporter tempo failing since
/// 2026-12-03T08:10:00.123Z: connection refused`; the raw answer when it is not the
/// agent's JSON.
fn describe_not_ready(status: u16, body: &[u8]) -> String {
    let reasons = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| answer.get("reasons")?.as_array().cloned());
    let Some(reasons) = reasons else {
        return format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        );
    };
    let text = |reason: &serde_json::Value, key: &str| {
        reason.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    };
    let described: Vec<String> = reasons
        .iter()
        .map(|reason| {
            if let Some(exporter) = text(reason, "exporter") {
                let mut line = format!("exporter {exporter}");
                if let Some(error) = text(reason, "last_error") {
                    let since = text(reason, "since").unwrap_or_default();
                    line.push_str(&format!(" failing since {since}: {error}"));
                }
                if reason.get("queue_full").and_then(|v| v.as_bool()) == Some(true) {
                    line.push_str(", queue full");
                }
                line
            } else {
                let agent = text(reason, "agent").unwrap_or_else(|| reason.to_string());
                match text(reason, "failure") {
                    Some(failure) => format!("agent {agent}: {failure}"),
                    None => format!("agent {agent}"),
                }
            }
        })
        .collect();
    described.join("; ")
}

/// Prints a line to standard output; a reader that went away (`check | head`) is not an
/// error worth a panic, which `println!` would make of it.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting without waiting for the exporters");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_probed_on_loopback() {
        let probe = |a: &str| probe_addr(a.parse().expect("address")).to_string();
        assert_eq!(probe("0.0.0.0:8888"), "127.0.0.1:8888");
        assert_eq!(probe("[::]:8888"), "[::1]:8888");
        assert_eq!(probe("10.1.2.3:8888"), "10.1.2.3:8888");
    }

    #[test]
    fn each_reason_is_one_phrase() {
        let body = br#"{"ready":false,"reasons":[{"agent":"stopping"},{"exporter":"tempo","last_error":"connection refused","since":"2026-12-03T08:10:00.123Z","queue_full":true}]}"#;
        assert_eq!(
            describe_not_ready(503, body),
            "agent stopping; exporter tempo failing since 2026-12-03T08:10:00.123Z: connection refused, queue full"
        );
        assert_eq!(
            describe_not_ready(404, b"Not Found\n"),
            "HTTP 404: Not Found"
        );
    }
}
