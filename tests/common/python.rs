//! Programs on the real OpenTelemetry Python SDK, from the virtualenvs the README's test
//! command (`scripts/test.sh`) creates, run with a deadline.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The Python of the virtualenv `venv` (`.venv-interop`, `.venv-interop-json`, `.venv-fastapi`).
pub fn venv_python(venv: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(venv)
        .join("bin/python");
    assert!(
        path.exists(),
        "{} is missing: run the README's test command (scripts/test.sh), which creates the interop virtualenvs",
        path.display()
    );
    path
}

/// Runs `command` to its end, killing it past `deadline`; returns its exit status and
/// everything it printed (stdout and stderr together).
pub async fn run_bounded(mut command: Command, deadline: Duration) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("output.txt");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = command
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("run the program");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {deadline:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (
        status,
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}
