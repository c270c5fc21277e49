//! The `OTEL_EXPORTER_OTLP_HEADERS` parser: see `harness::otlp_headers`.
#![no_main]

use daena_trace_agent_fuzz as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::otlp_headers(data));
