//! The fuzz harnesses on stable Rust: every seed and regression input of each target
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`), then proptest inputs (mutated
//! seeds and random bytes), through the same functions the cargo-fuzz targets call.
//! Every crash a fuzzer found is a regression input here, and passes since its fix.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use daena_trace_agent::config::Fsync;
use daena_trace_agent::exporter::Payload;
use daena_trace_agent::exporter::persistent::{LogOptions, MAGIC, SegmentLog};
use daena_trace_agent::otlp::{ExportTraceServiceRequest, SpanBatch};
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;

/// The files of `fuzz/<kind>/<target>/`, sorted (none when the directory does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("a directory entry").path())
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `harness` over every seed and regression of `target`; the seeds must exist.
fn replay(target: &str, harness: fn(&[u8])) {
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{target}");
    for path in seeds.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).expect("read an input");
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}

/// Inputs for `target`: a seed with a few bytes overwritten and maybe cut short, or random
/// bytes.
fn mutants(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = inputs("seeds", target)
        .iter()
        .map(|path| std::fs::read(path).expect("read a seed"))
        .collect();
    let mutated = (
        any::<Index>(),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..8),
        prop::option::of(any::<Index>()),
    )
        .prop_map(move |(seed, edits, cut)| {
            let mut data = seed.get(&seeds).clone();
            if !data.is_empty() {
                for (at, byte) in edits {
                    let at = at.index(data.len());
                    data[at] = byte;
                }
                if let Some(cut) = cut {
                    data.truncate(cut.index(data.len()));
                }
            }
            data
        });
    prop_oneof![3 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..512)]
}

macro_rules! fuzz_tests {
    ($($target:ident: $cases:expr;)*) => {
        mod seeds {
            $(
                #[test]
                fn $target() {
                    super::replay(stringify!($target), super::harness::$target);
                }
            )*
        }
        mod generated {
            use super::*;
            $(
                proptest! {
                    #![proptest_config(ProptestConfig::with_cases($cases))]
                    #[test]
                    fn $target(data in mutants(stringify!($target))) {
                        harness::$target(&data);
                    }
                }
            )*
        }
    };
}

fuzz_tests! {
    wire_scan: 2000;
    json_scan: 2000;
    gzip_body: 1000;
    config_yaml: 300;
    otlp_headers: 2000;
    queue_segment: 300;
}

/// The spans of the committed SDK seeds, as the pipeline would hand them to a queue.
fn sdk_payloads() -> Vec<Arc<Payload>> {
    inputs("seeds", "wire_scan")
        .iter()
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sdk-"))
        })
        .map(|path| {
            let body = std::fs::read(path).expect("read a seed");
            let request = ExportTraceServiceRequest::decode(&body[..]).expect("an SDK request");
            Arc::new(Payload::new(SpanBatch::from_request(request)))
        })
        .collect()
}

/// The segment the real queue writes for `payloads`, and where each record starts.
fn segment_of(payloads: &[Arc<Payload>]) -> (Vec<u8>, Vec<u64>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = LogOptions {
        max_bytes: 1 << 30,
        max_spans: 1 << 20,
        fsync: Fsync::Never,
        drop_oldest: false,
    };
    let (mut log, _) = SegmentLog::open(dir.path(), options).expect("a new queue");
    for payload in payloads {
        log.append(payload).expect("append");
    }
    drop(log);
    let segment =
        std::fs::read(dir.path().join("00000000000000000001.seg")).expect("the first segment");
    let mut offsets = vec![MAGIC.len() as u64];
    for payload in payloads {
        let last = *offsets.last().expect("an offset");
        offsets.push(last + 12 + payload.encoded().len() as u64);
    }
    offsets.pop();
    (segment, offsets)
}

/// The `queue_segment` seeds, made by the real queue from the SDK requests: run the
/// harness on each, and with `DAENA_WRITE_FUZZ_SEEDS=1` write them to
/// `fuzz/seeds/queue_segment/` (which `seeds::queue_segment` replays).
#[test]
fn queue_seeds_from_the_real_queue() {
    let payloads = sdk_payloads();
    assert!(
        payloads.len() >= 2,
        "the SDK seeds of wire_scan are missing"
    );
    let three = [
        Arc::clone(&payloads[0]),
        Arc::clone(&payloads[1]),
        Arc::clone(&payloads[0]),
    ];
    let (segment, offsets) = segment_of(&three);
    let with_flags =
        |flags: u8, fields: &[u8], segment: &[u8]| [&[flags][..], fields, segment].concat();
    let mut cursor_and_done = Vec::new();
    cursor_and_done.extend_from_slice(&1u64.to_le_bytes());
    cursor_and_done.extend_from_slice(&offsets[1].to_le_bytes());
    cursor_and_done.push(1);
    cursor_and_done.extend_from_slice(&offsets[2].to_le_bytes());
    let seeds = [
        ("sdk-three-records.bin", with_flags(0, &[], &segment)),
        (
            "sdk-torn-tail.bin",
            with_flags(0, &[], &segment[..segment.len() - 5]),
        ),
        (
            "sdk-cursor-and-done.bin",
            with_flags(
                harness::QUEUE_CURSOR | harness::QUEUE_DONE,
                &cursor_and_done,
                &segment,
            ),
        ),
        (
            "sdk-sealed-without-magic.bin",
            with_flags(
                harness::QUEUE_MAGIC | harness::QUEUE_SEAL,
                &[],
                &segment[MAGIC.len()..],
            ),
        ),
    ];
    let write = std::env::var_os("DAENA_WRITE_FUZZ_SEEDS").is_some();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/queue_segment");
    for (name, data) in &seeds {
        harness::queue_segment(data);
        if write {
            std::fs::create_dir_all(&dir).expect("the seed directory");
            std::fs::write(dir.join(name), data).expect("write a seed");
        }
    }
}
