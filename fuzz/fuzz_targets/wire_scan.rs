//! Differential fuzzing of the protobuf scan against prost.
//!
//! For every input:
//! - `scan_prefix(b).1 == scan_request(b).is_some()`, and when the scan accepts, the
//!   prefix scan's counts equal the full scan's;
//! - `scan_request(b).is_some() == ExportTraceServiceRequest::decode(b).is_ok()`;
//! - when both accept, `scan.spans` equals the number of spans prost decoded.
#![no_main]

use daena_trace_agent::otlp::{ExportTraceServiceRequest, span_count, wire};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let scan = wire::scan_request(data);
    let (prefix, well_formed) = wire::scan_prefix(data);
    assert_eq!(
        well_formed,
        scan.is_some(),
        "scan_prefix says well_formed={well_formed} but scan_request says {scan:?}"
    );
    if let Some(scan) = scan {
        assert_eq!(prefix, scan, "scan_prefix counts differ from scan_request's");
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
});
