//! The status page (`GET /` on the telemetry endpoint) in real headless Chromium: while
//! Daena traffic flows, the page's script fills in figures that match `/metrics` and the
//! traffic sent, and a screenshot is kept as a test artefact.
//!
//! Chromium is Debian's `chromium` package; `./scripts/test.sh` installs it when missing.
//! Without it this test fails, saying so: it never passes without having run the page.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, Resource, ResourceSpans, ScopeSpans, Span, Value,
};

/// Traces sent through the loadbalancing exporter, and spans in each.
const LB_TRACES: u32 = 40;
const LB_SPANS: u32 = 2;

/// The longest one Chromium run may take (a cold start on a busy 2-core machine takes a
/// few seconds); past it the browser's process group is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
/// Page time Chromium runs before it dumps the page: the first load and two refreshes.
const PAGE_TIME_MS: u32 = 5_000;
/// Chromium runs tried before giving up on the page filling in its figures.
const ATTEMPTS: usize = 3;

/// Where the screenshot is kept.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page.png")
}

/// The Chromium binary: `$CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chromium"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, and this test needs it to load the status page: \
             run ./scripts/test.sh (it installs Debian's chromium package when missing) \
             or `apt-get install -y chromium`, or set CHROMIUM to a Chromium binary"
        )
    })
}

/// Runs headless Chromium on `url` with `args` (in its own profile and process group,
/// killed whole after [`CHROMIUM_TIMEOUT`]); returns what it printed on stdout.
fn run_chromium(url: &str, args: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let stdout = read_in_background(child.stdout.take().expect("stdout"));
    let stderr = read_in_background(child.stderr.take().expect("stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            // The browser's helpers are in its process group: end them all.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_TIMEOUT:?}; it said:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = stdout.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}); it said:\n{}",
        stderr.join().unwrap_or_default()
    );
    out
}

fn read_in_background(mut reader: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    })
}

/// The page as Chromium shows it after its script ran: retried (bounded) until the script
/// has filled in the figures at least twice (the first load and a refresh).
async fn rendered_page(url: &str) -> String {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let url = url.to_owned();
        let args = vec![
            "--dump-dom".to_owned(),
            format!("--virtual-time-budget={PAGE_TIME_MS}"),
        ];
        last = tokio::task::spawn_blocking(move || run_chromium(&url, &args))
            .await
            .expect("chromium thread");
        if updates(&last) >= 2 {
            return last;
        }
    }
    panic!("the page's script did not fill in the figures twice in {ATTEMPTS} runs:\n{last}");
}

/// How many times the script filled in the figures (`<body data-updates="N">`).
fn updates(dom: &str) -> u32 {
    dom.split_once("data-updates=\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The text of the first element after `scope` (an attribute or id written in the page)
/// whose `data-figure` is `figure`.
fn figure<'a>(dom: &'a str, scope: &str, figure: &str) -> &'a str {
    let (_, scoped) = dom
        .split_once(scope)
        .unwrap_or_else(|| panic!("{scope} not on the page:\n{dom}"));
    let marker = format!("data-figure=\"{figure}\"");
    let (_, after) = scoped
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no {figure} after {scope}:\n{dom}"));
    let text = &after[after.find('>').expect("end of tag") + 1..];
    &text[..text.find('<').expect("end of text")]
}

/// A figure that is a count, as the page writes it (`1,234`).
fn count(dom: &str, scope: &str, name: &str) -> u64 {
    let text = figure(dom, scope, name);
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{name} after {scope} is {text:?}, not a count"))
}

/// Whether the Gateways (load balancing) section is shown: its tag has no `hidden`.
fn gateways_shown(dom: &str) -> bool {
    let (_, rest) = dom
        .split_once("<section id=\"gateways\"")
        .unwrap_or_else(|| panic!("no Gateways section on the page:\n{dom}"));
    !rest[..rest.find('>').expect("end of tag")].contains("hidden")
}

/// Spans received over both protocols, as `/metrics` says.
fn received(metrics: &str) -> u64 {
    ["grpc", "http"]
        .iter()
        .map(|protocol| {
            counter_value(
                metrics,
                &format!("daena_agent_spans_received_total{{protocol=\"{protocol}\"}}"),
            )
        })
        .sum()
}

/// `n` LLM spans as one Daena service spells them: the key and value in need of
/// normalisation, the model `models[i % len]`.
fn llm_request(models: &[&str], n: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![0x11; 16],
            span_id: vec![0x22, i as u8 + 1, 0, 0, 0, 0, 0, 1],
            name: "llm.exchange".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_900_000_000,
            attributes: vec![
                kv(
                    "LLM_Model",
                    Value::StringValue(format!(" {} ", models[i % models.len()])),
                ),
                kv("llm.cost", Value::StringValue("0.012".into())),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("daena-llm".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_in_chromium_what_metrics_counts_and_the_daena_mix() {
    let sink = Sink::grpc().await;
    let exporter = format!(
        "  sink:\n    protocol: grpc\n    endpoint: http://{}\n    compression: none\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(&exporter, "")).await;
    let page = format!("http://{}/", agent.telemetry.expect("telemetry endpoint"));

    // Known traffic: 5 council rounds of 6 spans over gRPC (10 of each phase), and 4 LLM
    // spans over HTTP (3 gpt-4o, 1 claude-sonnet), their key and value spelt unevenly.
    for seed in 1..=5 {
        grpc_export(agent.grpc_url(), council_request(6, seed), false)
            .await
            .expect("council round accepted");
    }
    let (status, _, _) = post_protobuf(
        &agent,
        &llm_request(&["gpt-4o", "gpt-4o", "gpt-4o", "claude-sonnet"], 4),
    )
    .await;
    assert_eq!(status, 200);
    sink.wait_for_spans(34).await;

    // Then a round of 3 spans (one per phase) every 50 ms while Chromium loads the page.
    let flowing = Arc::new(AtomicBool::new(true));
    let rounds = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (flowing, rounds, url) = (Arc::clone(&flowing), Arc::clone(&rounds), agent.grpc_url());
        async move {
            let mut seed = 100u8;
            while flowing.load(Ordering::Relaxed) {
                if grpc_export(url.clone(), council_request(3, seed), false)
                    .await
                    .is_ok()
                {
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                seed = seed.wrapping_add(1).max(100);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let before = received(&agent.metrics().await);
    let live = rendered_page(&page).await;
    let screenshot = screenshot_path();
    std::fs::create_dir_all(screenshot.parent().expect("artefact dir")).expect("artefact dir");
    let _ = std::fs::remove_file(&screenshot);
    let args = vec![
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1200,1600".to_owned(),
        format!("--virtual-time-budget={PAGE_TIME_MS}"),
    ];
    tokio::task::spawn_blocking({
        let page = page.clone();
        move || run_chromium(&page, &args)
    })
    .await
    .expect("chromium thread");
    let after = received(&agent.metrics().await);
    flowing.store(false, Ordering::Relaxed);
    traffic.await.expect("traffic task");

    // While traffic flows: the figures are live and within what /metrics said around them.
    let shown = count(&live, "<tbody>", "received.total");
    assert!(
        (before..=after).contains(&shown),
        "received {shown} shown, /metrics said {before} before and {after} after"
    );
    assert_ne!(
        figure(&live, "<tbody>", "received.per_second"),
        "—",
        "a rate is shown"
    );
    assert!(figure(&live, "data-exporter=\"sink\"", "state").contains("delivering"));
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot of the page at {}",
        screenshot.display()
    );

    // Once everything is delivered, the page and /metrics agree exactly, and the mix
    // counts what was sent, in canonical spelling.
    let rounds = rounds.load(Ordering::Relaxed);
    let total = 34 + 3 * rounds;
    sink.wait_for_spans(total as usize).await;
    let exported = agent
        .wait_for_counter("daena_agent_spans_exported_total{exporter=\"sink\"}", total)
        .await;
    let metrics = agent.metrics().await;
    let dom = rendered_page(&page).await;
    assert_eq!(received(&metrics), total);
    assert_eq!(count(&dom, "<tbody>", "received.total"), total);
    assert_eq!(
        count(&dom, "<tbody>", "received.grpc"),
        counter_value(
            &metrics,
            "daena_agent_spans_received_total{protocol=\"grpc\"}"
        )
    );
    assert_eq!(count(&dom, "<tbody>", "received.http"), 4);
    assert_eq!(count(&dom, "<tbody>", "exported.total"), exported);
    assert_eq!(
        count(&dom, "data-exporter=\"sink\"", "exported_total"),
        exported
    );
    assert_eq!(count(&dom, "<tbody>", "refused.total"), 0);
    assert_eq!(count(&dom, "<tbody>", "dropped.total"), 0);
    assert!(
        dom.contains("<div id=\"warnings\" role=\"alert\"></div>"),
        "an upstream is configured: no warning banner"
    );
    assert!(
        !gateways_shown(&dom),
        "no loadbalancing exporter: no Gateways section"
    );

    let table = |id: &str| &dom[dom.find(&format!("id=\"{id}\"")).expect("mix table")..];
    for phase in ["scout", "debate", "commit"] {
        let row = format!("data-value=\"{phase}\"");
        assert_eq!(
            count(table("council_phases"), &row, "council_phases.spans"),
            10 + rounds,
            "{phase}"
        );
    }
    let components = table("components");
    assert_eq!(
        count(components, "data-value=\"council\"", "components.spans"),
        30 + 3 * rounds
    );
    assert_eq!(
        count(components, "data-value=\"llm\"", "components.spans"),
        4
    );
    let models = table("llm_models");
    assert_eq!(
        count(models, "data-value=\"gpt-4o\"", "llm_models.spans"),
        3
    );
    assert_eq!(
        count(models, "data-value=\"claude-sonnet\"", "llm_models.spans"),
        1
    );
    // The Daena signals: the four LLM exchanges, and their cost, 4 × $0.012.
    let signals = table("signals");
    assert_eq!(count(signals, "<tbody>", "signals.llm_requests"), 4);
    assert_eq!(figure(signals, "<tbody>", "signals.llm_cost_usd"), "$0.048");

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_warns_when_spans_go_to_the_console_for_want_of_an_upstream() {
    let yaml = "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:0 }\ntelemetry: { endpoint: 127.0.0.1:0 }\n";
    let agent = TestAgent::start(yaml).await;
    let page = format!("http://{}/", agent.telemetry.expect("telemetry endpoint"));
    let dom = rendered_page(&page).await;
    assert!(
        dom.contains("<div id=\"warnings\" role=\"alert\"><p>spans go to the console: set OTEL_EXPORTER_OTLP_ENDPOINT or exporters:</p></div>"),
        "{dom}"
    );
    agent.stop().await;
}

/// Trace `trace`'s spans, its id spread out (and never all zeros, which receivers refuse)
/// so the traces fall on both backends of the ring.
fn lb_trace(trace: u32) -> Vec<Span> {
    let mixed = u64::from(trace + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let trace_id = [mixed.to_be_bytes(), mixed.rotate_left(17).to_be_bytes()].concat();
    (0..LB_SPANS)
        .map(|index| Span {
            trace_id: trace_id.clone(),
            span_id: [(trace + 1).to_be_bytes(), index.to_be_bytes()].concat(),
            name: format!("t{trace}.{index}"),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_001_000_000,
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_gateway_of_a_loadbalancing_exporter_and_its_share() {
    let sinks = [Sink::grpc().await, Sink::grpc().await];
    let backends: Vec<String> = sinks.iter().map(|s| s.addr.to_string()).collect();
    let agent = TestAgent::start(&agent_yaml(
        &gateways_exporter(&backends, "30s"),
        NO_PROCESSORS,
    ))
    .await;
    let page = format!("http://{}/", agent.telemetry.expect("telemetry endpoint"));

    let spans = (0..LB_TRACES).flat_map(lb_trace).collect();
    grpc_export(
        agent.grpc_url(),
        request_with_resource(Resource::default(), spans),
        false,
    )
    .await
    .expect("the agent accepts");
    let sent = u64::from(LB_TRACES * LB_SPANS);
    let started = Instant::now();
    while sinks.iter().map(|s| s.spans().len() as u64).sum::<u64>() < sent {
        assert!(
            started.elapsed() < WAIT,
            "the sinks got {:?} of {sent} spans within {WAIT:?}",
            sinks.iter().map(|s| s.spans().len()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The exporters count a batch once its backend answered, a little after it arrived.
    let series = |backend: &str| {
        format!("daena_agent_spans_exported_total{{exporter=\"gateways/{backend}\"}}")
    };
    let started = Instant::now();
    let metrics = loop {
        let metrics = agent.metrics().await;
        let exported: u64 = backends
            .iter()
            .map(|b| counter_value(&metrics, &series(b)))
            .sum();
        if exported >= sent {
            break metrics;
        }
        assert!(
            started.elapsed() < WAIT,
            "{exported} of {sent} spans counted exported within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let dom = rendered_page(&page).await;
    assert!(
        gateways_shown(&dom),
        "a loadbalancing exporter: Gateways shown"
    );
    let (_, lb) = dom
        .split_once("data-lb=\"gateways\"")
        .unwrap_or_else(|| panic!("no block for the gateways load balancer:\n{dom}"));
    assert_eq!(count(lb, "<p", "lb.backends"), 2);
    assert_eq!(count(lb, "<p", "lb.membership_changes"), 0);
    assert_eq!(count(lb, "<p", "lb.rerouted"), 0);
    let mut shown = 0;
    for backend in &backends {
        let row = format!("data-backend=\"{backend}\"");
        assert_eq!(figure(lb, &row, "lb.member.state"), "routed", "{backend}");
        let exported = counter_value(&metrics, &series(backend));
        assert!(exported > 0, "{backend} got no share of {LB_TRACES} traces");
        assert_eq!(
            count(lb, &row, "lb.member.exported_total"),
            exported,
            "{backend}: the page and /metrics"
        );
        shown += exported;
    }
    assert_eq!(shown, sent, "every span sent, to one backend or the other");

    agent.stop().await;
}
