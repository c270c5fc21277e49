//! The `loadbalancing` exporter: every span of a trace (or of a council round) to the same
//! backend, so that a tail sampler on the gateways behind it sees whole traces.
//!
//! # Shape
//! The exporter is an ordinary [`ExporterHandle`]: the fan-out gives it each batch, into
//! a queue in memory like any exporter's. Its worker's "exporter" is a [`Router`] that
//! splits each batch by the [`HashRing`] of the current backends
//! ([`SpanBatch::partition`](crate::otlp::SpanBatch::partition), keyed by
//! `routing_key`) and hands each share to its backend. Each backend is itself an
//! exporter behind an ordinary queue, named `<name>/<host:port>`, with the inner
//! `exporter` settings: its own queue (in memory or persistent), retries, metrics and
//! health.
//!
//! A share waits for room in its backend's queue, and for a persistent queue until it is
//! on disk (never dropped for being routed): the other shares of the batch are handed
//! over meanwhile, and the router's `queue.workers` batches are in flight at once, so a
//! full or dead backend holds nobody back while its queue still has room. Once it is
//! full, batches wait for it, the loadbalancing queue fills, and the pipeline's
//! backpressure refuses clients retryably, as `on_full: block` does for one exporter: a
//! trace is never split between a backend and the floor. `spans_exported_total` of the
//! loadbalancing exporter counts spans handed to backends; each backend's own series
//! count what reached it.
//!
//! # Membership and re-routing
//! The [`resolver`] gives backend URLs; the membership is them sorted and each once. A
//! new backend gets its exporter started; a removed one has its handle dropped, so its
//! queue closes and drains. A backend's exporter is a [`BackendExporter`]: once its
//! backend has left the membership, or has failed for `reroute_after`, it hands each batch
//! of its queue (on disk too) to the backends that own its keys on the ring without it,
//! counted in `daena_agent_lb_rerouted_spans_total`. A backend down past its grace is
//! still tried with one batch every [`PROBE_EVERY`], and owns its keys again at its
//! first success. At the first membership, the persistent queues an earlier run left for
//! backends that are not members are opened by exporters outside the membership, which
//! hand them on the same way. An empty or failing answer keeps the last good
//! membership, logged once per change; a backend that cannot be built is left out and
//! tried again at the next answer.

pub mod resolver;
pub mod ring;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::resolver::{AnyResolver, Resolve, membership};
use self::ring::HashRing;
use super::queue::{ExporterHandle, Tasks, dir_name};
use super::{
    AnyExporter, BuildError, Delivered, ExportError, Exporter, Payload, Queued, start_queue,
};
use crate::config::{ExporterConfig, RoutingKey, TlsConfig};
use crate::otlp::SpanBatch;
use crate::otlp::partition::RouteKey;
use crate::pipeline::{Ack, NotQueued};
use crate::supervisor::Supervisor;
use crate::telemetry::Metrics;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::DropReason;

/// How often a backend down past `reroute_after` is tried with one batch; the batches in
/// between go to the others at once.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How long a share a full persistent queue refused waits before it is offered again: a
/// queue in memory says when it has room, a full disk does not.
const FULL_DISK_PAUSE: Duration = Duration::from_millis(500);

/// One backend: its URL, its queue, and its outage as its own attempts see it.
#[derive(Clone)]
struct Backend {
    url: String,
    handle: ExporterHandle,
    outage: Arc<Outage>,
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

/// A backend's run of failed attempts, which decides when its share goes to the others.
#[derive(Default)]
struct Outage(Mutex<OutageState>);

#[derive(Default)]
struct OutageState {
    /// When the current run of retryable failures began.
    failing_since: Option<Instant>,
    /// When the backend was last tried.
    last_attempt: Option<Instant>,
    /// Whether its share goes to the others now (reported once per change).
    rerouting: bool,
}

impl Outage {
    fn lock(&self) -> MutexGuard<'_, OutageState> {
        // Plain fields set in one step each: a panic cannot leave them half-done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the backend has failed for `grace` or longer.
    fn is_down(&self, grace: Duration) -> bool {
        self.lock()
            .failing_since
            .is_some_and(|since| since.elapsed() >= grace)
    }

    /// Notes that its share goes to the others; `true` the first time in this outage.
    fn start_rerouting(&self) -> bool {
        !std::mem::replace(&mut self.lock().rerouting, true)
    }

    /// Whether it is time to try a backend down past its grace again, taking that turn.
    fn probe_due(&self) -> bool {
        let mut state = self.lock();
        let due = state
            .last_attempt
            .is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if due {
            state.last_attempt = Some(Instant::now());
        }
        due
    }

    /// Notes an attempt's outcome; `true` when a success ends an outage that re-routed.
    fn attempted(&self, result: &Result<Delivered, ExportError>) -> bool {
        let mut state = self.lock();
        state.last_attempt = Some(Instant::now());
        match result {
            Ok(_) => {
                state.failing_since = None;
                std::mem::take(&mut state.rerouting)
            }
            Err(ExportError::Retryable { .. }) => {
                state.failing_since.get_or_insert_with(Instant::now);
                false
            }
            // A refused batch says the backend is up.
            Err(ExportError::Permanent { .. }) => false,
        }
    }
}

/// What the router, the backends' exporters, the resolver task and the final drain share.
struct Shared {
    name: String,
    key: RouteKey,
    /// `reroute_after`: how long a backend may fail before its share goes to the others.
    grace: Duration,
    /// Each backend's settings; `endpoint` is set per backend.
    backend_config: ExporterConfig,
    members: RwLock<Arc<Snapshot>>,
    /// Set at shutdown: each backend's queue then drains to its own backend, or stays on
    /// disk, rather than being re-routed.
    closing: AtomicBool,
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

    fn is_member(&self, url: &str) -> bool {
        self.current().backends.iter().any(|b| b.url == url)
    }

    /// Makes `urls` the membership: starts the new backends, drops the removed ones (their
    /// queues drain to the others). Returns whether it changed, and why a backend could not
    /// be built: that one is left out (and tried again at the next answer), the others go on.
    fn apply(self: &Arc<Self>, urls: Vec<String>) -> (bool, Option<BuildError>) {
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
                Ok(backend) => backends.push(backend),
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
                self.metrics
                    .lb_member_left(&self.name, host_port(&gone.url));
            }
        }
        for backend in &backends {
            if !current.backends.iter().any(|b| b.url == backend.url) {
                self.metrics
                    .lb_member(&self.name, host_port(&backend.url), true);
            }
        }
        self.replace(Snapshot::new(backends));
        self.metrics
            .lb_membership(&self.name, count, !current.backends.is_empty());
        if current.backends.is_empty() {
            self.adopt_leftover_queues();
        }
        (true, failed)
    }

    /// Opens the persistent queues an earlier run left for backends that are not members
    /// now (a gateway pod that came back on another address) so that their spans go to
    /// the new owners: each such queue gets a backend exporter outside the membership,
    /// which hands every batch on, and ends once drained. Called at the first membership.
    fn adopt_leftover_queues(self: &Arc<Self>) {
        let queue = &self.backend_config.queue;
        let (true, Some(dir)) = (queue.persistent, &queue.dir) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let prefix = dir_name(&format!("{}/", self.name));
        let members: Vec<String> = self
            .current()
            .backends
            .iter()
            .map(|b| dir_name(&format!("{}/{}", self.name, host_port(&b.url))))
            .collect();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(suffix) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            // A backend's directory is its `host:port` made safe, so it ends in `_<port>`:
            // anything else under the prefix is another exporter's.
            let is_backend = suffix
                .rsplit_once('_')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !is_backend || members.iter().any(|m| m.as_str() == file_name) {
                continue;
            }
            // Never a member, so never sent to: the URL only builds its exporter. Named
            // `<name>/<suffix>`, its queue is the directory found; its handle is dropped at
            // once, so it drains and ends.
            let scheme = if self.backend_config.tls == TlsConfig::default() {
                "http"
            } else {
                "https"
            };
            let url = format!("{scheme}://{}.leftover.invalid:1", suffix.replace('_', "-"));
            match self.start_backend_named(suffix, &url) {
                Ok(_) => tracing::info!(
                    exporter = %self.name,
                    queue = %entry.path().display(),
                    "A persistent queue of a backend that is no longer a member: its spans go to the backends that own them now"
                ),
                Err(error) => tracing::error!(
                    exporter = %self.name,
                    "A persistent queue of a former backend could not be opened; its spans stay on disk: {error}"
                ),
            }
        }
    }

    fn start_backend(self: &Arc<Self>, url: &str) -> Result<Backend, BuildError> {
        let (handle, outage) = self.start_backend_named(host_port(url), url)?;
        Ok(Backend {
            url: url.to_owned(),
            handle,
            outage,
        })
    }

    /// Starts the exporter `<name>/<backend>` sending to `url`, behind its queue.
    fn start_backend_named(
        self: &Arc<Self>,
        backend: &str,
        url: &str,
    ) -> Result<(ExporterHandle, Arc<Outage>), BuildError> {
        let name = format!("{}/{}", self.name, backend);
        let mut config = self.backend_config.clone();
        config.endpoint = Some(url.to_owned());
        let tasks = Tasks {
            metrics: Arc::clone(&self.metrics),
            abandon: self.abandon.clone(),
            supervisor: self.supervisor.clone(),
            health: Arc::clone(&self.health),
        };
        let outage = Arc::new(Outage::default());
        let exporter = BackendExporter {
            inner: AnyExporter::build(&name, &config)?,
            url: url.to_owned(),
            outage: Arc::clone(&outage),
            shared: Arc::clone(self),
        };
        let (handle, task) = start_queue(&name, exporter, &config, tasks)?;
        let (shared, member) = (Arc::clone(self), url.to_owned());
        let task = tokio::spawn(async move {
            let left = task.await.ok().flatten();
            // Drained and gone: its health leaves `/readyz` unless it was added back.
            if !shared.is_member(&member) {
                shared.health.unregister(&name);
            }
            left
        });
        let mut tasks = self.backend_tasks.lock().unwrap_or_else(|e| e.into_inner());
        // A removed backend ends once drained, before shutdown: nothing left to count, and
        // DNS churn must not grow the list without end.
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
        Ok((handle, outage))
    }

    /// Splits `batch` by the ring over the backends of `snapshot` that `eligible` admits,
    /// and queues each share with its backend.
    async fn send(&self, snapshot: &Snapshot, batch: &SpanBatch, eligible: impl Fn(usize) -> bool) {
        let shares = batch
            .clone()
            .partition(snapshot.backends.len(), &self.key, |hash| {
                snapshot.ring.owner_among(hash, &eligible).unwrap_or(0)
            });
        let sends = shares
            .into_iter()
            .zip(&snapshot.backends)
            .filter(|(share, _)| share.span_count() > 0)
            .map(|(share, backend)| {
                self.queue_share(&backend.handle, Arc::new(Payload::new(share)))
            });
        join_all(sends).await;
    }

    /// Queues `share` with a backend: waits for room, and for a persistent queue until the
    /// share is on disk, offering it again while the disk is full. Only a queue that no
    /// longer takes anything (the agent is stopping) ends it unqueued, counted as dropped.
    async fn queue_share(&self, handle: &ExporterHandle, share: Arc<Payload>) {
        loop {
            let (ack, written) = Ack::new();
            let taken = handle.try_send(&share, std::slice::from_ref(&ack));
            ack.confirm();
            if !taken {
                handle.room(&share).await;
                continue;
            }
            match written.await {
                Ok(Ok(())) => return,
                Ok(Err(NotQueued::Full | NotQueued::WriteFailed)) => {
                    tokio::time::sleep(FULL_DISK_PAUSE).await;
                }
                Ok(Err(NotQueued::Stopped)) | Err(_) => {
                    self.metrics
                        .dropped(handle.name(), DropReason::Shutdown, share.spans() as u64);
                    return;
                }
            }
        }
    }
}

/// The loadbalancing exporter's worker: splits each batch by the ring and hands each
/// share to its backend's queue. Dropping it stops the resolver.
pub struct Router {
    shared: Arc<Shared>,
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
        // A backend down past its grace still gets its share: its exporter hands it on,
        // and probes it with one batch now and then.
        self.shared.send(&snapshot, payload.batch(), |_| true).await;
        Ok(Delivered::default())
    }
}

/// A backend's exporter: delivers its queue to its backend while that is a member and
/// has not failed for `reroute_after`; otherwise hands each batch to the backends that own
/// its keys on the ring without it.
pub struct BackendExporter {
    inner: AnyExporter,
    url: String,
    outage: Arc<Outage>,
    shared: Arc<Shared>,
}

impl BackendExporter {
    /// Whether batches go to this backend: it is a member, not down past its grace, or
    /// the agent is stopping.
    fn delivers(&self) -> bool {
        let shared = &self.shared;
        shared.closing.load(Ordering::Relaxed)
            || (shared.is_member(&self.url) && !self.outage.is_down(shared.grace))
    }

    /// Whether the next batch goes to the others: [`delivers`](Self::delivers) does not
    /// hold and it is not this backend's turn to be probed.
    fn hands_on(&self) -> bool {
        let shared = &self.shared;
        if self.delivers() {
            return false;
        }
        if !shared.is_member(&self.url) {
            return true;
        }
        if self.outage.start_rerouting() {
            tracing::warn!(
                exporter = %shared.name,
                backend = host_port(&self.url),
                "A backend has failed for reroute_after ({}): its share goes to the other backends until it answers again",
                crate::config::format_duration(shared.grace)
            );
            shared
                .metrics
                .lb_member(&shared.name, host_port(&self.url), false);
        }
        !self.outage.probe_due()
    }

    /// Hands the batch to the backends that own its keys among the members but this one
    /// and those down past their grace.
    async fn hand_on(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let shared = &self.shared;
        let snapshot = shared.current();
        // Read once per batch: the ring asks for every span, and each outage is a lock.
        let eligible: Vec<bool> = snapshot
            .backends
            .iter()
            .map(|b| b.url != self.url && !b.outage.is_down(shared.grace))
            .collect();
        let others = |i: usize| eligible[i];
        if !eligible.contains(&true) {
            return Err(ExportError::Retryable {
                message: "no other backend to re-route to: the others are down or gone".into(),
                retry_after: None,
            });
        }
        shared.send(&snapshot, payload.batch(), others).await;
        let spans = payload.spans() as u64;
        shared.metrics.lb_rerouted(&shared.name, spans);
        Ok(Delivered {
            handed_on: spans,
            ..Delivered::default()
        })
    }
}

impl Exporter for BackendExporter {
    fn prepare(&self, payload: &Payload) {
        // A batch handed on is split, not sent: encoding it would be wasted.
        if self.delivers() {
            self.inner.prepare(payload);
        }
    }

    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        if self.hands_on() {
            return self.hand_on(payload).await;
        }
        let result = self.inner.export(payload).await;
        if self.outage.attempted(&result) {
            let shared = &self.shared;
            tracing::info!(
                exporter = %shared.name,
                backend = host_port(&self.url),
                "A backend answers again: it owns its keys again"
            );
            shared
                .metrics
                .lb_member(&shared.name, host_port(&self.url), true);
        }
        result
    }
}

/// Starts the loadbalancing exporter `name`: its own queue and router, a backend exporter
/// per resolved backend, and the resolver task. The task returned ends when the queue is
/// drained and every backend has ended, with the spans they left on disk.
pub fn start(name: &str, config: &ExporterConfig, tasks: Tasks) -> Result<Queued, BuildError> {
    let resolver_config = config
        .resolver
        .as_ref()
        .ok_or_else(|| missing(name, "resolver"))?;
    let https = config
        .exporter
        .as_ref()
        .is_some_and(|backend| backend.tls != TlsConfig::default());
    start_with_resolver(
        name,
        config,
        AnyResolver::from_config(resolver_config, https),
        tasks,
    )
}

fn missing(name: &str, what: &str) -> BuildError {
    BuildError::Endpoint {
        exporter: name.to_owned(),
        message: format!("protocol loadbalancing needs {what}"),
    }
}

/// [`start`] with backends from any resolver (`config.resolver` is not read): for tests
/// that change the answers.
pub fn start_with_resolver<R: Resolve>(
    name: &str,
    config: &ExporterConfig,
    resolver: R,
    tasks: Tasks,
) -> Result<Queued, BuildError> {
    let backend_config = (**config
        .exporter
        .as_ref()
        .ok_or_else(|| missing(name, "exporter"))?)
    .clone();
    let key = match config.routing_key.unwrap_or_default() {
        RoutingKey::TraceId => RouteKey::TraceId,
        RoutingKey::CouncilRoundId => RouteKey::Attribute(RoutingKey::COUNCIL_ROUND_ID.into()),
    };
    tasks.metrics.declare_loadbalancer(name);
    let supervisor = tasks.supervisor.clone();
    let shared = Arc::new(Shared {
        name: name.to_owned(),
        key,
        grace: config.reroute_after(),
        backend_config,
        members: RwLock::new(Arc::new(Snapshot::new(Vec::new()))),
        closing: AtomicBool::new(false),
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
        _stop: stop.clone().drop_guard(),
    };
    let (handle, router_task) = start_queue(name, router, config, tasks)?;
    let following = supervisor.spawn(
        format!("exporter {name} (resolver)"),
        follow(resolver, Arc::clone(&shared), stop),
    );
    let task = supervisor.spawn(format!("exporter {name} (backends)"), async move {
        let router_left = router_task.await.ok().flatten();
        // The router is gone, so the resolver stops; then the backends' queues close, each
        // draining to its own backend (the agent is stopping: nothing is re-routed).
        let _ = following.await;
        shared.closing.store(true, Ordering::Relaxed);
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
    Ok((handle, task))
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
    use super::*;

    fn failed() -> Result<Delivered, ExportError> {
        Err(ExportError::Retryable {
            message: "unavailable".into(),
            retry_after: None,
        })
    }

    #[test]
    fn a_backend_is_down_after_its_grace_probed_once_per_period_and_up_at_a_success() {
        let outage = Outage::default();
        assert!(!outage.is_down(Duration::ZERO), "never failed");
        assert!(!outage.attempted(&failed()));
        assert!(outage.is_down(Duration::ZERO));
        assert!(
            !outage.is_down(Duration::from_secs(3600)),
            "within its grace"
        );
        assert!(outage.start_rerouting(), "news the first time");
        assert!(!outage.start_rerouting(), "not the second");
        // It was just tried: the next probe waits a period.
        assert!(!outage.probe_due());
        outage.lock().last_attempt = Instant::now().checked_sub(PROBE_EVERY);
        assert!(outage.probe_due());
        assert!(!outage.probe_due(), "one batch per period");
        // A refused batch neither starts nor ends an outage.
        let refused = Err(ExportError::Permanent {
            message: "bad request".into(),
        });
        assert!(!outage.attempted(&refused));
        assert!(outage.is_down(Duration::ZERO));
        assert!(
            outage.attempted(&Ok(Delivered::default())),
            "ends the re-routing"
        );
        assert!(!outage.is_down(Duration::ZERO));
        assert!(!outage.attempted(&Ok(Delivered::default())));
    }
}
