//! Differential fuzzing of the OTLP/JSON scan against the OTLP/JSON decoder.
//!
//! For every input, neither `json::scan_request` nor `json::decode_request` panics, and
//! whenever `decode_request` succeeds:
//! - `scan_request` succeeds and its `spans` is at least the decoded span count: the scan
//!   is the bound the receiver admits a request by, so it may count more (a member given
//!   twice is counted twice, where the decoder keeps the last) but never fewer;
//! - (cross-check) the decoded request, encoded as protobuf, is accepted by
//!   `wire::scan_request` with the same span count.
#![no_main]

use daena_trace_agent::otlp::{json, span_count, wire};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
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
        Err(error) => panic!("decode_request decoded {spans} spans but the JSON scan refused: {error}"),
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
});
