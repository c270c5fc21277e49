//! The `loadbalancing` exporter: every span of a trace (or of a council round) to the same
//! backend, so that a tail sampler on the gateways behind it sees whole traces.
//!
//! # Shape
//! The exporter is an ordinary [`ExporterHandle`]: the fan-out gives it each batch, into
//! a queue in memory like any exporter's. Its worker's "exporter" is a [`Router`] that
//! splits each batch by the [`HashRing`] of the current backends
//! ([`SpanBatch::partition`](crate::otlp::SpanBatch::partition), keyed by
//! `routing_key`) and hands each share to its backend. Each backend is itself an
//! ordinary exporter started with [`exporter::start`](super::start), named
//! `<name>/<host:port>`, with the inner `exporter` settings: its own queue (in memory or
//! persistent), retries, metrics and health.
//!
//! A share waits for room in its backend's queue (never dropped for being routed): the
//! other shares of the batch are handed over meanwhile, and the router's `queue.workers`
//! batches are in flight at once, so a full or dead backend holds nobody back while its
//! queue still has room. Once it is full, batches wait for it, the loadbalancing queue
//! fills, and the pipeline's backpressure refuses clients retryably, as `on_full: block`
//! does for one exporter: a trace is never split between a backend and the floor.
//! `spans_exported_total` of the loadbalancing exporter counts spans handed to backends;
//! each backend's own series count what reached it.
//!
//! # Membership
//! The [`resolver`] gives backend URLs; the membership is them sorted and each once. A
//! new backend gets its exporter started; a removed one has its handle dropped, so its
//! queue closes and drains: the spans queued for it are still delivered to it while it
//! accepts them (re-routing a removed backend's queue to the new owner is not done), and
//! once drained it leaves the health list. An empty or failing answer keeps the last good
//! membership, logged once per change; a backend that cannot be built is left out and
//! tried again at the next answer.

pub mod resolver;
pub mod ring;

use std::sync::{Arc, Mutex, RwLock};

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::resolver::{AnyResolver, Resolve, membership};
use self::ring::HashRing;
use super::queue::{self, ExporterHandle, Tasks};
use super::{BuildError, Delivered, ExportError, Exporter, Payload};
use crate::config::{ExporterConfig, RoutingKey, TlsConfig};
use crate::otlp::partition::RouteKey;
use crate::supervisor::Supervisor;
use crate::telemetry::Metrics;
use crate::telemetry::health::Health;

/// One backend: its URL, the `host:port` that places it on the ring, and its queue.
#[derive(Clone)]
struct Backend {
    url: String,
    handle: ExporterHandle,
}

/// The backends at one moment and their ring; replaced whole when the membership changes.
struct Snapshot {
    backends: Vec<Backend>,
    ring: HashRing,
}

impl Snapshot {
    fn new(backends: Vec<Backend>) -> Self {
        let hosts: Vec<&str> = backends.iter().map(|b| host_port(&b.url)).collect();
        Self {
            ring: HashRing::new(&hosts),
            backends,
        }
    }
}

/// `host:port` of a backend URL: what names its exporter and places it on the ring, so
/// that `gw:4317` and `http://gw:4317` route alike on every sidecar.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// What the router, the resolver task and the final drain share.
struct Shared {
    name: String,
    /// Each backend's settings; `endpoint` is set per backend.
    backend_config: ExporterConfig,
    /// Shared with each backend's task, which reads at its end whether it is a member again.
    members: Arc<RwLock<Arc<Snapshot>>>,
    /// Every backend's task ever started, awaited at shutdown for the spans left on disk.
    backend_tasks: Mutex<Vec<JoinHandle<Option<u64>>>>,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
    supervisor: Supervisor,
    health: Arc<Health>,
}

impl Shared {
    fn current(&self) -> Arc<Snapshot> {
        // The lock only guards the swap of one Arc; a panic cannot leave it half-done.
        Arc::clone(&self.members.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn replace(&self, snapshot: Snapshot) {
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// Makes `urls` the membership: starts the new backends, drops the removed ones (their
    /// queues drain). Returns whether it changed, and why a backend could not be built:
    /// that one is left out (and tried again at the next answer), the others go on.
    fn apply(&self, urls: Vec<String>) -> (bool, Option<BuildError>) {
        let urls = membership(urls);
        let current = self.current();
        if current.backends.iter().map(|b| &b.url).eq(urls.iter()) {
            return (false, None);
        }
        let mut backends = Vec::with_capacity(urls.len());
        let mut failed = None;
        for url in urls {
            if let Some(kept) = current.backends.iter().find(|b| b.url == url) {
                backends.push(kept.clone());
                continue;
            }
            match self.start_backend(&url) {
                Ok(handle) => backends.push(Backend { url, handle }),
                Err(error) => failed = Some(error),
            }
        }
        // Only a backend that failed again: nothing changed.
        if backends.is_empty()
            || current
                .backends
                .iter()
                .map(|b| &b.url)
                .eq(backends.iter().map(|b| &b.url))
        {
            return (false, failed);
        }
        let hosts: Vec<&str> = backends.iter().map(|b| host_port(&b.url)).collect();
        tracing::info!(
            exporter = %self.name,
            "Load balancing over {} backend(s): {}",
            hosts.len(),
            hosts.join(", ")
        );
        let count = backends.len();
        for gone in &current.backends {
            if !backends.iter().any(|b| b.url == gone.url) {
                self.metrics.lb_member_left(&self.name, host_port(&gone.url));
            }
        }
        for backend in &backends {
            if !current.backends.iter().any(|b| b.url == backend.url) {
                self.metrics.lb_member(&self.name, host_port(&backend.url), true);
            }
        }
        self.replace(Snapshot::new(backends));
        self.metrics
            .lb_membership(&self.name, count, !current.backends.is_empty());
        (true, failed)
    }

    fn start_backend(&self, url: &str) -> Result<ExporterHandle, BuildError> {
        let name = format!("{}/{}", self.name, host_port(url));
        let mut config = self.backend_config.clone();
        config.endpoint = Some(url.to_owned());
        let tasks = Tasks {
            metrics: Arc::clone(&self.metrics),
            abandon: self.abandon.clone(),
            supervisor: self.supervisor.clone(),
            health: Arc::clone(&self.health),
        };
        let (handle, task, _exporter) = super::start(&name, &config, tasks)?;
        let (members, health, url) = (
            Arc::clone(&self.members),
            Arc::clone(&self.health),
            url.to_owned(),
        );
        let task = tokio::spawn(async move {
            let left = task.await.ok().flatten();
            // Drained and gone: its health leaves `/readyz` unless it was added back.
            let snapshot = Arc::clone(&members.read().unwrap_or_else(|e| e.into_inner()));
            if !snapshot.backends.iter().any(|b| b.url == url) {
                health.unregister(&name);
            }
            left
        });
        let mut tasks = self.backend_tasks.lock().unwrap_or_else(|e| e.into_inner());
        // A removed backend ends once drained, before shutdown: nothing left to count, and
        // DNS churn must not grow the list without end.
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
        Ok(handle)
    }
}

/// The loadbalancing exporter's worker: splits each batch by the ring and hands each
/// share to its backend's queue. Dropping it stops the resolver.
pub struct Router {
    shared: Arc<Shared>,
    key: RouteKey,
    _stop: DropGuard,
}

impl Exporter for Router {
    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let snapshot = self.shared.current();
        if snapshot.backends.is_empty() {
            return Err(ExportError::Retryable {
                message: "no backend resolved yet".into(),
                retry_after: None,
            });
        }
        let shares =
            payload
                .batch()
                .clone()
                .partition(snapshot.backends.len(), &self.key, |hash| {
                    snapshot.ring.owner(hash).unwrap_or(0)
                });
        let sends = shares
            .into_iter()
            .zip(&snapshot.backends)
            .filter(|(share, _)| share.span_count() > 0)
            .map(|(share, backend)| async move {
                let share = Arc::new(Payload::new(share));
                // A closed queue takes it (and counts it as dropped): never a loop forever.
                while !backend.handle.try_send(&share, &[]) {
                    backend.handle.room(&share).await;
                }
            });
        join_all(sends).await;
        Ok(Delivered::default())
    }
}

/// Starts the loadbalancing exporter `name`: its own queue and router, a backend exporter
/// per resolved backend, and the resolver task. The task returned ends when the queue is
/// drained and every backend has ended, with the spans they left on disk.
pub fn start(
    name: &str,
    config: &ExporterConfig,
    tasks: Tasks,
) -> Result<(ExporterHandle, JoinHandle<Option<u64>>), BuildError> {
    let missing = |what: &str| BuildError::Endpoint {
        exporter: name.to_owned(),
        message: format!("protocol loadbalancing needs {what}"),
    };
    let resolver_config = config
        .resolver
        .as_ref()
        .ok_or_else(|| missing("resolver"))?;
    let backend_config = (**config
        .exporter
        .as_ref()
        .ok_or_else(|| missing("exporter"))?)
    .clone();
    let resolver =
        AnyResolver::from_config(resolver_config, backend_config.tls != TlsConfig::default());
    let key = match config.routing_key.unwrap_or_default() {
        RoutingKey::TraceId => RouteKey::TraceId,
        RoutingKey::CouncilRoundId => RouteKey::Attribute(RoutingKey::COUNCIL_ROUND_ID.into()),
    };
    let (handle, task, _) = start_with(name, config, backend_config, key, resolver, tasks)?;
    Ok((handle, task))
}

/// The parts [`start_with`] starts: the handle, the task, and the membership.
type Started = (ExporterHandle, JoinHandle<Option<u64>>, Arc<Shared>);

/// [`start`] with any resolver, for tests that change the answers and read the ring.
fn start_with<R: Resolve>(
    name: &str,
    config: &ExporterConfig,
    backend_config: ExporterConfig,
    key: RouteKey,
    resolver: R,
    tasks: Tasks,
) -> Result<Started, BuildError> {
    tasks.metrics.declare_loadbalancer(name);
    let supervisor = tasks.supervisor.clone();
    let shared = Arc::new(Shared {
        name: name.to_owned(),
        backend_config,
        members: Arc::new(RwLock::new(Arc::new(Snapshot::new(Vec::new())))),
        backend_tasks: Mutex::new(Vec::new()),
        metrics: Arc::clone(&tasks.metrics),
        abandon: tasks.abandon.clone(),
        supervisor: supervisor.clone(),
        health: Arc::clone(&tasks.health),
    });
    // Applied here, before the resolver task exists: never two membership changes at once.
    if let Some(urls) = resolver.fixed() {
        match shared.apply(urls) {
            (_, Some(error)) if shared.current().backends.is_empty() => return Err(error),
            (_, Some(error)) => tracing::error!(exporter = name, "A backend is left out: {error}"),
            (_, None) => {}
        }
    }
    let stop = CancellationToken::new();
    let router = Router {
        shared: Arc::clone(&shared),
        key,
        _stop: stop.clone().drop_guard(),
    };
    let (handle, router_task) =
        queue::spawn(name, router, config, tasks).map_err(|source| BuildError::Queue {
            exporter: name.to_owned(),
            source,
        })?;
    let following = supervisor.spawn(
        format!("exporter {name} (resolver)"),
        follow(resolver, Arc::clone(&shared), stop),
    );
    let membership = Arc::clone(&shared);
    let task = supervisor.spawn(format!("exporter {name} (backends)"), async move {
        let router_left = router_task.await.ok().flatten();
        // The router is gone, so the resolver stops; then the backends' queues close.
        let _ = following.await;
        shared.replace(Snapshot::new(Vec::new()));
        let backends = std::mem::take(
            &mut *shared
                .backend_tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut left = router_left.unwrap_or(0);
        for backend in backends {
            left += backend.await.ok().flatten().unwrap_or(0);
        }
        left
    });
    Ok((handle, task, membership))
}

/// Resolves now, then every interval until `stop`, applying each good answer. A failing or
/// empty answer keeps the last good membership; a problem is logged when it differs from
/// the last one, never per poll.
async fn follow<R: Resolve>(resolver: R, shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_problem: Option<String> = None;
    loop {
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = resolver.resolve() => answer,
        };
        let problem = match answer {
            Ok(urls) if urls.is_empty() => Some("the resolver gave no backend".to_owned()),
            Ok(urls) => shared
                .apply(urls)
                .1
                .map(|e| format!("a backend is left out: {e}")),
            Err(error) => Some(error.to_string()),
        };
        if problem != last_problem {
            if let Some(problem) = &problem {
                tracing::warn!(
                    exporter = %shared.name,
                    "{problem}; routing over {} backend(s)",
                    shared.current().backends.len()
                );
            }
            last_problem = problem;
        }
        let Some(interval) = resolver.interval() else {
            // A static list never changes: wait only for the stop.
            stop.cancelled().await;
            return;
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::resolver::ResolveError;
    use super::*;
    use crate::config::ExporterProtocol;
    use crate::otlp::partition::route_hash;
    use crate::otlp::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span, SpanBatch};

    /// Answers what the test last set: backends, or a failure.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Option<Vec<String>>>>);

    impl Fake {
        fn answer(&self, urls: Option<&[&str]>) {
            *self.0.lock().expect("lock") =
                urls.map(|u| u.iter().map(|s| (*s).to_owned()).collect());
        }
    }

    impl Resolve for Fake {
        async fn resolve(&self) -> Result<Vec<String>, ResolveError> {
            self.0
                .lock()
                .expect("lock")
                .clone()
                .ok_or(ResolveError::Empty {
                    name: "fake".into(),
                })
        }

        fn interval(&self) -> Option<std::time::Duration> {
            Some(Duration::from_millis(10))
        }
    }

    fn value(metrics: &Metrics, series: &str) -> Option<u64> {
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Polls `done` every 10ms for at most 5s.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// `traces` traces of two spans each, trace ids 0..traces.
    fn batch(traces: u8) -> SpanBatch {
        let spans = (0..traces)
            .flat_map(|t| {
                (0..2).map(move |s| Span {
                    trace_id: vec![t; 16],
                    span_id: vec![s + 1; 8],
                    name: format!("t{t}s{s}"),
                    ..Default::default()
                })
            })
            .collect();
        SpanBatch::from_request(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn start_fake(fake: Fake, metrics: &Arc<Metrics>, health: &Arc<Health>) -> Started {
        let config = ExporterConfig::new(ExporterProtocol::Loadbalancing, None);
        // Console backends: their exported-spans series count what each was given.
        let backend = ExporterConfig::new(ExporterProtocol::Console, None);
        let tasks = Tasks {
            metrics: Arc::clone(metrics),
            health: Arc::clone(health),
            ..Default::default()
        };
        start_with("lb", &config, backend, RouteKey::TraceId, fake, tasks).expect("start")
    }

    #[tokio::test]
    async fn backends_follow_the_resolver_and_only_a_removed_backends_keys_move() {
        let metrics = Arc::new(Metrics::default());
        let fake = Fake::default();
        fake.answer(None);
        let health = Arc::new(Health::default());
        let (handle, task, shared) = start_fake(fake.clone(), &metrics, &health);
        let registered =
            || -> Vec<String> { health.exporters().into_iter().map(|e| e.exporter).collect() };
        assert_eq!(
            value(&metrics, "daena_agent_lb_backends{exporter=\"lb\"}"),
            Some(0)
        );

        fake.answer(Some(&["http://c:1", "http://a:1", "b:1", "http://a:1"]));
        assert!(
            eventually(|| value(&metrics, "daena_agent_lb_backends{exporter=\"lb\"}") == Some(3))
                .await
        );
        let changes = "daena_agent_lb_membership_changes_total{exporter=\"lb\"}";
        assert_eq!(
            value(&metrics, changes),
            Some(0),
            "the first answer is no change"
        );

        // 50 traces of 2 spans: every backend gets a share, and all 100 arrive.
        assert!(handle.try_send(&Arc::new(Payload::new(batch(50))), &[]));
        let exported = |backend: &str| {
            value(
                &metrics,
                &format!("daena_agent_spans_exported_total{{exporter=\"lb/{backend}\"}}"),
            )
            .unwrap_or(0)
        };
        assert!(
            eventually(|| ["a:1", "b:1", "c:1"]
                .iter()
                .map(|b| exported(b))
                .sum::<u64>()
                == 100)
            .await
        );
        for backend in ["a:1", "b:1", "c:1"] {
            assert!(exported(backend) > 0, "{backend} got nothing");
            assert_eq!(exported(backend) % 2, 0, "{backend}: a trace was split");
        }

        let hashes: Vec<u64> = (0..=255u8).map(|t| route_hash(&[t; 16])).collect();
        let owners = |snapshot: &Snapshot| -> Vec<String> {
            hashes
                .iter()
                .map(|&h| {
                    let index = snapshot.ring.owner(h).expect("a backend");
                    host_port(&snapshot.backends[index].url).to_owned()
                })
                .collect()
        };
        let before = owners(&shared.current());

        // A failing answer keeps the membership, and is no change.
        fake.answer(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            value(&metrics, "daena_agent_lb_backends{exporter=\"lb\"}"),
            Some(3)
        );

        fake.answer(Some(&["http://a:1", "http://c:1"]));
        assert!(
            eventually(|| value(&metrics, "daena_agent_lb_backends{exporter=\"lb\"}") == Some(2))
                .await
        );
        assert_eq!(value(&metrics, changes), Some(1));
        let after = owners(&shared.current());
        for (old, new) in before.iter().zip(&after) {
            if old != "b:1" {
                assert_eq!(old, new, "a key of a backend still there moved");
            }
        }
        assert!(before.iter().any(|o| o == "b:1"));
        // Drained and gone, it no longer counts for readiness.
        assert!(eventually(|| !registered().contains(&"lb/b:1".to_owned())).await);
        assert!(registered().contains(&"lb/a:1".to_owned()));

        fake.answer(Some(&["http://a:1", "http://b:1", "http://c:1"]));
        assert!(
            eventually(|| value(&metrics, "daena_agent_lb_backends{exporter=\"lb\"}") == Some(3))
                .await
        );
        assert_eq!(value(&metrics, changes), Some(2));
        assert_eq!(
            owners(&shared.current()),
            before,
            "b:1 back owns what it owned"
        );
        assert!(registered().contains(&"lb/b:1".to_owned()));

        drop(handle);
        drop(shared);
        let left = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the exporter and its backends end once closed");
        assert_eq!(left.ok().flatten(), Some(0));
    }
}
