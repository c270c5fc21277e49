//! The `limits` stage: caps string value length and the number of attributes, events and
//! links per span, recording what it cut in the span's OTLP `dropped_*_count` fields and
//! in the agent's metrics.

use std::sync::Arc;

use super::{SpanStage, flush_counts};
use crate::config::LimitsConfig;
use crate::otlp::edit::{AttributesMut, SpanMut};
use crate::otlp::view::ValueRef;
use crate::otlp::{Resource, Value};
use crate::telemetry::Metrics;

/// What a truncated string value ends with.
pub const TRUNCATED: &str = "…[truncated]";

/// Kinds of cut, the `kind` label of the metric.
const KINDS: [&str; 4] = ["attributes", "events", "links", "values_truncated"];

/// Enforces `processors.limits` in place.
pub struct Limiter {
    max_value_length: usize,
    max_attributes: usize,
    max_events: usize,
    max_links: usize,
    metrics: Arc<Metrics>,
    /// Cuts of the current batch, by [`KINDS`] index.
    counts: [u64; KINDS.len()],
}

impl Limiter {
    /// Builds the stage from its (validated) config.
    pub fn new(config: &LimitsConfig, metrics: Arc<Metrics>) -> Self {
        // Every kind shows at 0 from the start, so an alert on its rate sees 0.
        for kind in KINDS {
            metrics.limited(kind, 0);
        }
        Self {
            max_value_length: config.max_attribute_value_length.max(TRUNCATED.len() + 4),
            max_attributes: config.max_attributes,
            max_events: config.max_events,
            max_links: config.max_links,
            metrics,
            counts: [0; KINDS.len()],
        }
    }

    /// Cuts `attributes` to the limit and truncates long strings; returns how many it dropped.
    fn limit_attributes(&mut self, attributes: &mut (impl AttributesMut + ?Sized)) -> u32 {
        let dropped = attributes.count().saturating_sub(self.max_attributes);
        attributes.truncate(self.max_attributes);
        self.counts[0] += dropped as u64;
        for i in 0..attributes.count() {
            match attributes.value(i) {
                ValueRef::Str(text) if text.len() > self.max_value_length => {
                    let mut text = text.to_owned();
                    self.truncate(&mut text);
                    attributes.set_value(i, Value::StringValue(text));
                }
                // Arrays and key-value lists read alike in place; only arrays are cut.
                ValueRef::Other => {
                    let Some(Value::ArrayValue(mut array)) =
                        attributes.value_owned(i).and_then(|v| v.value)
                    else {
                        continue;
                    };
                    let before = self.counts[3];
                    for item in &mut array.values {
                        if let Some(Value::StringValue(text)) = &mut item.value {
                            self.truncate(text);
                        }
                    }
                    if self.counts[3] != before {
                        attributes.set_value(i, Value::ArrayValue(array));
                    }
                }
                _ => {}
            }
        }
        u32::try_from(dropped).unwrap_or(u32::MAX)
    }

    fn truncate(&mut self, text: &mut String) {
        if truncate_marked(text, self.max_value_length) {
            self.counts[3] += 1;
        }
    }
}

impl SpanStage for Limiter {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn resource(&mut self, resource: &mut Resource) {
        resource.dropped_attributes_count += self.limit_attributes(&mut resource.attributes);
    }

    fn span(&mut self, span: &mut SpanMut<'_, '_>) {
        let dropped = self.limit_attributes(span);
        if dropped > 0 {
            span.span().dropped_attributes_count += dropped;
        }
        if span.event_count() > self.max_events {
            let span = span.span();
            let events = cut(&mut span.events, self.max_events);
            span.dropped_events_count += events;
            self.counts[1] += u64::from(events);
        }
        if span.link_count() > self.max_links {
            let span = span.span();
            let links = cut(&mut span.links, self.max_links);
            span.dropped_links_count += links;
            self.counts[2] += u64::from(links);
        }
        if span.event_count() > 0 {
            for event in span.events_mut() {
                event.dropped_attributes_count += self.limit_attributes(&mut event.attributes);
            }
        }
        if span.link_count() > 0 {
            for link in span.links_mut() {
                link.dropped_attributes_count += self.limit_attributes(&mut link.attributes);
            }
        }
    }

    fn finish_batch(&mut self) {
        let metrics = &self.metrics;
        flush_counts(&mut self.counts, KINDS, |kind, n| metrics.limited(kind, n));
    }
}

/// Keeps the first `max` items; returns how many it removed.
fn cut<T>(items: &mut Vec<T>, max: usize) -> u32 {
    let dropped = items.len().saturating_sub(max);
    items.truncate(max);
    u32::try_from(dropped).unwrap_or(u32::MAX)
}

/// Cuts `text` to at most `max` bytes at a character boundary, ending with [`TRUNCATED`];
/// returns whether it cut.
fn truncate_marked(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max - TRUNCATED.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED);
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::otlp::SpanBatch;
    use crate::otlp::{Event, Link, ResourceSpans, ScopeSpans, Span, key_value};
    use crate::processor::{Processor, SpanPass};

    #[test]
    fn long_values_are_cut_at_a_character_boundary_and_marked() {
        let mut text = "é".repeat(40); // 80 bytes
        assert!(truncate_marked(&mut text, 41));
        assert!(text.ends_with(TRUNCATED), "{text}");
        // 41 - 14 = 27 bytes of room; 27 is inside an "é", so the cut goes back to 26.
        assert_eq!(text.len(), 26 + TRUNCATED.len());
        let mut short = "abc".to_owned();
        assert!(!truncate_marked(&mut short, 40));
        assert_eq!(short, "abc");
    }

    #[test]
    fn attributes_events_and_links_over_the_limit_are_dropped_and_counted() {
        let attributes = |n: usize| {
            (0..n)
                .map(|i| key_value(format!("k{i}"), Value::IntValue(0)))
                .collect::<Vec<_>>()
        };
        let span = Span {
            attributes: attributes(5),
            dropped_attributes_count: 1,
            events: (0..4)
                .map(|_| Event {
                    attributes: attributes(3),
                    ..Default::default()
                })
                .collect(),
            links: (0..3).map(|_| Link::default()).collect(),
            ..Default::default()
        };
        let mut batch = SpanBatch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        let metrics = Arc::new(Metrics::default());
        let config = LimitsConfig {
            max_attributes: 2,
            max_events: 2,
            max_links: 1,
            ..LimitsConfig::default()
        };
        SpanPass::new(vec![Box::new(Limiter::new(&config, Arc::clone(&metrics)))])
            .process(&mut batch);
        let span = &batch.resource_spans_mut()[0].scope_spans[0].spans[0];
        assert_eq!(
            (span.attributes.len(), span.dropped_attributes_count),
            (2, 4)
        );
        assert_eq!((span.events.len(), span.dropped_events_count), (2, 2));
        assert_eq!((span.links.len(), span.dropped_links_count), (1, 2));
        assert!(
            span.events
                .iter()
                .all(|e| e.attributes.len() == 2 && e.dropped_attributes_count == 1)
        );
        let rendered = metrics.render();
        for line in [
            r#"daena_agent_limits_applied_total{kind="attributes"} 5"#,
            r#"daena_agent_limits_applied_total{kind="events"} 2"#,
            r#"daena_agent_limits_applied_total{kind="links"} 2"#,
        ] {
            assert!(rendered.contains(line), "{line} in {rendered}");
        }
    }

    proptest! {
        #[test]
        fn truncation_is_utf8_safe_bounded_and_idempotent(text in "\\PC{0,200}", max in 32usize..120) {
            let mut once = text.clone();
            let cut = truncate_marked(&mut once, max);
            prop_assert!(once.len() <= max.max(text.len().min(max)));
            prop_assert_eq!(cut, text.len() > max);
            if cut {
                prop_assert!(text.starts_with(once.trim_end_matches(TRUNCATED)));
            }
            let mut twice = once.clone();
            prop_assert!(!truncate_marked(&mut twice, max));
        }
    }
}
