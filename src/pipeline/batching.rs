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

    /// Spans lost since the last call because they failed to decode in the batcher.
    pub fn take_undecodable(&mut self) -> usize {
        self.batcher.take_undecodable()
    }

    /// Whether a client waits for spans that are still in the batcher.
    pub fn has_waiting_clients(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Adds a request's spans; returns the batches that became full, each carrying a share
    /// of the answer of every request it holds spans of, and of no other.
    pub fn push(&mut self, batch: SpanBatch, ack: Option<Ack>) -> Vec<Leaving> {
        let spans = batch.span_count();
        if spans == 0 {
            // Nothing of it is left to write.
            ack.into_iter().for_each(Ack::confirm);
            return Vec::new();
        }
        let full = self.batcher.push(batch);
        if full.is_empty() {
            if ack.is_none() {
                self.acknowledged += spans;
            }
            self.waiting.extend(ack);
            return Vec::new();
        }
        // The first full batch took everything that waited before this request, so only
        // this request's spans can still be in the batcher; the rest of them are in the
        // last full batches, since batches leave in the order spans came.
        let behind = self.batcher.pending_spans();
        let mut in_full = spans.saturating_sub(behind);
        let mut holds_current = vec![false; full.len()];
        for (holds, batch) in holds_current.iter_mut().zip(&full).rev() {
            *holds = in_full > 0;
            in_full = in_full.saturating_sub(batch.span_count());
        }
        let mut older = std::mem::take(&mut self.waiting);
        let leaving = full
            .into_iter()
            .zip(holds_current)
            .map(|(batch, holds_current)| {
                let mut acks = std::mem::take(&mut older);
                if holds_current {
                    acks.extend(ack.clone());
                }
                (batch, acks)
            })
            .collect();
        self.acknowledged = if ack.is_none() { behind } else { 0 };
        match ack {
            Some(ack) if behind > 0 => self.waiting.push(ack),
            // Every share it needs went with the batches holding its spans.
            Some(ack) => ack.confirm(),
            None => {}
        }
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
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::otlp::{ResourceSpans, ScopeSpans, Span};
    use crate::pipeline::ack::{AckWait, NotQueued};

    /// A request of `spans` spans named `<request>/<i>`.
    fn request(k: usize, spans: usize) -> SpanBatch {
        SpanBatch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        name: format!("{k}/{i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    /// The request of every span in `batch`, in order.
    fn requests_in(batch: &SpanBatch) -> Vec<usize> {
        batch
            .clone()
            .into_request()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| {
                s.name
                    .split('/')
                    .next()
                    .and_then(|k| k.parse().ok())
                    .expect("k/i")
            })
            .collect()
    }

    /// What the exporters do with a leaving batch's answers.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Outcome {
        Confirm,
        Fail(NotQueued),
        /// Dropped unconfirmed: counts as `Stopped`.
        Drop,
    }

    impl Outcome {
        fn result(self) -> Result<(), NotQueued> {
            match self {
                Outcome::Confirm => Ok(()),
                Outcome::Fail(reason) => Err(reason),
                Outcome::Drop => Err(NotQueued::Stopped),
            }
        }

        fn apply(self, acks: Vec<Ack>) {
            match self {
                Outcome::Confirm => acks.into_iter().for_each(Ack::confirm),
                Outcome::Fail(reason) => acks.into_iter().for_each(|ack| ack.fail(reason)),
                Outcome::Drop => drop(acks),
            }
        }
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            4 => Just(Outcome::Confirm),
            1 => Just(Outcome::Fail(NotQueued::Full)),
            1 => Just(Outcome::Fail(NotQueued::WriteFailed)),
            1 => Just(Outcome::Drop),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A request of this many spans, waiting for its answer or already answered.
        Push { spans: usize, ack: bool },
        /// The batch timeout.
        Flush,
        /// One of the batches that left and are not resolved yet is written (or not).
        Resolve(Index, Outcome),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..30, any::<bool>()).prop_map(|(spans, ack)| Step::Push { spans, ack }),
            1 => Just(Step::Flush),
            3 => (any::<Index>(), outcome()).prop_map(|(i, o)| Step::Resolve(i, o)),
        ]
    }

    struct Client {
        spans: usize,
        /// Whether it waits for an answer.
        with_ack: bool,
        /// Spans that have left the batcher.
        left: usize,
        /// The client's end, while it waits for an answer.
        wait: Option<AckWait>,
        answer: Option<Result<(), NotQueued>>,
    }

    struct Leaving {
        /// Requests with spans in the batch.
        holds: Vec<usize>,
        /// Requests whose answer the batch carries a share of.
        carries: Vec<usize>,
        acks: Option<Vec<Ack>>,
        /// When (in resolutions) and how the batch was resolved.
        resolved: Option<(usize, Outcome)>,
    }

    /// The test's world: the requests, the batches that left, and which answers wait in
    /// the batching (every answer pushed since batches last left, and the request whose
    /// spans stayed behind when they did).
    struct World {
        batching: Batching,
        clients: Vec<Client>,
        out: Vec<Leaving>,
        waiting: Vec<usize>,
        resolutions: usize,
    }

    impl World {
        fn leave(&mut self, batch: &SpanBatch, acks: Vec<Ack>) -> Result<(), TestCaseError> {
            let mut holds = requests_in(batch);
            for &k in &holds {
                self.clients[k].left += 1;
            }
            holds.dedup();
            let carries: Vec<usize> = holds
                .iter()
                .copied()
                .filter(|&k| self.clients[k].with_ack)
                .collect();
            prop_assert_eq!(
                acks.len(),
                carries.len(),
                "a leaving batch carries the answers of exactly the requests it holds spans of"
            );
            self.out.push(Leaving {
                holds,
                carries,
                acks: Some(acks),
                resolved: None,
            });
            Ok(())
        }

        fn push(&mut self, spans: usize, ack: bool) -> Result<(), TestCaseError> {
            let k = self.clients.len();
            let (ack, wait) = if ack {
                let (ack, wait) = Ack::new();
                (Some(ack), Some(wait))
            } else {
                (None, None)
            };
            self.clients.push(Client {
                spans,
                with_ack: ack.is_some(),
                left: 0,
                wait,
                answer: None,
            });
            if ack.is_some() && spans > 0 {
                self.waiting.push(k);
            }
            let leaving = self.batching.push(request(k, spans), ack);
            let left = !leaving.is_empty();
            for (batch, acks) in leaving {
                self.leave(&batch, acks)?;
            }
            if left {
                for (j, client) in self.clients.iter().enumerate() {
                    prop_assert!(
                        j == k || client.left == client.spans,
                        "request {} still has spans in the batcher after batches left on request {}",
                        j,
                        k
                    );
                }
                let behind = self.clients[k].left < spans;
                self.waiting.retain(|&j| j == k && behind);
            }
            Ok(())
        }

        fn flush(&mut self) -> Result<(), TestCaseError> {
            if let Some((batch, acks)) = self.batching.flush() {
                self.leave(&batch, acks)?;
            }
            // With nothing left in the batcher, an answer without a batch is confirmed.
            self.waiting.clear();
            Ok(())
        }

        /// Resolves one of the batches not resolved yet: the one `pick` chooses, or the oldest.
        fn resolve(&mut self, pick: Option<Index>, outcome: Outcome) {
            let open: Vec<usize> = (0..self.out.len())
                .filter(|&j| self.out[j].resolved.is_none())
                .collect();
            if open.is_empty() {
                return;
            }
            let j = open[pick.map_or(0, |pick| pick.index(open.len()))];
            let acks = self.out[j].acks.take().unwrap_or_default();
            self.out[j].resolved = Some((self.resolutions, outcome));
            self.resolutions += 1;
            outcome.apply(acks);
        }

        /// Checks every client's answer and the acknowledged spans against what is known.
        fn check(&mut self) -> Result<(), TestCaseError> {
            let in_batcher_answered: usize = self
                .clients
                .iter()
                .filter(|c| c.wait.is_none() && c.answer.is_none())
                .map(|c| c.spans - c.left)
                .sum();
            prop_assert_eq!(self.batching.acknowledged_spans(), in_batcher_answered);
            let in_batcher: usize = self.clients.iter().map(|c| c.spans - c.left).sum();
            prop_assert_eq!(self.batching.is_empty(), in_batcher == 0);
            prop_assert_eq!(
                self.batching.has_waiting_clients(),
                !self.waiting.is_empty()
            );
            for client in &mut self.clients {
                if let Some(wait) = &mut client.wait
                    && let Ok(answer) = wait.try_recv()
                {
                    client.answer = Some(answer);
                    client.wait = None;
                }
            }
            for (k, client) in self.clients.iter().enumerate() {
                if client.wait.is_none() && client.answer.is_none() {
                    continue; // came without an answer to wait for
                }
                let holders: Vec<&Leaving> =
                    self.out.iter().filter(|b| b.holds.contains(&k)).collect();
                let carriers: Vec<&Leaving> =
                    self.out.iter().filter(|b| b.carries.contains(&k)).collect();
                for b in &holders {
                    prop_assert!(
                        b.carries.contains(&k),
                        "a batch holds spans of {} but not its answer",
                        k
                    );
                }
                let Some(answer) = client.answer else {
                    let due =
                        !self.waiting.contains(&k) && carriers.iter().all(|b| b.resolved.is_some());
                    prop_assert!(
                        !due,
                        "request {} is not answered though every share is resolved",
                        k
                    );
                    continue;
                };
                // The spec: answered only once every span left and every batch holding one
                // is resolved; "accepted" only if all those batches were written.
                prop_assert_eq!(
                    client.left,
                    client.spans,
                    "request {} answered with spans in the batcher",
                    k
                );
                for b in &holders {
                    let Some((_, outcome)) = b.resolved else {
                        return Err(TestCaseError::fail(format!(
                            "request {k} answered before a batch holding its spans was resolved"
                        )));
                    };
                    if answer.is_ok() {
                        prop_assert_eq!(
                            outcome,
                            Outcome::Confirm,
                            "request {} accepted though a batch of its spans was not written",
                            k
                        );
                    }
                }
                // The rule exactly: once every carried share is resolved, the first failure
                // in the order the shares were resolved (not the order batches left) wins.
                prop_assert!(!self.waiting.contains(&k));
                let mut resolved: Vec<(usize, Outcome)> = Vec::new();
                for b in &carriers {
                    let Some(r) = b.resolved else {
                        return Err(TestCaseError::fail(format!(
                            "request {k} answered before every share was resolved"
                        )));
                    };
                    resolved.push(r);
                }
                resolved.sort_by_key(|(at, _)| *at);
                let expected = resolved
                    .iter()
                    .map(|(_, o)| o.result())
                    .find(Result::is_err)
                    .unwrap_or(Ok(()));
                prop_assert_eq!(answer, expected, "request {}", k);
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Requests with and without an answer to wait for, batch timeouts, and the leaving
        /// batches written, refused (full, failed) or dropped in any order, interleaved with
        /// new requests: a client is answered only once all its spans left and every batch
        /// holding any of them is resolved; "accepted" only if each of those was written,
        /// refused if one was not. The acknowledged spans in the batcher are counted exactly
        /// at every step.
        ///
        /// Exactly: a leaving batch carries a share of the answer of every request it holds
        /// spans of, and of no other, so a failure elsewhere never refuses a client. The
        /// answer comes when the last batch holding its spans is resolved: accepted if all
        /// were written, else the reason of the one that failed first in time (resolution
        /// order, not the order the batches left).
        #[test]
        fn a_client_is_answered_exactly_when_all_its_batches_are_resolved_with_the_first_failure(
            steps in prop::collection::vec(step(), 1..40),
            last in prop::collection::vec((any::<Index>(), outcome()), 1..16),
            max_spans in 1usize..25,
        ) {
            let mut world = World {
                batching: Batching::new(Batcher::new(max_spans, 1 << 20)),
                clients: Vec::new(),
                out: Vec::new(),
                waiting: Vec::new(),
                resolutions: 0,
            };
            for step in steps {
                match step {
                    Step::Push { spans, ack } => world.push(spans, ack)?,
                    Step::Flush => world.flush()?,
                    Step::Resolve(pick, outcome) => world.resolve(Some(pick), outcome),
                }
                world.check()?;
            }
            world.flush()?;
            world.check()?;
            // The rest leave in a random order with random fates.
            for (pick, outcome) in last.iter().cycle().take(world.out.len()) {
                world.resolve(Some(*pick), *outcome);
                world.check()?;
            }
            let open: Vec<usize> = (0..world.out.len()).filter(|&j| world.out[j].resolved.is_none()).collect();
            for _ in open {
                world.resolve(None, Outcome::Confirm);
                world.check()?;
            }
            let total: usize = world.clients.iter().map(|c| c.spans).sum();
            let left: usize = world.clients.iter().map(|c| c.left).sum();
            prop_assert_eq!(left, total, "spans lost");
            for (k, client) in world.clients.iter().enumerate() {
                prop_assert!(client.wait.is_none(), "request {} never answered", k);
            }
        }
    }
}
