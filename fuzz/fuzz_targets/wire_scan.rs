//! Differential fuzzing of the protobuf scan against prost: see `harness::wire_scan`.
#![no_main]

use daena_trace_agent_fuzz as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::wire_scan(data));
