//! The config loader with `${VAR}` expansion: see `harness::config_yaml`.
#![no_main]

use daena_trace_agent_fuzz as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::config_yaml(data));
