//! The one harness of the integration tests and the load benchmark (`benches/load.rs`
//! includes it with `#[path]`): the agent on ephemeral loopback ports, in this process or
//! as the binary ([`agent`]); OTLP backends that record every request byte for byte, with
//! scripted answers, outages, delays and a gate, or only count spans ([`sink`]); test data
//! and clients whose every call is bounded in time ([`client`]).
#![allow(dead_code)] // each test binary uses a different part of the harness

mod agent;
mod client;
mod python;
mod sink;

use std::time::Duration;

// For the same reason a test binary may use nothing of one of these.
#[allow(unused_imports)]
pub use {agent::*, client::*, python::*, sink::*};

/// The longest any test waits for something to arrive.
pub const WAIT: Duration = Duration::from_secs(20);
