//! The agent under test: in this process ([`TestAgent`], for tests that need the
//! shutdown report or many agents cheaply) or as the built binary ([`AgentProcess`], for
//! faults a process lives through — signals, `kill -9`, its own memory and CPU).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daena_trace_agent::app::{Agent, ShutdownReport};
use daena_trace_agent::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::WAIT;
use super::client::http_request;

// ---------------------------------------------------------------- config

/// The processors off: the agent as a pure forwarder (for tests of the transport).
pub const NO_PROCESSORS: &str = "processors: { filter: { enabled: false }, signals: { enabled: false }, daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false } }\n";

/// The YAML of an agent with both receivers and `/metrics` on ephemeral loopback ports, a
/// 50 ms batch timeout (so tests wait little), `exporters` as given, then `extra`.
pub fn agent_yaml(exporters: &str, extra: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\n    http: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ timeout: 50ms }}\nexporters:\n{exporters}\n{extra}"
    )
}

/// The `exporters:` entry of a loadbalancing exporter named `gateways` over `backends`
/// (`host:port`), re-routing a failing one after `reroute_after`, each backend retried
/// every 50 to 200 ms so that tests wait little.
pub fn gateways_exporter(backends: &[String], reroute_after: &str) -> String {
    format!(
        "  gateways:\n    protocol: loadbalancing\n    resolver: {{ static: [{}] }}\n    reroute_after: {reroute_after}\n    exporter: {{ protocol: grpc, retry: {{ initial_interval: 50ms, max_interval: 200ms }} }}\n",
        backends.join(", ")
    )
}

/// Writes `yaml` to a temporary file and loads it with an empty environment, as the
/// binary would; the directory lives as long as the returned guard.
pub fn load_config(yaml: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), yaml);
    let config =
        Config::load(Some(&path), &|_| None).unwrap_or_else(|e| panic!("config must load: {e}"));
    (config, dir)
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Reads `series` (e.g. `daena_agent_spans_received_total{protocol="grpc"}`) from metrics
/// text; 0 when absent, as a counter nothing has incremented yet is not printed.
pub fn counter_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The `/metrics` text served at `addr`.
async fn metrics_at(addr: SocketAddr) -> String {
    let (status, _, body) =
        http_request("GET", &format!("http://{addr}/metrics"), &[], Vec::new()).await;
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf-8 metrics")
}

// ---------------------------------------------------------------- in this process

/// An agent running in this process on ephemeral ports.
pub struct TestAgent {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub telemetry: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<ShutdownReport, daena_trace_agent::app::AppError>>,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts an agent from YAML.
    pub async fn start(yaml: &str) -> Self {
        let (config, dir) = load_config(yaml);
        let agent = Agent::bind(config).await.expect("agent binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let (grpc, http, telemetry) =
            (agent.grpc_addr(), agent.http_addr(), agent.telemetry_addr());
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self {
            grpc,
            http,
            telemetry,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// Stops the agent (bounded by [`WAIT`]) and returns its shutdown report.
    pub async fn stop(mut self) -> ShutdownReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task")
            .expect("agent ran")
    }

    /// The agent's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_at(self.telemetry.expect("telemetry enabled")).await
    }

    /// The value of one counter line of `/metrics` (0 when absent).
    pub async fn counter(&self, series: &str) -> u64 {
        counter_value(&self.metrics().await, series)
    }

    /// Waits (bounded by [`WAIT`]) until a counter reaches `at_least`, then returns its
    /// value: exporter counters move after the backend answers, not when it receives.
    pub async fn wait_for_counter(&self, series: &str, at_least: u64) -> u64 {
        let started = Instant::now();
        loop {
            let value = self.counter(series).await;
            if value >= at_least || started.elapsed() > WAIT {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The URL of the OTLP/HTTP receiver's trace path.
    pub fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http.expect("http receiver"))
    }

    /// The URL of the OTLP/gRPC receiver.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.expect("grpc receiver"))
    }
}

// ---------------------------------------------------------------- the binary

/// The agent binary cargo built for these tests and benchmarks.
pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_daena-trace-agent"))
}

/// Runs the binary to completion with `args` and a clean environment plus `env`.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = binary_command(args, env).output().expect("run binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A command for the binary with a clean environment plus `env`: no inherited `OTEL_*`
/// variable configures it behind a test's back.
pub fn binary_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(agent_binary());
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A running agent process whose stderr (logs) and stdout are collected in the background,
/// so it never blocks on a full pipe and a failing test can show what it said.
pub struct AgentProcess {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    /// The config file's directory, when the process was started from YAML.
    config_dir: Option<tempfile::TempDir>,
}

impl AgentProcess {
    /// Writes `yaml` to a config file and starts the binary on it at `log_level`.
    pub fn with_config(yaml: &str, log_level: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), yaml);
        let mut process = Self::spawn(
            &[
                "--config",
                path.to_str().expect("path"),
                "--log-level",
                log_level,
            ],
            env,
        );
        process.config_dir = Some(dir);
        process
    }

    /// Writes `yaml` to a config file and starts the binary on it with its open-file limit
    /// (`ulimit -n`) lowered to `open_files`.
    pub fn with_config_and_file_limit(yaml: &str, log_level: &str, open_files: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), yaml);
        let args = [
            "--config",
            path.to_str().expect("path"),
            "--log-level",
            log_level,
        ];
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
            .arg(agent_binary())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        let mut process = Self::start(command);
        process.config_dir = Some(dir);
        process
    }

    /// Starts the binary; waits (bounded) until its start-up line names the listeners.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(binary_command(args, env))
    }

    /// Starts `command` (the binary, or a shell that execs it); waits (bounded) until its
    /// start-up line names the listeners.
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let process = Self {
            child,
            stdout,
            stderr,
            config_dir: None,
        };
        let started = Instant::now();
        while !process.logs().contains("daena-trace-agent started") {
            assert!(
                started.elapsed() < WAIT,
                "agent did not start; logs:\n{}",
                process.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    /// Everything the process logged so far (its stderr).
    pub fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Everything the process printed so far (its stdout: the console exporter).
    pub fn output(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// The address the start-up line gives for `what` ("OTLP/gRPC", "OTLP/HTTP", "metrics").
    pub fn addr(&self, what: &str) -> SocketAddr {
        let logs = self.logs();
        let marker = format!("{what} on ");
        let start = logs.find(&marker).expect("listener in start-up line") + marker.len();
        let rest = &logs[start..];
        let end = rest.find([',', ';', ' ', '\n']).unwrap_or(rest.len());
        rest[..end].parse().expect("socket address")
    }

    /// The value of one counter line of the process's `/metrics` (0 when absent); the
    /// config must give `telemetry.endpoint`.
    pub async fn counter(&self, series: &str) -> u64 {
        counter_value(&metrics_at(self.addr("metrics")).await, series)
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self) -> i32 {
        self.terminate_timed().0
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit code and how long
    /// after the signal the process was seen gone (within the 20 ms polling step).
    pub fn terminate_timed(&mut self) -> (i32, Duration) {
        let pid = self.child.id().to_string();
        let signalled = Instant::now();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let code = self.wait_for_exit();
        let after = signalled.elapsed();
        // Let the collector threads read the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (code, after)
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    fn wait_for_exit(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if started.elapsed() > WAIT {
                let _ = self.child.kill();
                panic!("agent did not exit in time; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config file the process was started with (rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self.config_dir
            .as_ref()
            .expect("started from YAML")
            .path()
            .join("agent.yaml")
    }

    /// The process id, as `/proc` names it.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// User + system CPU seconds the process has used so far (`/proc/PID/stat`).
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / clock_ticks_per_second()
    }

    /// A `kB` line of `/proc/PID/status` in KiB, e.g. `VmRSS` or `VmHWM` (the peak RSS).
    pub fn status_kib(&self, field: &str) -> Option<f64> {
        daena_trace_agent::telemetry::memory::proc_status_kib(&self.pid(), field)
            .map(|kib| kib as f64)
    }

    /// The peak resident set so far in MiB (0 once the process is gone).
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM").map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `reader` to its end on a thread, into the returned text.
fn collect(mut reader: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// The kernel's clock ticks per second, the unit of `/proc/PID/stat` times.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
