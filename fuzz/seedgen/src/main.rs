//! Writes the fuzz seeds: each request as protobuf (`../seeds/wire_scan/<name>.pb`) and
//! as OTLP/JSON (`../seeds/json_scan/<name>.json`, the generated serde mapping: hex ids,
//! 64-bit integers as strings).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link, span::SpanKind,
    status::StatusCode,
};
use prost::Message;
use std::path::Path;

fn v(value: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: v(value), ..Default::default() }
}

fn s(text: &str) -> Value {
    Value::StringValue(text.into())
}

/// One attribute of every value type.
fn every_type() -> Vec<KeyValue> {
    vec![
        kv("str", s("GET /v1/orders")),
        kv("bool", Value::BoolValue(true)),
        kv("int", Value::IntValue(-42)),
        kv("big", Value::IntValue(i64::MAX)),
        kv("double", Value::DoubleValue(1.5)),
        kv("bytes", Value::BytesValue(vec![0, 1, 0xfe, 0xff])),
        kv(
            "array",
            Value::ArrayValue(ArrayValue { values: vec![v(s("a")).unwrap(), v(Value::IntValue(7)).unwrap()] }),
        ),
        kv(
            "kvlist",
            Value::KvlistValue(KeyValueList { values: vec![kv("inner", Value::BoolValue(false))] }),
        ),
        KeyValue { key: "empty".into(), value: None, ..Default::default() },
    ]
}

fn span(trace: u8, id: u8, name: &str, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        trace_state: "k=v".into(),
        parent_span_id: if id > 1 { vec![1; 8] } else { vec![] },
        flags: 0x301,
        name: name.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes,
        dropped_attributes_count: 1,
        events: vec![Event {
            time_unix_nano: 1_700_000_000_100_000_000,
            name: "exception".into(),
            attributes: vec![kv("exception.type", s("Timeout"))],
            dropped_attributes_count: 0,
        }],
        dropped_events_count: 0,
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            trace_state: String::new(),
            attributes: vec![kv("link.kind", s("follows"))],
            dropped_attributes_count: 0,
            flags: 1,
        }],
        dropped_links_count: 0,
        status: Some(Status { message: "deadline".into(), code: StatusCode::Error as i32 }),
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: resource, dropped_attributes_count: 0, entity_refs: vec![] }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "daena.http".into(),
                    version: "1.2.3".into(),
                    attributes: vec![kv("scope.attr", Value::IntValue(1))],
                    dropped_attributes_count: 0,
                }),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn main() {
    // A couple of spans, attributes of every value type.
    let basic = request(
        vec![kv("service.name", s("orders")), kv("host.pid", Value::IntValue(4242))],
        vec![
            span(0xab, 1, "GET /v1/orders", every_type()),
            span(0xab, 2, "SELECT orders", vec![kv("db.system", s("postgresql"))]),
        ],
    );

    // Nested arrayValue / kvlistValue, empty ones included.
    let array = |values: Vec<AnyValue>| Value::ArrayValue(ArrayValue { values });
    let kvlist = |values: Vec<KeyValue>| Value::KvlistValue(KeyValueList { values });
    let nested_value = kvlist(vec![
        kv("list", array(vec![
            v(s("x")).unwrap(),
            v(array(vec![v(Value::DoubleValue(-0.25)).unwrap(), v(array(vec![])).unwrap()])).unwrap(),
            v(kvlist(vec![kv("deep", kvlist(vec![kv("deeper", array(vec![v(Value::BoolValue(true)).unwrap()]))]))])).unwrap(),
        ])),
        kv("empty.kvlist", kvlist(vec![])),
        kv("bytes", Value::BytesValue(b"\x00\xff".to_vec())),
    ]);
    let nested = request(
        vec![kv("service.name", s("nested")), kv("resource.nested", nested_value.clone())],
        vec![span(0x11, 1, "nested", vec![kv("attr.nested", nested_value)])],
    );

    // Several resources, an empty span and ids of the wrong length or all zero.
    let mut multi = request(vec![kv("service.name", s("multi"))], vec![Span::default()]);
    let mut odd = span(0, 0, "zero ids", vec![]);
    odd.events.clear();
    odd.links.clear();
    let mut short = span(0x22, 3, "short ids", vec![]);
    short.trace_id.truncate(15);
    short.span_id.truncate(4);
    multi.resource_spans.push(request(vec![], vec![odd, short]).resource_spans.remove(0));
    multi.resource_spans.push(ResourceSpans::default());

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    for (name, req) in [("basic", &basic), ("nested", &nested), ("multi", &multi)] {
        let pb = req.encode_to_vec();
        let json = serde_json::to_vec(req).expect("serialise");
        assert_eq!(ExportTraceServiceRequest::decode(pb.as_slice()).as_ref(), Ok(req));
        std::fs::write(root.join(format!("wire_scan/{name}.pb")), &pb).unwrap();
        std::fs::write(root.join(format!("json_scan/{name}.json")), &json).unwrap();
        println!("{name}: {} bytes protobuf, {} bytes JSON", pb.len(), json.len());
    }
}
