//! A value loaded from files and loaded again when one of them changes: the receivers'
//! certificates and bearer token, so that a rotation needs no restart.
//!
//! The files' metadata (modification time, length, inode) is polled every
//! [`POLL_INTERVAL`] rather than watched with inotify: it works the same for a file
//! rewritten in place and for a Kubernetes secret whose symlink is swapped, costs one
//! `stat` per file per second, and needs no dependency.

use std::fmt::Display;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::log_limit::{LogLimit, REPEAT_INTERVAL};

/// How often the files are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What tells one version of a file from the next; `None` when the file cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files
        .iter()
        .map(|file| {
            // `metadata` follows symlinks: a swapped link shows as a new inode.
            std::fs::metadata(file).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

/// The current value loaded from a set of files.
#[derive(Debug)]
pub struct Watched<T> {
    current: RwLock<Arc<T>>,
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Loads the value with `load` now (its error is the caller's to report), then again in
    /// a background task whenever one of `files` changes, for as long as the returned value
    /// lives. A failed reload keeps the last good value and logs a warning (at most one per
    /// [`REPEAT_INTERVAL`]) naming `what`, and is retried at each poll until it succeeds.
    pub fn start<E: Display + Send + 'static>(
        what: String,
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + 'static,
    ) -> Result<Arc<Self>, E> {
        // Read before loading: a change in between is loaded again at the first poll.
        let seen = stamps(&files);
        let watched = Arc::new(Self {
            current: RwLock::new(Arc::new(load()?)),
        });
        tokio::spawn(poll(Arc::downgrade(&watched), what, files, seen, load));
        Ok(watched)
    }

    /// The value as last loaded.
    pub fn get(&self) -> Arc<T> {
        // A value replaced whole: a panic cannot leave it half-written.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, value: T) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

/// Polls `files` until `watched` is dropped, loading the value again when they change
/// (and after a failed load, until one succeeds).
async fn poll<T: Send + Sync + 'static, E: Display>(
    watched: Weak<Watched<T>>,
    what: String,
    files: Vec<PathBuf>,
    mut seen: Vec<Option<Stamp>>,
    load: impl Fn() -> Result<T, E>,
) {
    let warnings = LogLimit::new(REPEAT_INTERVAL);
    let mut failing = false;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let Some(watched) = watched.upgrade() else {
            return;
        };
        let now = stamps(&files);
        if now == seen && !failing {
            continue;
        }
        seen = now;
        match load() {
            Ok(value) => {
                watched.set(value);
                failing = false;
                tracing::info!(
                    "{what} reloaded: its files changed; new connections and requests use it"
                );
            }
            Err(error) => {
                failing = true;
                if let Some(suppressed) = warnings.check() {
                    tracing::warn!(
                        suppressed,
                        "{what} changed but cannot be loaded: {error}; the previous one stays in use until the files are fixed (suppressed: failures not logged since the previous line)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_loaded_and_a_broken_file_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("value");
        std::fs::write(&file, "1").expect("write");
        let path = file.clone();
        let load = move || -> Result<u32, String> {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            text.trim().parse().map_err(|_| "not a number".to_owned())
        };
        let watched =
            Watched::start("the test value".to_owned(), vec![file.clone()], load).expect("loads");
        assert_eq!(*watched.get(), 1);
        let wait_for = |expected: u32| {
            let watched = Arc::clone(&watched);
            async move {
                for _ in 0..50 {
                    if *watched.get() == expected {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            }
        };
        std::fs::write(&file, "22").expect("write");
        assert!(wait_for(22).await, "the new value is loaded");
        std::fs::write(&file, "broken").expect("write");
        tokio::time::sleep(POLL_INTERVAL * 2).await;
        assert_eq!(
            *watched.get(),
            22,
            "a broken file keeps the last good value"
        );
        std::fs::write(&file, "333333").expect("write");
        assert!(wait_for(333_333).await, "a fixed file is loaded");
    }

    #[test]
    fn a_missing_file_fails_the_first_load() {
        let load = || std::fs::read("/nonexistent/daena-token").map_err(|e| e.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let started = runtime.block_on(async {
            Watched::start("token".to_owned(), vec!["/nonexistent".into()], load)
        });
        assert!(started.is_err());
    }
}
