//! Per-stage microbenchmarks in time per Daena-shaped span: decode, intake, the processor
//! stages, batching, encode and compression; and one span of many repeated keys, whose
//! cost must grow linearly. Run: `cargo bench --bench pipeline`.

#[path = "support/traffic.rs"]
mod traffic;

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use daena_trace_agent::config::schema::{SchemaRow, Spellings, ValueType};
use daena_trace_agent::config::{ProcessorsConfig, located};
use daena_trace_agent::otlp::partition::RouteKey;
use daena_trace_agent::otlp::{ExportTraceServiceRequest, SpanBatch, json};
use daena_trace_agent::pipeline::Batcher;
use daena_trace_agent::processor;
use daena_trace_agent::receiver::Intake;
use prost::Message;

const SPANS: usize = 512;

fn stages(c: &mut Criterion) {
    let request = traffic::request(SPANS, 7);
    let encoded = request.encode_to_vec();
    let json_body = json::encode_request(&request);
    let mut group = c.benchmark_group("per_request_of_512_spans");
    group.throughput(Throughput::Elements(SPANS as u64));

    group.bench_function("decode_protobuf", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(&encoded[..])).expect("decodes"))
    });
    group.bench_function("scan_protobuf (validate without decoding)", |b| {
        b.iter(|| daena_trace_agent::otlp::wire::scan_request(black_box(&encoded)).expect("valid"))
    });
    group.bench_function("decode_json", |b| {
        b.iter(|| json::decode_request(black_box(&json_body)).expect("decodes"))
    });
    group.bench_function("intake_validate_and_queue", |b| {
        let (tx, mut rx) = daena_trace_agent::pipeline::queue(1);
        let intake = Intake::new(tx, Arc::default());
        // Without persistent queues `accept` never waits; the runtime only polls it once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        b.iter_batched(
            || request.clone(),
            |r| {
                runtime
                    .block_on(intake.accept("grpc", r, intake.reservation()))
                    .expect("accepted");
                rx.try_recv().expect("queued")
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("batcher_push", |b| {
        let mut batcher = Batcher::new(8192, 4 << 20);
        b.iter_batched(
            || SpanBatch::from_request(request.clone()),
            |batch| {
                let full = batcher.push(batch);
                if batcher.is_empty() {
                    full.len()
                } else {
                    batcher.flush().map_or(0, |b| b.span_count())
                }
            },
            BatchSize::SmallInput,
        )
    });
    // What the shards' inlet and the loadbalancing exporter pay per request, in place.
    group.bench_function("partition_protobuf_by_trace_id_into_3", |b| {
        let body = bytes::Bytes::from(encoded.clone());
        b.iter_batched(
            || SpanBatch::from_encoded(body.clone(), SPANS),
            |batch| batch.partition(3, &RouteKey::TraceId, |hash| (hash % 3) as usize),
            BatchSize::SmallInput,
        )
    });
    // The processors' budget is a share of what decoding and re-encoding costs (README).
    group.bench_function("decode_then_encode", |b| {
        b.iter(|| {
            ExportTraceServiceRequest::decode(black_box(&encoded[..]))
                .expect("decodes")
                .encode_to_vec()
        })
    });
    let only = |daena: bool, redact: bool, limits: bool| {
        let mut config = ProcessorsConfig::default();
        config.filter.enabled = false;
        config.signals.enabled = false;
        config.daena.enabled = daena;
        config.redact.enabled = redact;
        config.limits.enabled = limits;
        config
    };
    let configs = [
        ("processors_daena_redact_limits", only(true, true, true)),
        ("processor_daena", only(true, false, false)),
        ("processor_daena_extended_schema", extended_schema()),
        ("processor_signals", {
            let mut config = only(false, false, false);
            config.signals.enabled = true;
            config
        }),
        ("processor_filter", {
            let mut config = only(false, false, false);
            config.filter.enabled = true;
            config
        }),
        ("processor_redact", only(false, true, false)),
        ("processor_limits", only(false, false, true)),
    ];
    for (label, config) in configs {
        let mut processors = processor::build(&config, &Arc::default(), &Arc::default());
        group.bench_function(label, |b| {
            b.iter_batched(
                // Decoded as the pipeline decodes it (a clone would size every Vec exactly).
                || {
                    SpanBatch::from_request(
                        ExportTraceServiceRequest::decode(&encoded[..]).expect("decodes"),
                    )
                },
                |mut batch| {
                    for processor in &mut processors {
                        processor.process(&mut batch);
                    }
                    batch
                },
                BatchSize::LargeInput,
            )
        });
    }
    // The pipeline from bytes to bytes, as a request meets it: the default processors (the
    // filter, the signals and the span stages), with and without 10% head sampling, and
    // the same with every span decoded first, as before the stages worked in place.
    let bytes = bytes::Bytes::from(encoded.clone());
    let head10 = || {
        let mut config = ProcessorsConfig::default();
        config.sampling = Some(daena_trace_agent::config::SamplingConfig {
            ratio: Some(0.1),
            ..Default::default()
        });
        config
    };
    let chains = [
        (
            "chain_default_from_wire",
            ProcessorsConfig::default(),
            false,
        ),
        (
            "chain_default_decoding_first",
            ProcessorsConfig::default(),
            true,
        ),
        ("chain_default_head10_from_wire", head10(), false),
        ("chain_default_head10_decoding_first", head10(), true),
    ];
    for (label, config, decode_first) in chains {
        let mut processors = processor::build(&config, &Arc::default(), &Arc::default());
        group.bench_function(label, |b| {
            b.iter_batched(
                || SpanBatch::from_encoded(bytes.clone(), SPANS),
                |mut batch| {
                    if decode_first {
                        batch.resource_spans_mut();
                    }
                    for processor in &mut processors {
                        processor.process(&mut batch);
                    }
                    batch.encode_decoded();
                    batch
                },
                BatchSize::LargeInput,
            )
        });
    }

    group.bench_function("encode_protobuf", |b| {
        b.iter(|| black_box(&request).encode_to_vec())
    });
    for level in [1, 6] {
        group.bench_function(format!("gzip_level_{level}"), |b| {
            b.iter(|| {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(encoded.len() / 4),
                    flate2::Compression::new(level),
                );
                encoder.write_all(black_box(&encoded)).expect("gzip");
                encoder.finish().expect("gzip")
            })
        });
    }
    group.finish();
    eprintln!(
        "request: {SPANS} spans, {} protobuf bytes ({} per span), {} JSON bytes",
        encoded.len(),
        encoded.len() / SPANS,
        json_body.len()
    );
}

/// One span of `n` copies of a schema variant key (`llm.cost`), through all three stages:
/// the cost must grow linearly with `n` (issue #12).
/// The daena stage alone, its schema extended by config as a Daena team would: two keys
/// the traffic carries, a replaced built-in row, and rows of a new family with a mirror.
fn extended_schema() -> ProcessorsConfig {
    let row = SchemaRow::new;
    let mut config = ProcessorsConfig::default();
    config.filter.enabled = false;
    config.signals.enabled = false;
    config.redact.enabled = false;
    config.limits.enabled = false;
    config.daena.schema = [
        row("council.agents", ValueType::Int),
        row("council.votes", ValueType::Int),
        SchemaRow {
            values: ["l1", "l2", "l3", "l4"].map(String::from).to_vec(),
            spellings: vec![Spellings {
                value: "l4".into(),
                spellings: vec!["archive".into()],
            }],
            ..row("nbmf.tier", ValueType::OneOf)
        },
        SchemaRow {
            mirror: Some("gen_ai.tool.name".into()),
            aliases: vec!["tool.id".into()],
            ..row("tool.name", ValueType::Text)
        },
        row("tool.duration_ms", ValueType::Double),
        row("llm.temperature", ValueType::Double),
        row("agent.role", ValueType::Text),
        row("agent.id", ValueType::Id),
    ]
    .into_iter()
    .map(located)
    .collect();
    config
}

fn repeated_keys(c: &mut Criterion) {
    use daena_trace_agent::otlp::{ResourceSpans, ScopeSpans, Span, Value, key_value};
    let mut group = c.benchmark_group("one_span_of_repeated_keys");
    group.sample_size(10);
    let mut processors = processor::build(
        &ProcessorsConfig::default(),
        &Arc::default(),
        &Arc::default(),
    );
    for n in [1_000usize, 10_000, 100_000] {
        let span = Span {
            name: "llm.call".into(),
            attributes: (0..n)
                .map(|i| key_value("llm.cost", Value::IntValue(i64::try_from(i).unwrap_or(0))))
                .collect(),
            ..Default::default()
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("llm.cost_x{n}"), |b| {
            b.iter_batched(
                || {
                    SpanBatch::new(vec![ResourceSpans {
                        scope_spans: vec![ScopeSpans {
                            spans: vec![span.clone()],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }])
                },
                |mut batch| {
                    for processor in &mut processors {
                        processor.process(&mut batch);
                    }
                    batch
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, stages, repeated_keys);
criterion_main!(benches);
