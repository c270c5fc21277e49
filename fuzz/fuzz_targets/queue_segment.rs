//! The persistent queue's recovery over arbitrary segment files: see
//! `harness::queue_segment`.
#![no_main]

use daena_trace_agent_fuzz as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::queue_segment(data));
