//! Console exporter: one line per span on stdout, what a developer expects when no
//! backend is configured.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use prost::Message;

use super::{Delivered, ExportError, Exporter, Payload};
use crate::config::CONSOLE_FALLBACK_WARNING;
use crate::log_limit::LogLimit;
use crate::otlp::{AnyValue, KeyValue, Resource, ResourceSpans, Span, Value};

/// Prints each resource of a batch once, as `resource {attributes}`, then one line per
/// span of it: `service "name" kind=… trace=… span=… parent=… duration=…ms
/// status=…("message") events=["name", …] {attributes}`.
pub struct ConsoleExporter {
    out: Mutex<Box<dyn Write + Send>>,
    /// Set when the console is a fallback for a missing upstream: the warning repeats
    /// while spans flow, so it is not lost above a screenful of span lines.
    fallback_warning: Option<LogLimit>,
}

/// How often a console fallback repeats its warning while spans flow.
const FALLBACK_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl ConsoleExporter {
    /// Prints to the process's standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    /// Prints to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
            fallback_warning: None,
        }
    }

    /// Warns [`CONSOLE_FALLBACK_WARNING`] at most once a minute while spans are printed;
    /// the start-up line has just said it, so the first repeat comes a minute later.
    pub fn warning_as_fallback(mut self) -> Self {
        let limit = LogLimit::new(FALLBACK_WARNING_INTERVAL);
        let _ = limit.check();
        self.fallback_warning = Some(limit);
        self
    }
}

impl ConsoleExporter {
    /// Whether a batch printed now repeats the fallback warning.
    fn fallback_warning_due(&self) -> bool {
        self.fallback_warning
            .as_ref()
            .is_some_and(|limit| limit.check().is_some())
    }
}

impl Exporter for ConsoleExporter {
    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let (text, printed) = format_batch(&payload.request().resource_spans);
        let mut out = self.out.lock().map_err(|_| ExportError::Permanent {
            message: "console output is unusable after an earlier failure".into(),
        })?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| ExportError::Retryable {
                message: format!("cannot write to the console: {e}"),
                retry_after: None,
            })?;
        if self.fallback_warning_due() {
            tracing::warn!("{CONSOLE_FALLBACK_WARNING}");
        }
        // Spans whose accepted bytes failed to decode (never expected: the receivers' scan
        // accepts only what decodes) are reported, so they are counted as dropped.
        let lost = payload.spans().saturating_sub(printed);
        Ok(Delivered {
            rejected_spans: lost as u64,
            message: if lost == 0 {
                String::new()
            } else {
                format!("{lost} span(s) failed to decode and were not printed")
            },
            ..Delivered::default()
        })
    }
}

/// The batch's lines and how many spans they show: each distinct resource once, in the
/// order it first appears, followed by the spans of every part of the batch it holds.
fn format_batch(resource_spans: &[ResourceSpans]) -> (String, usize) {
    // Equal resources have equal encodings; the batcher merges only adjacent ones.
    let mut groups: Vec<(Option<&Resource>, Vec<&Span>)> = Vec::new();
    let mut group_of: HashMap<Vec<u8>, usize> = HashMap::new();
    for rs in resource_spans {
        let key = rs
            .resource
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default();
        let group = *group_of.entry(key).or_insert_with(|| {
            groups.push((rs.resource.as_ref(), Vec::new()));
            groups.len() - 1
        });
        groups[group]
            .1
            .extend(rs.scope_spans.iter().flat_map(|ss| &ss.spans));
    }
    let mut text = String::new();
    let mut printed = 0;
    for (resource, spans) in groups.iter().filter(|(_, spans)| !spans.is_empty()) {
        text.push_str("resource ");
        write_attributes(
            &mut text,
            resource.map_or(&[][..], |r| r.attributes.as_slice()),
        );
        text.push('\n');
        let service = service_name(*resource);
        for span in spans {
            format_span(&mut text, service, span);
            text.push('\n');
            printed += 1;
        }
    }
    (text, printed)
}

fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            },
        )
        .unwrap_or("unknown_service")
}

/// Writes one span as a single line.
fn format_span(out: &mut String, service: &str, span: &Span) {
    let duration_ns = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano);
    let status = match span.status.as_ref().map(|s| s.code) {
        Some(1) => "ok",
        Some(2) => "error",
        _ => "unset",
    };
    let _ = write!(out, "{service} {:?} kind=", span.name);
    write_kind(out, span.kind);
    let _ = write!(
        out,
        " trace={} span={} parent={} duration={:.3}ms status={status}",
        const_hex::encode(&span.trace_id),
        const_hex::encode(&span.span_id),
        if span.parent_span_id.is_empty() {
            "-".to_owned()
        } else {
            const_hex::encode(&span.parent_span_id)
        },
        duration_ns as f64 / 1e6,
    );
    if let Some(message) = span.status.as_ref().map(|s| &s.message)
        && !message.is_empty()
    {
        let _ = write!(out, "({message:?})");
    }
    if !span.events.is_empty() {
        out.push_str(" events=[");
        for (i, event) in span.events.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{:?}", event.name);
        }
        out.push(']');
    }
    out.push(' ');
    write_attributes(out, &span.attributes);
}

/// A span kind by its name in the OTLP enum, in lower case; a number OTLP does not
/// define is printed as it came.
fn write_kind(out: &mut String, kind: i32) {
    let _ = match kind {
        0 => write!(out, "unspecified"),
        1 => write!(out, "internal"),
        2 => write!(out, "server"),
        3 => write!(out, "client"),
        4 => write!(out, "producer"),
        5 => write!(out, "consumer"),
        other => write!(out, "{other}"),
    };
}

fn write_attributes(out: &mut String, attributes: &[KeyValue]) {
    out.push('{');
    for (i, kv) in attributes.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&kv.key);
        out.push('=');
        write_value(out, kv.value.as_ref());
    }
    out.push('}');
}

fn write_value(out: &mut String, value: Option<&AnyValue>) {
    let _ = match value.and_then(|v| v.value.as_ref()) {
        None => write!(out, "null"),
        Some(Value::StringValue(s)) => write!(out, "{s:?}"),
        Some(Value::BoolValue(b)) => write!(out, "{b}"),
        Some(Value::IntValue(i)) => write!(out, "{i}"),
        Some(Value::DoubleValue(d)) => write!(out, "{d:?}"),
        Some(Value::BytesValue(b)) => write!(out, "0x{}", const_hex::encode(b)),
        // Only profiles use string-table indexes; print the index rather than guess.
        Some(Value::StringValueStrindex(i)) => write!(out, "strindex:{i}"),
        Some(Value::ArrayValue(array)) => {
            out.push('[');
            for (i, v) in array.values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, Some(v));
            }
            write!(out, "]")
        }
        Some(Value::KvlistValue(list)) => {
            write_attributes(out, &list.values);
            Ok(())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{ArrayValue, Event, Status};

    use crate::otlp::key_value as kv;

    /// A writer whose output the test can read.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_console_repeats_its_warning_once_a_minute_while_spans_flow() {
        let fallback = ConsoleExporter::new(Box::new(Shared::default())).warning_as_fallback();
        assert!(
            !fallback.fallback_warning_due(),
            "start-up has just said it"
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!fallback.fallback_warning_due());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(fallback.fallback_warning_due(), "a minute after start-up");
        assert!(!fallback.fallback_warning_due(), "once a minute");
        let chosen = ConsoleExporter::new(Box::new(Shared::default()));
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(
            !chosen.fallback_warning_due(),
            "protocol: console is a choice"
        );
    }

    #[tokio::test]
    async fn spans_that_fail_to_decode_are_reported_not_printed() {
        let out = Shared::default();
        let exporter = ConsoleExporter::new(Box::new(out.clone()));
        let mut batch = crate::otlp::SpanBatch::from_encoded(
            bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0x01]),
            2,
        );
        batch
            .decoded_mut()
            .extend(crate::otlp::request_named(&["ok"]).resource_spans);
        let delivered = exporter
            .export(&Payload::new(batch))
            .await
            .expect("printed");
        assert_eq!(delivered.rejected_spans, 2);
        assert!(
            delivered.message.contains("2 span(s) failed to decode"),
            "{}",
            delivered.message
        );
        let printed = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(
            printed,
            format!(
                "resource {{}}\n{}",
                "unknown_service \"ok\" kind=unspecified trace= span= parent=- duration=0.000ms status=unset {}\n"
            )
        );
    }

    #[test]
    fn a_span_prints_as_one_readable_line() {
        let span = Span {
            name: "council.round".into(),
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            kind: 2,
            start_time_unix_nano: 1_000_000,
            end_time_unix_nano: 13_500_000,
            status: Some(Status {
                code: 2,
                message: "nbmf write failed: \"tier l3\" is full".into(),
            }),
            events: vec![
                Event {
                    name: "retry".into(),
                    ..Default::default()
                },
                Event {
                    name: "exception".into(),
                    ..Default::default()
                },
            ],
            attributes: vec![
                kv("council.phase", Value::StringValue("scout".into())),
                kv("llm.cas_hit", Value::BoolValue(true)),
                kv("n", Value::IntValue(3)),
                kv(
                    "tags",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::DoubleValue(0.5)),
                        }],
                    }),
                ),
            ],
            ..Default::default()
        };
        let mut line = String::new();
        format_span(&mut line, "daena-backend", &span);
        assert_eq!(
            line,
            "daena-backend \"council.round\" kind=server trace=abababababababababababababababab span=0101010101010101 parent=- duration=12.500ms status=error(\"nbmf write failed: \\\"tier l3\\\" is full\") events=[\"retry\", \"exception\"] {council.phase=\"scout\", llm.cas_hit=true, n=3, tags=[0.5]}"
        );
    }

    fn resource_spans(service: &str, pod: &str, names: &[&str]) -> ResourceSpans {
        let mut rs = crate::otlp::request_named(names).resource_spans.remove(0);
        rs.resource = Some(Resource {
            attributes: vec![
                kv("service.name", Value::StringValue(service.into())),
                kv("k8s.pod.name", Value::StringValue(pod.into())),
            ],
            ..Default::default()
        });
        for (i, span) in rs.scope_spans[0].spans.iter_mut().enumerate() {
            span.kind = i as i32 + 1;
        }
        rs
    }

    #[test]
    fn each_resource_of_a_batch_is_printed_once_before_its_spans() {
        let batch = [
            resource_spans("council-api", "pod-1", &["round", "phase"]),
            resource_spans("nbmf", "pod-2", &["write"]),
            resource_spans("council-api", "pod-1", &["commit"]),
            resource_spans("empty", "pod-3", &[]),
        ];
        let (text, printed) = format_batch(&batch);
        assert_eq!(printed, 4);
        let span = |service: &str, name: &str, kind: &str| {
            format!(
                "{service} \"{name}\" kind={kind} trace= span= parent=- duration=0.000ms status=unset {{}}"
            )
        };
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "resource {service.name=\"council-api\", k8s.pod.name=\"pod-1\"}".to_owned(),
                span("council-api", "round", "internal"),
                span("council-api", "phase", "server"),
                span("council-api", "commit", "internal"),
                "resource {service.name=\"nbmf\", k8s.pod.name=\"pod-2\"}".to_owned(),
                span("nbmf", "write", "internal"),
            ]
        );
    }
}
