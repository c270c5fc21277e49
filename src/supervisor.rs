//! Supervision: every long-lived task of the agent runs under a name. The first one that
//! panics, or that ends while the agent is not stopping, fails the agent: it then stops
//! its receivers (clients are refused retryably), delivers what it still can within
//! `shutdown_timeout`, counts what it cannot, and exits non-zero so that it is restarted.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use tokio::runtime::Builder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the agent failed: the task, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {task} task {what}")]
pub struct TaskFailure {
    /// The task's name, e.g. `pipeline` or `exporter tempo`.
    pub task: String,
    /// What happened: `panicked: <message>`, `ended unexpectedly`, or its error.
    pub what: String,
}

/// Watches the agent's tasks; clones share one state.
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Cancelled at the first failure.
    failed: CancellationToken,
    /// Cancelled when the agent starts stopping: tasks ending after that end as planned.
    stopping: CancellationToken,
    first: Mutex<Option<TaskFailure>>,
}

impl Supervisor {
    /// A supervisor with no failure yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `future` as the task `name`, which is meant to run until the agent stops: a
    /// panic fails the agent, and so does an end before [`stop`](Self::stop) (or an `Err`).
    /// The handle gives the task's output, `None` when it failed.
    pub fn spawn_service<T, E>(
        &self,
        name: impl Into<String>,
        future: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> JoinHandle<Option<T>>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        tokio::spawn(self.clone().serve(name.into(), future))
    }

    /// Like [`spawn_service`](Self::spawn_service), on a thread of its own with a
    /// single-threaded runtime: for CPU-heavy work (the processor stages), which would
    /// otherwise hold up the shared runtime's workers and with them the answers to clients.
    /// The thread is named `name`, which the system cuts at 15 bytes.
    pub fn spawn_service_on_thread<T, E>(
        &self,
        name: impl Into<String>,
        future: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> JoinHandle<Option<T>>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (name, supervisor) = (name.into(), self.clone());
        let (done, output) = tokio::sync::oneshot::channel();
        let runs = std::thread::Builder::new().name(name.clone()).spawn({
            let name = name.clone();
            let supervisor = supervisor.clone();
            move || match Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(async move {
                    let mut done = done;
                    tokio::select! {
                        output = supervisor.serve(name, future) => { let _ = done.send(output); }
                        // The agent's runtime is gone: nobody waits for this service any more.
                        () = done.closed() => {}
                    }
                }),
                Err(error) => supervisor.fail(name, format!("cannot start its runtime: {error}")),
            }
        });
        if let Err(error) = runs {
            supervisor.fail(name, format!("cannot start its thread: {error}"));
        }
        tokio::spawn(async move { output.await.ok().flatten() })
    }

    /// Runs a service to its end; see [`spawn_service`](Self::spawn_service).
    async fn serve<T, E: std::fmt::Display>(
        self,
        name: String,
        future: impl Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let what = match AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(value)) if self.is_stopping() => return Some(value),
            Ok(Ok(_)) => "ended unexpectedly".to_owned(),
            Ok(Err(error)) => format!("failed: {error}"),
            Err(panic) => format!("panicked: {}", panic_message(&*panic)),
        };
        self.fail(name, what);
        None
    }

    /// Runs `future` as the task `name`, which may end whenever its work is done; a panic
    /// fails the agent. The handle gives its output, `None` when it panicked.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: impl Into<String>,
        future: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<Option<T>> {
        let (name, supervisor) = (name.into(), self.clone());
        tokio::spawn(async move { supervisor.watch(&name, future).await })
    }

    /// Runs `future` in the current task; a panic fails the agent as the task `name`,
    /// and gives `None`.
    pub async fn watch<T>(&self, name: &str, future: impl Future<Output = T>) -> Option<T> {
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(value) => Some(value),
            Err(panic) => {
                self.fail(name, format!("panicked: {}", panic_message(&*panic)));
                None
            }
        }
    }

    /// Records a failure of the task `task`; the first one is the agent's.
    pub fn fail(&self, task: impl Into<String>, what: impl Into<String>) {
        let failure = TaskFailure {
            task: task.into(),
            what: what.into(),
        };
        let mut first = self
            .inner
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            tracing::error!(task = %failure.task, "The agent failed: {failure}; it stops and exits with an error, so that it is restarted");
            *first = Some(failure);
            self.inner.failed.cancel();
        }
    }

    /// Completes at the first failure, with it.
    pub async fn failed(&self) -> TaskFailure {
        self.inner.failed.cancelled().await;
        self.failure().unwrap_or_else(|| TaskFailure {
            task: "agent".into(),
            what: "failed".into(),
        })
    }

    /// The first failure, if there was one.
    pub fn failure(&self) -> Option<TaskFailure> {
        self.inner
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a task has failed: the agent is no longer ready, whatever else it does.
    pub fn is_failed(&self) -> bool {
        self.inner.failed.is_cancelled()
    }

    /// The agent is stopping: services ending from now on end as planned.
    pub fn stop(&self) {
        self.inner.stopping.cancel();
    }

    fn is_stopping(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }
}

/// The text of a panic's payload.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_first_panic_is_the_failure_with_its_message() {
        let supervisor = Supervisor::new();
        let task = supervisor.spawn("stage", async { panic!("index out of bounds") });
        assert_eq!(task.await.ok(), Some(None::<()>));
        let later = supervisor.spawn("other", async { panic!("second") });
        let _ = later.await;
        assert!(supervisor.is_failed());
        assert_eq!(
            supervisor.failed().await,
            TaskFailure {
                task: "stage".into(),
                what: "panicked: index out of bounds".into()
            }
        );
    }

    #[tokio::test]
    async fn a_service_on_a_thread_of_its_own_runs_there_with_timers_and_is_supervised() {
        let supervisor = Supervisor::new();
        supervisor.stop();
        let ours = std::thread::current().id();
        let service = supervisor.spawn_service_on_thread("pipeline", async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let thread = std::thread::current();
            Ok::<_, String>((thread.id() != ours, thread.name().map(str::to_owned)))
        });
        assert_eq!(
            service.await.ok(),
            Some(Some((true, Some("pipeline".to_owned()))))
        );

        let supervisor = Supervisor::new();
        let failing = supervisor.spawn_service_on_thread("pipeline", async {
            tokio::task::yield_now().await;
            panic!("a stage broke");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        });
        assert_eq!(failing.await.ok(), Some(None::<()>));
        assert_eq!(
            supervisor.failure().map(|f| f.to_string()),
            Some("the pipeline task panicked: a stage broke".to_owned())
        );
    }

    #[tokio::test]
    async fn a_service_ending_before_the_stop_is_a_failure_and_after_it_is_not() {
        let supervisor = Supervisor::new();
        let early = supervisor.spawn_service("limiter", async { Ok::<_, String>(()) });
        assert_eq!(early.await.ok(), Some(None));
        assert_eq!(
            supervisor.failure().map(|f| f.to_string()),
            Some("the limiter task ended unexpectedly".to_owned())
        );

        let supervisor = Supervisor::new();
        let failing =
            supervisor.spawn_service("OTLP/gRPC", async { Err::<(), _>("address in use") });
        let _ = failing.await;
        assert_eq!(
            supervisor.failure().map(|f| f.what),
            Some("failed: address in use".to_owned())
        );

        let supervisor = Supervisor::new();
        supervisor.stop();
        let planned = supervisor.spawn_service("telemetry", async { Ok::<_, String>(7) });
        assert_eq!(planned.await.ok(), Some(Some(7)));
        assert!(!supervisor.is_failed());
        let jobs = supervisor.spawn("job", async { 1 });
        assert_eq!(jobs.await.ok(), Some(Some(1)));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), supervisor.failed())
                .await
                .is_err(),
            "no failure to wait for"
        );
    }
}
