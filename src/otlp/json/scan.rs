//! A scan of an OTLP/JSON body that builds nothing: it counts spans and attributes and
//! estimates what decoding would allocate (the JSON tree, then the generated types), so
//! the receiver refuses a request before decoding it, as it does for protobuf.

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::JsonDecodeError;
use crate::otlp::wire::{Msg, PER_ALLOCATION, Scan, element_cost, string_cost};

/// A JSON tree node (`serde_json::Value`) as it sits in its parent's array or map.
const TREE_VALUE: usize = std::mem::size_of::<serde_json::Value>();
/// Members per node of the B-tree a JSON object's map is made of.
const BTREE_NODE_MEMBERS: usize = 11;
/// One B-tree node: its keys, its values and its header.
const BTREE_NODE: usize =
    BTREE_NODE_MEMBERS * (std::mem::size_of::<String>() + TREE_VALUE) + 2 * PER_ALLOCATION;

/// Scans an OTLP/JSON request; the error is the JSON syntax error decoding would meet.
pub fn scan_request(body: &[u8]) -> Result<Scan, JsonDecodeError> {
    let mut scan = Scan::default();
    let mut json = serde_json::Deserializer::from_slice(body);
    Node {
        member: Member::Message(Msg::Request),
        scan: &mut scan,
    }
    .deserialize(&mut json)
    .and_then(|()| json.end())
    .map_err(|e| JsonDecodeError(format!("body is not valid JSON: {e}")))?;
    Ok(scan)
}

/// What a JSON value is, by its key and the message it belongs to.
#[derive(Clone, Copy)]
enum Member {
    /// A singular message field.
    Message(Msg),
    /// A repeated message field of `parent`: a JSON array of `element`s.
    Repeated { parent: Msg, element: Msg },
    /// A scalar, or something the schema does not have (decoding judges it).
    Other,
}

fn member(parent: Msg, key: &str) -> Member {
    let repeated = |element| Member::Repeated { parent, element };
    match (parent, key) {
        (Msg::Request, "resourceSpans") => repeated(Msg::ResourceSpans),
        (Msg::ResourceSpans, "resource") => Member::Message(Msg::Resource),
        (Msg::ResourceSpans, "scopeSpans") => repeated(Msg::ScopeSpans),
        (Msg::Resource, "entityRefs") => repeated(Msg::EntityRef),
        (Msg::ScopeSpans, "scope") => Member::Message(Msg::Scope),
        (Msg::ScopeSpans, "spans") => repeated(Msg::Span),
        (Msg::Resource | Msg::Scope | Msg::Span | Msg::Event | Msg::Link, "attributes")
        | (Msg::KeyValueList, "values") => repeated(Msg::KeyValue),
        (Msg::Span, "events") => repeated(Msg::Event),
        (Msg::Span, "links") => repeated(Msg::Link),
        (Msg::Span, "status") => Member::Message(Msg::Status),
        (Msg::KeyValue, "value") => Member::Message(Msg::AnyValue),
        (Msg::AnyValue, "arrayValue") => Member::Message(Msg::ArrayValue),
        (Msg::AnyValue, "kvlistValue") => Member::Message(Msg::KeyValueList),
        (Msg::ArrayValue, "values") => repeated(Msg::AnyValue),
        _ => Member::Other,
    }
}

/// One JSON value, and what it is in the schema.
struct Node<'a> {
    member: Member,
    scan: &'a mut Scan,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, json: D) -> Result<(), D::Error> {
        json.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an OTLP/JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let message = match self.member {
            Member::Message(message) => Some(message),
            _ => None,
        };
        if message == Some(Msg::Span) {
            self.scan.spans += 1;
        }
        let mut members: usize = 0;
        while let Some((member, key_len)) = map.next_key_seed(Key(message))? {
            members += 1;
            // The tree owns the key; the generated types do not.
            self.scan.decoded_bytes += string_cost(key_len);
            map.next_value_seed(Node {
                member,
                scan: self.scan,
            })?;
        }
        self.scan.decoded_bytes += members.div_ceil(BTREE_NODE_MEMBERS) * BTREE_NODE;
        Ok(())
    }

    /// Each element costs its place in the JSON array, and in a repeated field its place
    /// in the generated `Vec`; a list of key-values is one owner's attributes.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (element, cost) = match self.member {
            Member::Repeated { parent, element } => {
                (Member::Message(element), element_cost(parent, element))
            }
            _ => (Member::Other, 0),
        };
        let mut elements = 0;
        while seq
            .next_element_seed(Node {
                member: element,
                scan: self.scan,
            })?
            .is_some()
        {
            elements += 1;
            self.scan.decoded_bytes += 2 * TREE_VALUE + cost;
        }
        if matches!(element, Member::Message(Msg::KeyValue)) {
            self.scan.most_attributes = self.scan.most_attributes.max(elements);
        }
        Ok(())
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        // Once in the tree, once in the generated types.
        self.scan.decoded_bytes += 2 * string_cost(text.len());
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A member's key, read as what its value is inside the message (if any) and its length.
struct Key(Option<Msg>);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = (Member, usize);

    fn deserialize<D: serde::Deserializer<'de>>(self, json: D) -> Result<Self::Value, D::Error> {
        json.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = (Member, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        let member = self.0.map_or(Member::Other, |parent| member(parent, key));
        Ok((member, key.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_attributes_are_counted_by_where_they_sit() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":{"stringValue":"x"}},{"key":"b","value":{"kvlistValue":{"values":[{"key":"c"},{"key":"d"},{"key":"e"}]}}}]},"scopeSpans":[{"spans":[{"name":"s","attributes":[]},{}]}]}]}"#;
        let scan = scan_request(body).expect("valid JSON");
        assert_eq!(scan.spans, 2);
        assert_eq!(scan.most_attributes, 3, "the kvlist's entries");
        assert!(scan.decoded_bytes > 2 * std::mem::size_of::<crate::otlp::Span>());
    }

    #[test]
    fn a_member_given_twice_is_counted_twice_as_parsing_it_costs_both() {
        // The decoder keeps the last copy; the bound counts both (found by fuzz/json_scan).
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{}]}],"scopeSpans":[]}]}"#;
        assert_eq!(scan_request(body).expect("valid JSON").spans, 1);
        let decoded = crate::otlp::json::decode_request(body).expect("decodes");
        assert_eq!(crate::otlp::span_count(&decoded.resource_spans), 0);
    }

    #[test]
    fn what_is_not_json_is_refused_with_the_parser_s_reason() {
        let error = scan_request(b"{\"resourceSpans\": [").expect_err("truncated");
        assert!(
            error.to_string().contains("body is not valid JSON"),
            "{error}"
        );
    }
}
