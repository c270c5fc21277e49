//! Batching with answers: the batcher, and the shares of the answers of the clients whose
//! spans wait in it, so every batch that leaves carries the answers it may hold spans of.

use super::ack::Ack;
use super::batcher::Batcher;
use crate::otlp::SpanBatch;

/// The batcher, and the answers of the requests whose spans are in it: every batch that
/// leaves carries a share of each answer it may hold spans of.
pub struct Batching {
    batcher: Batcher,
    waiting: Vec<Ack>,
    /// Spans in the batcher whose clients were answered already (they came without an
    /// answer to wait for): what a failure would lose.
    acknowledged: usize,
}

/// A batch leaving the batcher, with its shares of the clients' answers.
pub type Leaving = (SpanBatch, Vec<Ack>);

impl Batching {
    /// Batching by `batcher`'s limits, with no client waiting yet.
    pub fn new(batcher: Batcher) -> Self {
        Self {
            batcher,
            waiting: Vec::new(),
            acknowledged: 0,
        }
    }

    /// Spans in the batcher whose clients were answered already.
    pub fn acknowledged_spans(&self) -> usize {
        self.acknowledged
    }

    /// Whether no span is waiting.
    pub fn is_empty(&self) -> bool {
        self.batcher.is_empty()
    }

    /// Whether a client waits for spans that are still in the batcher.
    pub fn has_waiting_clients(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Adds a request's spans; returns the batches that became full.
    pub fn push(&mut self, batch: SpanBatch, ack: Option<Ack>) -> Vec<Leaving> {
        let has_ack = ack.is_some();
        let spans = batch.span_count();
        self.waiting.extend(ack);
        let full = self.batcher.push(batch);
        if full.is_empty() {
            if !has_ack {
                self.acknowledged += spans;
            }
            return Vec::new();
        }
        self.acknowledged = if has_ack {
            0
        } else {
            self.batcher.pending_spans()
        };
        let leaving = full
            .into_iter()
            .map(|batch| (batch, self.waiting.clone()))
            .collect();
        // A full batch takes everything that was waiting, so only this request's spans
        // can still be in the batcher.
        let current = (has_ack && !self.batcher.is_empty())
            .then(|| self.waiting.pop())
            .flatten();
        self.waiting.drain(..).for_each(Ack::confirm);
        self.waiting.extend(current);
        leaving
    }

    /// Takes what is waiting, with every waiting answer.
    pub fn flush(&mut self) -> Option<Leaving> {
        let acks = std::mem::take(&mut self.waiting);
        self.acknowledged = 0;
        match self.batcher.flush() {
            Some(batch) => Some((batch, acks)),
            None => {
                acks.into_iter().for_each(Ack::confirm);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{ResourceSpans, ScopeSpans, Span};

    fn with_ack(names: &[String]) -> (SpanBatch, Ack, crate::pipeline::ack::AckWait) {
        let (ack, wait) = Ack::new();
        let batch = SpanBatch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: names
                    .iter()
                    .map(|n| Span {
                        name: n.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }]);
        (batch, ack, wait)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever the request sizes, batch limit and timeouts, a client is answered only
        /// once every batch holding any of its spans is written, and then always.
        #[test]
        fn a_client_is_answered_exactly_when_all_its_batches_are_written(
            requests in proptest::collection::vec((1usize..30, proptest::bool::ANY), 1..20),
            max_spans in 1usize..25,
        ) {
            let mut batching = Batching::new(Batcher::new(max_spans, 1 << 20));
            let mut answers = Vec::new();
            let mut leaving = Vec::new();
            for (k, (spans, timeout_after)) in requests.iter().enumerate() {
                let names: Vec<String> = (0..*spans).map(|i| format!("{k}/{i}")).collect();
                let (batch, ack, answer) = with_ack(&names);
                answers.push(answer);
                leaving.extend(batching.push(batch, Some(ack)));
                if *timeout_after {
                    leaving.extend(batching.flush());
                }
            }
            leaving.extend(batching.flush());

            let request_of = |name: &str| -> usize {
                name.split('/').next().and_then(|k| k.parse().ok()).expect("k/i")
            };
            let holds: Vec<Vec<usize>> = leaving
                .iter()
                .map(|(batch, _)| {
                    let mut requests: Vec<usize> = batch
                        .clone()
                        .into_request()
                        .resource_spans
                        .iter()
                        .flat_map(|rs| &rs.scope_spans)
                        .flat_map(|ss| &ss.spans)
                        .map(|s| request_of(&s.name))
                        .collect();
                    requests.dedup();
                    requests
                })
                .collect();
            let total: usize = leaving.iter().map(|(b, _)| b.span_count()).sum();
            proptest::prop_assert_eq!(total, requests.iter().map(|r| r.0).sum::<usize>());
            for (j, (_, acks)) in leaving.into_iter().enumerate() {
                let unwritten = holds[j..].iter().flatten().copied().collect::<Vec<_>>();
                for &k in &unwritten {
                    proptest::prop_assert!(
                        answers[k].try_recv().is_err(),
                        "request {} answered before batch {} holding its spans was written", k, j
                    );
                }
                acks.into_iter().for_each(Ack::confirm);
            }
            for (k, answer) in answers.iter_mut().enumerate() {
                proptest::prop_assert_eq!(answer.try_recv(), Ok(Ok(())), "request {}", k);
            }
        }
    }
}
