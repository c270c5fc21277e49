//! The command line: `daena-trace-agent [--config FILE]` runs the agent,
//! `daena-trace-agent check --config FILE` validates and prints the effective config.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use daena_trace_agent::app::Agent;
use daena_trace_agent::config::Config;
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
}

impl Cli {
    /// Runs the chosen command and returns the process exit code.
    pub fn execute(self) -> ExitCode {
        let lookup = |name: &str| std::env::var(name).ok();
        let config = match Config::load(self.config.as_deref(), &lookup) {
            Ok(config) => config,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::FAILURE;
            }
        };
        match self.command {
            Some(Command::Check) => {
                let source = self.config.as_ref().map_or_else(
                    || "no config file (defaults and environment)".to_owned(),
                    |p| p.display().to_string(),
                );
                println!("# {source}: valid. Effective config (secrets masked):");
                println!("{}", config.masked().to_yaml().trim_end());
                ExitCode::SUCCESS
            }
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
