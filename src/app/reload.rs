//! A config reload: the new file is loaded and validated, and what a running agent can
//! change is swapped in (the processor stages, each exporter's transport settings); what
//! only a restart applies refuses the reload as a whole, so the running config is never
//! half-replaced.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigErrors, ExporterProtocol};
use crate::exporter::signals::SignalsExporter;
use crate::exporter::{AnyExporter, SwappableExporter};
use crate::pipeline::StageSwap;
use crate::processor;
use crate::telemetry::Metrics;
use crate::telemetry::mix::DaenaMix;
use crate::telemetry::reload::{ReloadError, ReloadOutcome};

/// Loads the config file again, as the agent was started with it.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// The running config and the parts of the agent a reload replaces.
pub(super) struct Reloader {
    pub(super) current: Config,
    pub(super) source: Option<ConfigSource>,
    pub(super) stages: Vec<mpsc::Sender<StageSwap>>,
    /// How many pipelines share the stages' limits (`pipeline.shards`, which needs a restart).
    pub(super) shards: usize,
    pub(super) exporters: BTreeMap<String, SwappableExporter>,
    /// The Daena signals' OTLP metrics export, rebuilt when its settings change.
    pub(super) signals_export: SignalsExporter,
    pub(super) metrics: Arc<Metrics>,
    /// The Daena mix the status page shows, fed by the daena stage (old and new).
    pub(super) mix: Arc<DaenaMix>,
}

impl Reloader {
    /// Reloads, logs and counts the outcome.
    pub(super) async fn reload(&mut self) -> ReloadOutcome {
        let outcome = self.apply().await;
        match &outcome {
            Ok(changed) => tracing::info!("Config reloaded: {changed}"),
            Err(error) => tracing::error!("Config reload refused: {error}"),
        }
        self.metrics.config_reloaded(outcome.is_ok());
        outcome
    }

    async fn apply(&mut self) -> ReloadOutcome {
        let source = self.source.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let new = source().map_err(|errors| ReloadError::Invalid(errors.to_string()))?;
        let restart = needs_restart(&self.current, &new);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        // Everything is built before anything is swapped: a failure keeps the old config whole.
        let mut exporters = Vec::new();
        for (name, config) in &new.exporters {
            if self.current.exporters.get(name) != Some(config) {
                let exporter = AnyExporter::build(name, config)
                    .map_err(|e| ReloadError::Invalid(e.to_string()))?;
                exporters.push((name.clone(), exporter));
            }
        }
        let signals_changed = new.processors.signals != self.current.processors.signals
            || new
                .processors
                .signals
                .export
                .iter()
                .any(|name| self.current.exporters.get(name) != new.exporters.get(name));
        let signals_export = if signals_changed {
            Some(
                self.signals_export
                    .build(&new)
                    .map_err(|e| ReloadError::Invalid(e.to_string()))?,
            )
        } else {
            None
        };
        let mut changed = Vec::new();
        if new.processors != self.current.processors {
            // Every shard gets stages of its own, built from the same config.
            let stage_config = new.processors.per_shard(self.shards);
            let built: Vec<_> = self
                .stages
                .iter()
                .map(|_| processor::build(&stage_config, &self.metrics, &self.mix))
                .collect();
            let mut swapped = Vec::with_capacity(built.len());
            for (shard, stages) in self.stages.iter().zip(built) {
                let (done, applied) = oneshot::channel();
                let swap = StageSwap { stages, done };
                shard.send(swap).await.map_err(|_| ReloadError::Stopping)?;
                swapped.push(applied);
            }
            for applied in swapped {
                applied.await.map_err(|_| ReloadError::Stopping)?;
            }
            changed.push("processors replaced".to_owned());
        }
        for (name, exporter) in exporters {
            if let Some(running) = self.exporters.get(&name) {
                running.replace(exporter);
                changed.push(format!("exporter {name} replaced"));
            }
        }
        if let Some(export) = signals_export {
            self.signals_export.replace(export);
            changed.push("signals export replaced".to_owned());
        }
        if new.shutdown_timeout != self.current.shutdown_timeout {
            changed.push(format!("shutdown_timeout {:?}", new.shutdown_timeout));
        }
        self.current = new;
        Ok(if changed.is_empty() {
            "nothing changed".to_owned()
        } else {
            changed.join("; ")
        })
    }
}

/// The settings `new` changes that a running agent cannot: listeners, limits, batching,
/// the set of exporters, and each exporter's queue and retry policy (its workers and what
/// waits in it stay as they are).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut restart = Vec::new();
    let sections = [
        ("receivers", old.receivers != new.receivers),
        ("telemetry", old.telemetry != new.telemetry),
        ("memory_limit", old.memory_limit != new.memory_limit),
        ("pipeline", old.pipeline != new.pipeline),
        ("batch", old.batch != new.batch),
    ];
    restart.extend(
        sections
            .into_iter()
            .filter(|&(_, changed)| changed)
            .map(|(name, _)| name.to_owned()),
    );
    for name in new.exporters.keys() {
        if !old.exporters.contains_key(name) {
            restart.push(format!("exporters.{name} added"));
        }
    }
    for (name, old_exporter) in &old.exporters {
        match new.exporters.get(name) {
            None => restart.push(format!("exporters.{name} removed")),
            Some(new_exporter) => {
                let balancing = [old_exporter, new_exporter]
                    .iter()
                    .any(|e| e.protocol == ExporterProtocol::Loadbalancing);
                if balancing && new_exporter != old_exporter {
                    // Its backends' exporters and their queues are its own: not swappable.
                    restart.push(format!("exporters.{name} (loadbalancing)"));
                    continue;
                }
                if new_exporter.queue != old_exporter.queue {
                    restart.push(format!("exporters.{name}.queue"));
                }
                if new_exporter.retry != old_exporter.retry {
                    restart.push(format!("exporters.{name}.retry"));
                }
            }
        }
    }
    restart
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, yaml).expect("write");
        Config::load(Some(&path), &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn listeners_limits_and_queues_need_a_restart_transports_and_stages_do_not() {
        let old = config(
            "exporters:\n  tempo: { protocol: grpc, endpoint: http://127.0.0.1:14317, headers: { x-scope-orgid: a } }\n",
        );
        let transport = config(
            "exporters:\n  tempo: { protocol: http/protobuf, endpoint: http://127.0.0.1:14318, headers: { x-scope-orgid: b } }\nprocessors: { redact: { enabled: false } }\n",
        );
        assert_eq!(needs_restart(&old, &transport), Vec::<String>::new());
        let restart = config(
            "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:4417 }\nbatch: { max_spans: 10 }\nexporters:\n  tempo: { protocol: grpc, endpoint: http://127.0.0.1:14317, queue: { workers: 2 } }\n  jaeger: { protocol: console }\n",
        );
        assert_eq!(
            needs_restart(&old, &restart),
            [
                "receivers",
                "batch",
                "exporters.jaeger added",
                "exporters.tempo.queue"
            ]
        );
    }

    #[test]
    fn a_change_to_a_loadbalancing_exporter_needs_a_restart() {
        let lb = |backends: &str| {
            config(&format!(
                "exporters:\n  gateways:\n    protocol: loadbalancing\n    resolver: {{ static: [{backends}] }}\n    exporter: {{ protocol: grpc }}\n"
            ))
        };
        let old = lb("127.0.0.1:14317");
        assert_eq!(
            needs_restart(&old, &lb("127.0.0.1:14317")),
            Vec::<String>::new()
        );
        assert_eq!(
            needs_restart(&old, &lb("127.0.0.1:14317, 127.0.0.1:14318")),
            ["exporters.gateways (loadbalancing)"]
        );
        let grpc = config(
            "exporters:\n  gateways: { protocol: grpc, endpoint: http://127.0.0.1:14317 }\n",
        );
        assert_eq!(
            needs_restart(&grpc, &old),
            ["exporters.gateways (loadbalancing)"]
        );
    }
}
