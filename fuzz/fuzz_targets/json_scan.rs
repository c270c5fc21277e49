//! Differential fuzzing of the OTLP/JSON scan against the OTLP/JSON decoder: see
//! `harness::json_scan`.
#![no_main]

use daena_trace_agent_fuzz as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::json_scan(data));
