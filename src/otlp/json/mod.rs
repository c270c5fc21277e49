//! OTLP/JSON for the HTTP receiver: a tolerant decoder and compact encoders.
//!
//! opentelemetry-proto's serde mapping follows the OTLP/JSON rules (hex ids, integer
//! enums, 64-bit integers as strings or numbers) but refuses two things real clients
//! send: `null` members (protobuf's JSON mapping says null means default) and an empty
//! `{"arrayValue":{}}` or `{"kvlistValue":{}}` (the Python JSON exporter's empty list).
//! A first pass over the JSON tree fixes those and checks ids and enums, so an error
//! names the path and the rule instead of a byte offset.

mod scan;

use serde_json::{Map, Value as Json};

use super::{ExportTraceServiceRequest, ExportTraceServiceResponse};
pub use scan::scan_request;

/// Why an OTLP/JSON body could not be decoded; the message names the JSON path and the rule broken.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JsonDecodeError(String);

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`, tolerating empty arrayValue/kvlistValue and null fields.
pub fn decode_request(body: &[u8]) -> Result<ExportTraceServiceRequest, JsonDecodeError> {
    let mut tree: Json = serde_json::from_slice(body)
        .map_err(|e| JsonDecodeError(format!("body is not valid JSON: {e}")))?;
    if !tree.is_object() {
        return Err(JsonDecodeError(
            "the body must be a JSON object with a resourceSpans array".into(),
        ));
    }
    let mut path = String::new();
    normalise(&mut tree, &mut path)?;
    serde_json::from_value(tree).map_err(|e| JsonDecodeError(format!("{e}")))
}

/// Encodes an export response as compact OTLP/JSON: `{}` on full success.
pub fn encode_response(response: &ExportTraceServiceResponse) -> Vec<u8> {
    match &response.partial_success {
        None => b"{}".to_vec(),
        Some(partial) => serde_json::json!({
            "partialSuccess": {
                "rejectedSpans": partial.rejected_spans.to_string(),
                "errorMessage": partial.error_message,
            }
        })
        .to_string()
        .into_bytes(),
    }
}

/// Encodes a request as OTLP/JSON (lower-case hex ids, 64-bit integers as strings).
pub fn encode_request(request: &ExportTraceServiceRequest) -> Vec<u8> {
    // The generated Serialize impls cannot fail on these types.
    serde_json::to_vec(request).unwrap_or_default()
}

/// Members whose values are span or link ids.
const ID_FIELDS: [&str; 3] = ["traceId", "spanId", "parentSpanId"];
/// Members whose values are protobuf enums, which OTLP/JSON writes as integers.
const ENUM_FIELDS: [&str; 2] = ["kind", "code"];

/// Fixes the tree in place for the generated deserializer, or says what is wrong where.
fn normalise(value: &mut Json, path: &mut String) -> Result<(), JsonDecodeError> {
    match value {
        Json::Object(members) => normalise_object(members, path),
        Json::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                normalise(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn normalise_object(
    members: &mut Map<String, Json>,
    path: &mut String,
) -> Result<(), JsonDecodeError> {
    members.retain(|_, v| !v.is_null());
    for (key, value) in members.iter_mut() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        if ID_FIELDS.contains(&key.as_str()) {
            check_hex_id(value, path)?;
        } else if key == "doubleValue" {
            number_from_string(value, path)?;
        } else if ENUM_FIELDS.contains(&key.as_str()) && value.is_string() {
            return Err(JsonDecodeError(format!(
                "{path}: {value} is an enum name; OTLP/JSON writes enums as integers (e.g. \"kind\": 2)"
            )));
        } else if key == "arrayValue" || key == "kvlistValue" {
            // An empty list is sent as {} because protobuf's JSON mapping omits empty arrays.
            if let Json::Object(inner) = value {
                inner.retain(|_, v| !v.is_null());
                inner
                    .entry("values")
                    .or_insert_with(|| Json::Array(Vec::new()));
            }
            normalise(value, path)?;
        } else {
            normalise(value, path)?;
        }
        path.truncate(len);
    }
    Ok(())
}

/// Protobuf's JSON mapping allows a double as a string; the generated decoder does not.
fn number_from_string(value: &mut Json, path: &str) -> Result<(), JsonDecodeError> {
    let Json::String(text) = value else {
        return Ok(());
    };
    let number = text
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .ok_or_else(|| {
            JsonDecodeError(format!(
                "{path}: {text:?} is not a finite number; NaN and Infinity attributes are not supported"
            ))
        })?;
    *value = Json::Number(number);
    Ok(())
}

fn check_hex_id(value: &Json, path: &str) -> Result<(), JsonDecodeError> {
    let valid = value
        .as_str()
        .is_some_and(|s| s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(())
    } else {
        Err(JsonDecodeError(format!(
            "{path}: expected a hex string (OTLP/JSON ids are hex, not base64), got {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::otlp::{
        AnyValue, ArrayValue, ExportTracePartialSuccess, KeyValueList, ResourceSpans, ScopeSpans,
        Span, Value, key_value,
    };

    fn only_span(request: &ExportTraceServiceRequest) -> &Span {
        &request.resource_spans[0].scope_spans[0].spans[0]
    }

    fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    const FULL: &str = r#"{"resourceSpans":[{
        "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"daena-backend"}}]},
        "scopeSpans":[{"scope":{"name":"tracer","version":"1.0"},"spans":[{
            "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
            "parentSpanId":"","name":"llm.exchange","kind":3,"flags":257,"traceState":"ot=th:8",
            "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "attributes":[
                {"key":"s","value":{"stringValue":"scout"}},
                {"key":"b","value":{"boolValue":true}},
                {"key":"i","value":{"intValue":"4611686018427387904"}},
                {"key":"n","value":{"intValue":-7}},
                {"key":"d","value":{"doubleValue":0.5}},
                {"key":"quoted","value":{"doubleValue":"2.5"}},
                {"key":"bytes","value":{"bytesValue":"AAEC"}},
                {"key":"list","value":{"arrayValue":{"values":[{"stringValue":"a"},{"arrayValue":{}}]}}},
                {"key":"empty","value":{"arrayValue":{}}},
                {"key":"map","value":{"kvlistValue":{}}},
                {"key":"unset","value":{}}],
            "events":[{"timeUnixNano":"1544712660500000000","name":"cache_miss","attributes":null}],
            "links":[{"traceId":"00000000000000000000000000000001","spanId":"0000000000000002"}],
            "status":{"code":2,"message":"rate limited"},
            "unknownField":"ignored"}]}]}]}"#;

    #[test]
    fn every_value_type_and_the_python_empty_list_decode() {
        let request = decode_request(FULL.as_bytes()).expect("decodes");
        let span = only_span(&request);
        assert_eq!(
            span.trace_id,
            const_hex::decode("5b8efff798038103d269b633813fc60c").expect("hex")
        );
        assert_eq!(span.span_id.len(), 8);
        assert!(span.parent_span_id.is_empty());
        assert_eq!(
            (span.kind, span.flags, span.trace_state.as_str()),
            (3, 257, "ot=th:8")
        );
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(
            attribute(span, "s"),
            Some(&Value::StringValue("scout".into()))
        );
        assert_eq!(attribute(span, "b"), Some(&Value::BoolValue(true)));
        assert_eq!(attribute(span, "i"), Some(&Value::IntValue(1 << 62)));
        assert_eq!(attribute(span, "n"), Some(&Value::IntValue(-7)));
        assert_eq!(attribute(span, "d"), Some(&Value::DoubleValue(0.5)));
        assert_eq!(attribute(span, "quoted"), Some(&Value::DoubleValue(2.5)));
        assert_eq!(
            attribute(span, "bytes"),
            Some(&Value::BytesValue(vec![0, 1, 2]))
        );
        assert_eq!(
            attribute(span, "empty"),
            Some(&Value::ArrayValue(ArrayValue { values: vec![] }))
        );
        assert_eq!(
            attribute(span, "map"),
            Some(&Value::KvlistValue(KeyValueList { values: vec![] }))
        );
        assert_eq!(
            attribute(span, "list"),
            Some(&Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::StringValue("a".into()))
                    },
                    AnyValue {
                        value: Some(Value::ArrayValue(ArrayValue { values: vec![] }))
                    },
                ]
            }))
        );
        assert_eq!(attribute(span, "unset"), None);
        assert_eq!(span.events[0].name, "cache_miss");
        assert_eq!(span.links[0].span_id, vec![0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(
            span.status.as_ref().map(|s| (s.code, s.message.as_str())),
            Some((2, "rate limited"))
        );
    }

    #[test]
    fn null_members_mean_absent() {
        let body = br#"{"resourceSpans":[{"resource":null,"schemaUrl":null,"scopeSpans":[{"scope":null,"spans":[
            {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"x",
             "events":null,"links":null,"status":null,"attributes":null}]}]}]}"#;
        let request = decode_request(body).expect("decodes");
        let span = only_span(&request);
        assert!(request.resource_spans[0].resource.is_none());
        assert!(span.events.is_empty() && span.links.is_empty() && span.status.is_none());
    }

    #[test]
    fn empty_requests_decode() {
        assert_eq!(
            decode_request(b"{}").expect("decodes"),
            ExportTraceServiceRequest::default()
        );
        assert_eq!(
            decode_request(br#"{"resourceSpans":[]}"#).expect("decodes"),
            ExportTraceServiceRequest::default()
        );
    }

    #[test]
    fn ids_must_be_hex_but_their_length_is_checked_later() {
        let with_trace_id = |id: &str| {
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{id}","spanId":"0102030405060708"}}]}}]}}]}}"#
            )
        };
        let error = decode_request(with_trace_id("q83vEjRWeJA=").as_bytes()).expect_err("base64");
        assert!(
            error.to_string().starts_with(
                "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected a hex string"
            ),
            "{error}"
        );
        assert!(
            decode_request(with_trace_id("abc").as_bytes()).is_err(),
            "odd length"
        );
        let short = decode_request(with_trace_id(&"ab".repeat(15)).as_bytes()).expect("decodes");
        assert_eq!(only_span(&short).trace_id.len(), 15);
    }

    #[test]
    fn clear_errors_for_what_is_not_otlp_json() {
        assert!(
            decode_request(b"{not json")
                .expect_err("x")
                .to_string()
                .starts_with("body is not valid JSON")
        );
        assert!(
            decode_request(b"[1,2]")
                .expect_err("x")
                .to_string()
                .contains("must be a JSON object")
        );
        let error = decode_request(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SPAN_KIND_SERVER"}]}]}]}"#,
        )
        .expect_err("enum name");
        assert!(error.to_string().contains("spans[0].kind"), "{error}");
        assert!(error.to_string().contains("integers"), "{error}");
        let error = decode_request(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"x","value":{"doubleValue":"NaN"}}]}]}]}]}"#)
            .expect_err("NaN");
        assert!(
            error
                .to_string()
                .contains("attributes[0].value.doubleValue"),
            "{error}"
        );
    }

    #[test]
    fn responses_are_compact() {
        assert_eq!(
            encode_response(&ExportTraceServiceResponse::default()),
            b"{}"
        );
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "bad ids".into(),
            }),
        };
        let json: Json = serde_json::from_slice(&encode_response(&partial)).expect("json");
        assert_eq!(json["partialSuccess"]["rejectedSpans"], "3");
        assert_eq!(json["partialSuccess"]["errorMessage"], "bad ids");
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::IntValue),
            any::<f64>()
                .prop_filter("finite", |d| d.is_finite())
                .prop_map(Value::DoubleValue),
            any::<bool>().prop_map(Value::BoolValue),
            "[a-zA-Z0-9 ._-]{0,20}".prop_map(Value::StringValue),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_back_the_request(
            trace_id in prop::collection::vec(any::<u8>(), 16),
            span_id in prop::collection::vec(any::<u8>(), 8),
            name in "[a-z._ ]{0,30}",
            start in any::<u64>(),
            attributes in prop::collection::vec(("[a-z.]{1,12}", any_value()), 0..8),
        ) {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![Span {
                            trace_id, span_id, name,
                            start_time_unix_nano: start,
                            attributes: attributes.into_iter().map(|(k, v)| key_value(k, v)).collect(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            prop_assert_eq!(decode_request(&encode_request(&request)).expect("round trip"), request);
        }
    }
}
