//! The OTLP/HTTP receiver's gzip path under its size limit: see `harness::gzip_body`.
#![no_main]

use daena_trace_agent_fuzz as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::gzip_body(data));
