//! The fuzz harnesses: one function per target, each taking the raw input and panicking
//! when the rule it checks is broken.
//!
//! The fuzz targets in `fuzz_targets/` call them, and so does the main package's stable
//! test `tests/fuzz_corpus.rs` (which includes this file as a module, since the main
//! package cannot depend on this crate), so every seed and regression is replayed by
//! `cargo test` as well. This file may therefore use only the library's public API and
//! crates the main package already depends on.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use daena_trace_agent::config::{Config, Fsync};
use daena_trace_agent::exporter::persistent::{
    LogOptions, MAGIC, MAX_SEGMENT, Recovery, SegmentLog, read_record,
};
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, RpcStatus, json, span_count, wire,
};
use daena_trace_agent::pipeline::{Inbox, queue};
use daena_trace_agent::receiver::Intake;
use daena_trace_agent::receiver::conn::ConnectionLimits;
use daena_trace_agent::receiver::http::HttpReceiver;
use daena_trace_agent::telemetry::memory::MemoryBudget;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, StatusCode};
use prost::Message;
use tower_service::Service;

/// Differential test of the protobuf scan against prost.
///
/// - `scan_prefix(b).1 == scan_request(b).is_some()`, and when the scan accepts, the
///   prefix scan's counts equal the full scan's;
/// - `scan_request(b).is_some() == ExportTraceServiceRequest::decode(b).is_ok()`;
/// - when both accept, `scan.spans` equals the number of spans prost decoded.
pub fn wire_scan(data: &[u8]) {
    let scan = wire::scan_request(data);
    let (prefix, well_formed) = wire::scan_prefix(data);
    assert_eq!(
        well_formed,
        scan.is_some(),
        "scan_prefix says well_formed={well_formed} but scan_request says {scan:?}"
    );
    if let Some(scan) = scan {
        assert_eq!(
            prefix, scan,
            "scan_prefix counts differ from scan_request's"
        );
    }

    match (scan, ExportTraceServiceRequest::decode(data)) {
        (Some(scan), Ok(request)) => {
            let spans = span_count(&request.resource_spans);
            assert_eq!(
                scan.spans, spans,
                "scan counted {} spans, prost decoded {spans}",
                scan.spans
            );
        }
        (None, Err(_)) => {}
        (Some(scan), Err(error)) => {
            panic!("scan accepted ({scan:?}) but prost refused: {error}")
        }
        (None, Ok(request)) => panic!(
            "scan refused (prefix {prefix:?}) but prost decoded {} spans",
            span_count(&request.resource_spans)
        ),
    }
}

/// Differential test of the OTLP/JSON scan against the OTLP/JSON decoder.
///
/// Neither `json::scan_request` nor `json::decode_request` panics, and whenever
/// `decode_request` succeeds:
/// - `scan_request` succeeds and its `spans` is at least the decoded span count: the scan
///   is the bound the receiver admits a request by, so it may count more (a member given
///   twice is counted twice, where the decoder keeps the last) but never fewer;
/// - (cross-check) the decoded request, encoded as protobuf, is accepted by
///   `wire::scan_request` with the same span count.
pub fn json_scan(data: &[u8]) {
    let scan = json::scan_request(data);
    let Ok(request) = json::decode_request(data) else {
        return;
    };
    let spans = span_count(&request.resource_spans);
    match scan {
        Ok(scan) => assert!(
            scan.spans >= spans,
            "JSON scan counted {} spans, fewer than the {spans} decode_request decoded",
            scan.spans
        ),
        Err(error) => {
            panic!("decode_request decoded {spans} spans but the JSON scan refused: {error}")
        }
    }

    let encoded = request.encode_to_vec();
    match wire::scan_request(&encoded) {
        Some(wire_scan) => assert_eq!(
            wire_scan.spans, spans,
            "wire scan of the re-encoded request counted {} spans, expected {spans}",
            wire_scan.spans
        ),
        None => panic!("wire scan refused the protobuf encoding of a decoded JSON request"),
    }
}

/// Mode bit of [`gzip_body`]'s first byte: the body is OTLP/JSON (else protobuf).
pub const GZIP_JSON: u8 = 1;
/// Mode bit of [`gzip_body`]'s first byte: the rest of the input is the decompressed body,
/// which the harness gzips (else it is the gzip body sent as it is). Random bytes are
/// almost never valid gzip (the trailer's CRC), so this is how the fuzzer reaches the
/// scans behind the decompression.
pub const GZIP_COMPRESS: u8 = 2;
/// `max_request_size` of the receiver, picked by bits 2 and 3 of [`gzip_body`]'s first
/// byte: the largest lets a gzip bomb inflate far, the smallest puts small bodies at the
/// limit (1 KiB is the smallest the config accepts).
pub const GZIP_LIMITS: [usize; 4] = [1 << 20, 64 << 10, 4 << 10, 1 << 10];
/// Mode bit of [`gzip_body`]'s first byte: the receiver's memory budget is
/// [`GZIP_TIGHT_BUDGET`] (else large enough never to refuse).
pub const GZIP_TIGHT: u8 = 16;
/// A memory budget that holds the receiver's 64 KiB decompression buffer beside a small
/// body, and not much more, so decompression and admission run out of it.
pub const GZIP_TIGHT_BUDGET: u64 = 96 << 10;

/// The OTLP/HTTP receiver's gzip path, through its real router (`HttpReceiver::router`,
/// no socket): `POST /v1/traces` with `Content-Encoding: gzip`.
///
/// Input: one mode byte ([`GZIP_JSON`], [`GZIP_COMPRESS`], the limit in bits 2–3, see
/// [`GZIP_LIMITS`], [`GZIP_TIGHT`]), then the body. Asserts that the answer is what the
/// receiver's rules say, computed independently with flate2 and prost: 413 when the body
/// on the wire or once decompressed is over the limit, 400 when it is not gzip or not a
/// request, else 200; under the tight budget, 429 (retry later) is a right answer too.
/// That the answer's body is a well-formed OTLP answer in the request's format; that the
/// spans queued plus the spans reported rejected are the spans decoded, and a refused
/// request queued none; and that the memory budget is wholly given back once the
/// pipeline dropped the request.
pub fn gzip_body(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let json = mode & GZIP_JSON != 0;
    let index = usize::from(mode >> 2) % GZIP_LIMITS.len();
    let limit = GZIP_LIMITS[index];
    let wire = if mode & GZIP_COMPRESS != 0 {
        gzip(rest)
    } else {
        rest.to_vec()
    };
    let (expected, decoded) = gzip_expectation(&wire, limit, json);
    let request = Request::post("/v1/traces")
        .header(
            CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "application/x-protobuf"
            },
        )
        .header(CONTENT_ENCODING, "gzip")
        .header(CONTENT_LENGTH, wire.len())
        .body(Body::from(wire))
        .expect("a well-formed request");
    let tight = mode & GZIP_TIGHT != 0;
    HTTP.with(|http| {
        let mut router = http.routers[usize::from(tight)][index].clone();
        let (status, body) = http.runtime.block_on(async {
            poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut router, cx))
                .await
                .expect("a router is always ready");
            let response = router.call(request).await.expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("an answer body in memory");
            (status, body)
        });
        let mut queued = 0;
        while let Ok(accepted) = http.inbox.borrow_mut().try_recv() {
            queued += accepted.batch.span_count();
        }
        let over_budget = tight && status == StatusCode::TOO_MANY_REQUESTS;
        assert!(
            status == expected || over_budget,
            "limit {limit}, tight budget {tight}: expected {expected}, the receiver answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        match decoded {
            Some(request) if !over_budget => {
                let rejected = if json {
                    let answer: serde_json::Value =
                        serde_json::from_slice(&body).expect("a JSON answer");
                    answer["partialSuccess"]["rejectedSpans"]
                        .as_str()
                        .map_or(0, |n| n.parse::<usize>().expect("a count"))
                } else {
                    let answer =
                        ExportTraceServiceResponse::decode(body).expect("a protobuf answer");
                    answer
                        .partial_success
                        .map_or(0, |p| usize::try_from(p.rejected_spans).expect("a count"))
                };
                let spans = span_count(&request.resource_spans);
                assert_eq!(
                    queued + rejected,
                    spans,
                    "{queued} spans queued and {rejected} rejected, of {spans} decoded"
                );
            }
            _ => {
                let message = if json {
                    let answer: serde_json::Value =
                        serde_json::from_slice(&body).expect("a JSON error answer");
                    answer["message"].as_str().unwrap_or_default().to_owned()
                } else {
                    RpcStatus::decode(body)
                        .expect("a google.rpc.Status")
                        .message
                };
                assert!(!message.is_empty(), "an error answer without a message");
                assert_eq!(queued, 0, "a refused request queued spans");
            }
        }
        assert_eq!(
            http.budgets[usize::from(tight)].used(),
            0,
            "the memory budget still holds bytes after the request was dropped"
        );
    });
}

/// What the receiver must answer to `wire` as a gzip body under `limit`, and the request
/// it must decode when it accepts.
fn gzip_expectation(
    wire: &[u8],
    limit: usize,
    json: bool,
) -> (StatusCode, Option<ExportTraceServiceRequest>) {
    if wire.len() > limit {
        return (StatusCode::PAYLOAD_TOO_LARGE, None);
    }
    let mut body = Vec::new();
    // One byte past the limit tells "too large" from "exactly at the limit".
    let inflated = flate2::read::GzDecoder::new(wire)
        .take(limit as u64 + 1)
        .read_to_end(&mut body);
    if inflated.is_err() {
        return (StatusCode::BAD_REQUEST, None);
    }
    if body.len() > limit {
        return (StatusCode::PAYLOAD_TOO_LARGE, None);
    }
    let decoded = if json {
        json::scan_request(&body)
            .ok()
            .and_then(|_| json::decode_request(&body).ok())
    } else {
        ExportTraceServiceRequest::decode(&body[..]).ok()
    };
    match decoded {
        Some(request) => (StatusCode::OK, Some(request)),
        None => (StatusCode::BAD_REQUEST, None),
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// One HTTP receiver per limit in [`GZIP_LIMITS`] and budget (the first large enough
/// never to refuse, the second [`GZIP_TIGHT_BUDGET`]), all feeding one pipeline queue
/// that the harness empties after each request.
struct HttpReceivers {
    runtime: tokio::runtime::Runtime,
    routers: [Vec<Router>; 2],
    inbox: RefCell<Inbox>,
    budgets: [Arc<MemoryBudget>; 2],
}

impl HttpReceivers {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (inlet, inbox) = queue(4);
        let budgets = [
            MemoryBudget::new(1 << 40),
            MemoryBudget::new(GZIP_TIGHT_BUDGET),
        ];
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
        };
        let routers = budgets.clone().map(|budget| {
            let intake = Intake::new(inlet.clone(), Arc::default()).with_budget(budget);
            GZIP_LIMITS
                .iter()
                .map(|&limit| HttpReceiver::new(intake.clone(), limit, limits).router())
                .collect()
        });
        Self {
            runtime,
            routers,
            inbox: RefCell::new(inbox),
            budgets,
        }
    }
}

thread_local! {
    /// Built once per thread: the fuzzer runs millions of inputs on one.
    static HTTP: HttpReceivers = HttpReceivers::new();
}

/// A secret in the environment of [`config_yaml`]: `${DAENA_TOKEN}` and
/// `${GRAFANA_CLOUD_API_TOKEN}` expand to it.
pub const CONFIG_SECRET: &str = "tok-CANARY-5e8a1b9c";

/// The environment [`config_yaml`] loads configs in.
fn config_env(name: &str) -> Option<String> {
    match name {
        "DAENA_TOKEN" | "GRAFANA_CLOUD_API_TOKEN" => Some(CONFIG_SECRET.to_owned()),
        "GRAFANA_CLOUD_OTLP_ENDPOINT" => Some("https://otlp.grafana.example.net/otlp".to_owned()),
        "GRAFANA_CLOUD_INSTANCE_ID" => Some("123456".to_owned()),
        "EMPTY" => Some(String::new()),
        "PORT" => Some("4318".to_owned()),
        "TEMPO_ENDPOINT" => Some("https://tempo.example.net:443".to_owned()),
        "SERVICE_NAME" => Some("daena-backend".to_owned()),
        _ => None,
    }
}

/// The config loader (`Config::load`: `${VAR}` expansion, YAML, the environment
/// fallback, validation) on the input as the config file's bytes.
///
/// Asserts: no panic; a loaded config passes validation again and can be written out
/// (masked) as YAML; a refusal lists at least one error, each with a message; and no
/// error about the YAML itself (those are located by `file:line:col`) nor about a header
/// shows [`CONFIG_SECRET`], the value of a variable the file references (endpoints and
/// file paths are shown as given, by design).
pub fn config_yaml(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, data).expect("write the config file");
    match Config::load(Some(&path), &config_env) {
        Ok(config) => {
            assert!(
                config.validate().is_empty(),
                "a loaded config fails validation: {:?}",
                config.validate()
            );
            let _ = config.masked().to_yaml();
        }
        Err(refusal) => {
            assert!(!refusal.errors.is_empty(), "a refusal without errors");
            let file = path.display().to_string();
            let written = String::from_utf8_lossy(data).contains(CONFIG_SECRET);
            for error in &refusal.errors {
                assert!(
                    !error.message.trim().is_empty(),
                    "an empty message: {error:?}"
                );
                let guarded = error.path.starts_with(&file) || error.path.contains(".headers.");
                assert!(
                    written || !guarded || !error.message.contains(CONFIG_SECRET),
                    "an error shows the value of a secret variable: {error:?}"
                );
            }
        }
    }
}

/// Marks the values of [`otlp_headers`]'s second run; an input holding it is not checked
/// for it.
const HEADER_CANARY: &str = "CANARY-h3";

/// The `OTEL_EXPORTER_OTLP_HEADERS` parser, through `Config::load` with no file and the
/// input (as UTF-8, lossily) as the variable's value, beside an endpoint.
///
/// Asserts: no panic; every header of a loaded config has a lower-case, trimmed, valid
/// name and a valid value. Then, metamorphically, the input with [`HEADER_CANARY`] put
/// at the start of every value (right after each entry's first `=`) loads exactly when
/// the input does, to the same headers with the canary in front of each value; and
/// its errors never show the canary (errors never show a value).
pub fn otlp_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let plain = load_headers(&text);
    if let Ok(headers) = &plain {
        for (name, value) in headers {
            assert_eq!(
                name,
                &name.trim().to_ascii_lowercase(),
                "a header name kept its case or spaces"
            );
            assert!(!name.is_empty(), "an empty header name");
            assert!(
                http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                "{name:?}"
            );
            assert!(http::HeaderValue::from_str(value).is_ok(), "{value:?}");
        }
    }
    if text
        .to_ascii_lowercase()
        .contains(&HEADER_CANARY.to_ascii_lowercase())
    {
        return;
    }
    let marked: Vec<String> = text
        .split(',')
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) => format!("{key}={HEADER_CANARY}{value}"),
            None => entry.to_owned(),
        })
        .collect();
    let marked = load_headers(&marked.join(","));
    match (plain, marked) {
        (Ok(plain), Ok(marked)) => {
            let unmarked: Vec<(String, String)> = marked
                .into_iter()
                .map(|(name, value)| {
                    let value = value
                        .strip_prefix(HEADER_CANARY)
                        .unwrap_or_else(|| panic!("{name}: the value lost its start: {value:?}"))
                        .to_owned();
                    (name, value)
                })
                .collect();
            assert_eq!(plain, unmarked, "the canary changed more than the values");
        }
        (Err(_), Err(message)) => assert!(
            !message.contains(HEADER_CANARY),
            "an error shows a header value: {message}"
        ),
        (plain, marked) => {
            panic!("the input loads as {plain:?}, with the canary in its values as {marked:?}")
        }
    }
}

/// The headers of the exporter `Config::load` builds from the environment, or its errors.
fn load_headers(headers: &str) -> Result<Vec<(String, String)>, String> {
    let env = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318".to_owned()),
        "OTEL_EXPORTER_OTLP_HEADERS" => Some(headers.to_owned()),
        _ => None,
    };
    let config = Config::load(None, &env).map_err(|e| e.to_string())?;
    let exporter = config
        .exporters
        .get("otlp")
        .unwrap_or_else(|| panic!("no otlp exporter from an endpoint: {config:?}"));
    Ok(exporter
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect())
}

/// Flag of [`queue_segment`]'s first byte: a segment magic is put in front of the segment.
pub const QUEUE_MAGIC: u8 = 1;
/// Flag: every complete record frame in the segment gets its correct CRC (random bytes
/// almost never carry one, so without this the fuzzer would never reach a valid record).
pub const QUEUE_SEAL: u8 = 2;
/// Flag: the next 16 bytes are a cursor (segment, offset; little endian), written with a
/// valid CRC.
pub const QUEUE_CURSOR: u8 = 4;
/// Flag: the next byte is a count n, then n offsets of 8 bytes each, written as the
/// segment's done file (each entry with a valid CRC).
pub const QUEUE_DONE: u8 = 8;
/// Flag: the next 8 bytes are the segment's number (else 1).
pub const QUEUE_SEQ: u8 = 16;

/// Bytes of a record's frame before its payload: length, CRC, spans (u32 each).
const RECORD_HEADER: usize = 12;

/// The persistent queue's recovery (`SegmentLog::open`) over one segment file of arbitrary
/// bytes, optionally beside a cursor and a done file, in a fresh directory.
///
/// Input: one flag byte ([`QUEUE_MAGIC`], [`QUEUE_SEAL`], [`QUEUE_CURSOR`],
/// [`QUEUE_DONE`], [`QUEUE_SEQ`]), the fields the flags ask for in that order, then the
/// segment's bytes. Asserts: opening succeeds and reports what an independent reading of
/// the format finds (the records after the cursor and not done, their spans, and one
/// damaged segment when a record is torn or corrupt); every recovered record is handed
/// out in order and reads back (`read_record`) with its spans and bytes; once all are
/// acknowledged nothing is left, and opening again recovers nothing and finds no damage.
pub fn queue_segment(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut take = |n: usize| -> Option<&[u8]> {
        let (taken, after) = rest.split_at_checked(n)?;
        rest = after;
        Some(taken)
    };
    let cursor = match flags & QUEUE_CURSOR {
        0 => None,
        _ => {
            let Some(bytes) = take(16) else { return };
            Some((u64_at(bytes, 0), u64_at(bytes, 8)))
        }
    };
    let done: Vec<u64> = match flags & QUEUE_DONE {
        0 => Vec::new(),
        _ => {
            let Some(&[count]) = take(1) else { return };
            let Some(bytes) = take(usize::from(count) * 8) else {
                return;
            };
            bytes.chunks_exact(8).map(|c| u64_at(c, 0)).collect()
        }
    };
    let seq = match flags & QUEUE_SEQ {
        0 => 1,
        _ => {
            let Some(bytes) = take(8) else { return };
            u64_at(bytes, 0)
        }
    };
    let mut segment = Vec::with_capacity(MAGIC.len() + rest.len());
    if flags & QUEUE_MAGIC != 0 {
        segment.extend_from_slice(MAGIC);
    }
    segment.extend_from_slice(rest);
    if flags & QUEUE_SEAL != 0 {
        seal(&mut segment);
    }

    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path().join("queue");
    std::fs::create_dir(&dir).expect("the queue directory");
    std::fs::write(dir.join(format!("{seq:020}.seg")), &segment).expect("write the segment");
    if let Some((segment, offset)) = cursor {
        let mut bytes = [segment.to_le_bytes(), offset.to_le_bytes()].concat();
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        std::fs::write(dir.join("cursor"), bytes).expect("write the cursor");
    }
    if !done.is_empty() {
        let bytes: Vec<u8> = done
            .iter()
            .flat_map(|offset| {
                let offset = offset.to_le_bytes();
                [&offset[..], &crc32fast::hash(&offset).to_le_bytes()].concat()
            })
            .collect();
        std::fs::write(dir.join(format!("{seq:020}.done")), bytes).expect("write the done file");
    }

    // A cursor past MAX_SEGMENT is unreadable: recovery starts from the beginning.
    let from = cursor.filter(|(segment, _)| *segment <= MAX_SEGMENT);
    let (expected, damaged) = if seq > MAX_SEGMENT {
        // Not a number the queue gives out: damaged whatever it holds.
        (Vec::new(), true)
    } else {
        read_segment(&segment, seq, from.unwrap_or((0, 0)), &done)
    };
    let options = LogOptions {
        max_bytes: 1 << 30,
        max_spans: usize::MAX,
        fsync: Fsync::Never,
        drop_oldest: false,
    };
    let (mut log, recovery) = SegmentLog::open(&dir, options).expect("open the queue");
    assert_eq!(
        recovery,
        Recovery {
            records: expected.len(),
            spans: expected.iter().map(|r| r.spans).sum(),
            damaged: usize::from(damaged),
        },
        "recovery differs from what the segment holds"
    );
    assert_eq!(log.spans(), recovery.spans);
    let mut records = Vec::new();
    for want in &expected {
        let record = log.take_next().expect("a recovered record to hand out");
        assert_eq!(record.spans, want.spans, "record at {}", want.offset);
        let (spans, body) = read_record(&dir, &record).expect("a recovered record reads back");
        assert_eq!(spans, want.spans, "record at {}", want.offset);
        assert_eq!(
            &body[..],
            &segment[want.offset + RECORD_HEADER..][..want.len],
            "record at {}",
            want.offset
        );
        records.push(record);
    }
    assert!(
        log.take_next().is_none(),
        "more records than the segment holds"
    );
    for record in &records {
        log.done(record);
    }
    assert_eq!(
        log.spans(),
        0,
        "spans left once every record is acknowledged"
    );
    drop(log);
    let (_log, again) = SegmentLog::open(&dir, options).expect("open the queue again");
    assert_eq!(
        again,
        Recovery::default(),
        "acknowledged records or damage found again"
    );
}

/// A record as [`read_segment`] finds it.
struct Found {
    offset: usize,
    len: usize,
    spans: usize,
}

/// The records of a segment numbered `seq` that recovery must hand out (at or after
/// `cursor`, not `done`), and whether it must report the segment damaged: the format of
/// `src/exporter/persistent/log.rs`, read independently.
fn read_segment(segment: &[u8], seq: u64, cursor: (u64, u64), done: &[u64]) -> (Vec<Found>, bool) {
    let mut found = Vec::new();
    if segment.is_empty() {
        return (found, false);
    }
    if !segment.starts_with(MAGIC) {
        return (found, true);
    }
    let mut offset = MAGIC.len();
    while offset < segment.len() {
        let Some(header) = segment.get(offset..offset + RECORD_HEADER) else {
            return (found, true);
        };
        let len = u32_at(header, 0) as usize;
        let Some(body) = segment
            .get(offset + RECORD_HEADER..)
            .and_then(|b| b.get(..len))
        else {
            return (found, true);
        };
        if u32_at(header, 4) != record_crc(&header[8..12], body) {
            return (found, true);
        }
        let at = offset as u64;
        if (seq, at) >= cursor && !done.contains(&at) {
            found.push(Found {
                offset,
                len,
                spans: u32_at(header, 8) as usize,
            });
        }
        offset += RECORD_HEADER + len;
    }
    (found, false)
}

/// Gives every complete record frame after the magic its correct CRC.
fn seal(segment: &mut [u8]) {
    let mut offset = MAGIC.len();
    while let Some(header) = segment.get(offset..offset + RECORD_HEADER) {
        let len = u32_at(header, 0) as usize;
        let start = offset + RECORD_HEADER;
        let Some(body) = segment.get(start..).and_then(|b| b.get(..len)) else {
            return;
        };
        let crc = record_crc(&segment[offset + 8..start], body);
        segment[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = start + len;
    }
}

/// A record's CRC: over its spans field, then its payload.
fn record_crc(spans: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(spans);
    hasher.update(body);
    hasher.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
