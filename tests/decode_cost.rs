//! The receivers admit a request against the memory budget by the decoded size its scan
//! estimates, before decoding it. This measures what decoding really allocates, with a
//! counting allocator, and checks the estimate covers it without being absurdly above it,
//! for protobuf and OTLP/JSON bodies of every shape that matters: typical Daena spans,
//! empty spans (the dearest per wire byte), thousands of attributes, deep values.
//!
//! One test in its own binary, so no other test's allocations are counted.

#![allow(
    unsafe_code,
    reason = "a counting allocator is an unsafe impl over the system's"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use daena_trace_agent::otlp::{
    AnyValue, ArrayValue, Event, ExportTraceServiceRequest, KeyValueList, Resource, ResourceSpans,
    ScopeSpans, Span, Value, json, key_value, wire,
};
use prost::Message;

/// The system allocator, counting the bytes live and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes `decode` had live beyond what was live before it, its result included.
fn peak_of<T>(decode: impl FnOnce() -> T) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = decode();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(decoded);
    peak
}

fn ids(i: usize) -> (Vec<u8>, Vec<u8>) {
    let mut trace_id = vec![7; 16];
    trace_id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    (trace_id, vec![(i % 250) as u8 + 1; 8])
}

/// A council-round span as the Daena services send it.
fn daena_span(i: usize) -> Span {
    let (trace_id, span_id) = ids(i);
    let text = |k: &str, v: &str| key_value(k, Value::StringValue(v.into()));
    Span {
        trace_id,
        span_id,
        parent_span_id: vec![3; 8],
        name: "council.round.debate".into(),
        kind: 1,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            text("council.round_id", "r-2f1c9a7e"),
            text("council.phase", "debate"),
            text("agent.id", "scout-04"),
            text("llm.model", "gpt-4o-mini"),
            key_value("llm.tokens.prompt", Value::IntValue(1834)),
            key_value("llm.tokens.completion", Value::IntValue(212)),
            key_value("llm.cost", Value::DoubleValue(0.00041)),
            text("cas.key", "sha256:9f86d081884c7d659a2feaa0c55ad015"),
            key_value("cas.hit", Value::BoolValue(false)),
            text("nbmf.tier", "L2"),
        ],
        events: vec![Event {
            time_unix_nano: 1_700_000_000_100_000_000,
            name: "llm.response".into(),
            attributes: vec![text("finish_reason", "stop")],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn request(resource: Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn service() -> Resource {
    Resource {
        attributes: vec![key_value(
            "service.name",
            Value::StringValue("council-api".into()),
        )],
        ..Default::default()
    }
}

/// A value nested `depth` deep through arrays and kvlists.
fn deep_value(depth: usize) -> Value {
    let mut value = Value::StringValue("leaf".into());
    for level in 0..depth {
        value = if level % 2 == 0 {
            let inner = AnyValue { value: Some(value) };
            Value::ArrayValue(ArrayValue {
                values: vec![inner.clone(), inner],
            })
        } else {
            Value::KvlistValue(KeyValueList {
                values: vec![key_value("k", value)],
            })
        };
    }
    value
}

fn cases() -> Vec<(&'static str, ExportTraceServiceRequest)> {
    let many_attributes = Resource {
        attributes: (0..20_000)
            .map(|i| key_value(format!("k{i}"), Value::StringValue("v".into())))
            .collect(),
        ..Default::default()
    };
    let mut deep = daena_span(0);
    deep.attributes.push(key_value("deep", deep_value(12)));
    let empty = (0..20_000)
        .map(|i| {
            let (trace_id, span_id) = ids(i);
            Span {
                trace_id,
                span_id,
                ..Default::default()
            }
        })
        .collect();
    vec![
        ("one daena span", request(service(), vec![daena_span(0)])),
        (
            "512 daena spans (the Python SDK's batch)",
            request(service(), (0..512).map(daena_span).collect()),
        ),
        ("20,000 spans with ids only", request(service(), empty)),
        (
            "a resource with 20,000 attributes",
            request(many_attributes, vec![daena_span(0)]),
        ),
        ("a value nested 12 deep", request(service(), vec![deep])),
    ]
}

#[test]
fn the_scan_estimate_covers_what_decoding_allocates() {
    let mut report = Vec::new();
    for (name, request) in cases() {
        let protobuf = request.encode_to_vec();
        let scan = wire::scan_request(&protobuf).expect("valid protobuf");
        let peak = peak_of(|| ExportTraceServiceRequest::decode(&protobuf[..]).expect("decodes"));
        report.push(("protobuf", name, protobuf.len(), peak, scan.decoded_bytes));

        let body = json::encode_request(&request);
        let scan = json::scan_request(&body).expect("valid JSON");
        let peak = peak_of(|| json::decode_request(&body).expect("decodes"));
        report.push(("JSON", name, body.len(), peak, scan.decoded_bytes));
    }
    let empty_json = format!(
        "{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{}]}}]}}]}}",
        vec!["{}"; 100_000].join(",")
    );
    let scan = json::scan_request(empty_json.as_bytes()).expect("valid JSON");
    assert_eq!(scan.spans, 100_000);
    let peak = peak_of(|| json::decode_request(empty_json.as_bytes()).expect("decodes"));
    report.push((
        "JSON",
        "100,000 {} spans",
        empty_json.len(),
        peak,
        scan.decoded_bytes,
    ));

    let mut failures = Vec::new();
    for (format, name, wire_bytes, peak, estimate) in &report {
        let ratio = *estimate as f64 / *peak as f64;
        println!(
            "{format:8} {name:42} {wire_bytes:>9} B on the wire, decoding allocated {peak:>10} B at most, estimated {estimate:>10} B ({ratio:.2}x)"
        );
        // Covered, and not so far above that the budget refuses what would fit.
        if !(1.0..=4.0).contains(&ratio) {
            failures.push(format!("{format} {name}: {ratio:.2}x"));
        }
    }
    assert!(
        failures.is_empty(),
        "the estimate must be 1 to 4 times what decoding allocates: {failures:?}"
    );
}
