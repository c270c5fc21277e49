//! The `signals` stage: exact Daena figures from every span the noise filter keeps, before
//! any sampling drops one (LLM requests, cost and tokens; council phase durations and
//! rounds; bus messages and rate limiting; NBMF operations; HTTP routes).
//!
//! It reads the few keys it needs through the Daena schema, as the `daena` stage would
//! normalise them, without writing to the span: the spans it sees may still be dropped by
//! head sampling, and those it keeps are normalised later.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::daena::{bool_of, is_rate_limit_event, one_of};
use super::key_cache::KeyCache;
use super::schema::{Schema, ValueRule};
use super::{Processor, SpanStage};
use crate::config::ProcessorsConfig;
use crate::otlp::edit::SpanMut;
use crate::otlp::view::{LazyValue, SpanRead, SpanRef, ValueRef, walk_spans};
use crate::otlp::{Resource, Span, SpanBatch, SpanKind, StatusCode};
use crate::telemetry::signals::{Signal, SignalTable, Signals, Tally};

/// The most council rounds followed at once; a round past it is counted as incomplete.
const MAX_ROUNDS: usize = 100_000;
/// The label value of a label the span does not give.
const UNKNOWN: &str = "unknown";

/// What a key means to this stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Model,
    CasHit,
    NearDup,
    Cost,
    Department,
    Phase,
    RoundId,
    Topic,
    BusOperation,
    NbmfOperation,
    Tier,
    Class,
    HttpRoute,
    HttpStatus,
    TokensIn,
    TokensOut,
}

/// The schema keys each role reads (matched through the schema, so their spellings too).
const SCHEMA_ROLES: [(&str, Role); 12] = [
    ("llm.model", Role::Model),
    ("llm.cas_hit", Role::CasHit),
    ("llm.near_dup", Role::NearDup),
    ("llm.cost_usd", Role::Cost),
    ("council.department", Role::Department),
    ("council.phase", Role::Phase),
    ("council.round_id", Role::RoundId),
    ("message_bus.topic", Role::Topic),
    ("message_bus.operation", Role::BusOperation),
    ("nbmf.operation", Role::NbmfOperation),
    ("nbmf.tier", Role::Tier),
    ("nbmf.class", Role::Class),
];

/// Keys outside the schema the roles read as they are.
const PLAIN_ROLES: [(&str, Role); 8] = [
    ("http.route", Role::HttpRoute),
    ("http.response.status_code", Role::HttpStatus),
    ("http.status_code", Role::HttpStatus),
    ("llm.tokens.input", Role::TokensIn),
    ("gen_ai.usage.input_tokens", Role::TokensIn),
    ("llm.tokens.output", Role::TokensOut),
    ("gen_ai.usage.output_tokens", Role::TokensOut),
    ("llm.usage.completion_tokens", Role::TokensOut),
];

const ROLES: usize = 16;

/// A council round followed until its commit phase.
enum Round {
    /// Seen at, in department.
    Open(Instant, String),
    /// Its commit phase was counted at this time (later spans of it are not a new round).
    Done(Instant),
}

/// Counts the signals of every span it sees.
pub struct SignalsCounter {
    schema: Schema,
    /// Per schema row, the role it plays, if any.
    row_roles: Vec<Option<Role>>,
    keys: KeyCache<Option<(Role, Option<usize>)>>,
    signals: Signals,
    round_window: Duration,
    rounds: HashMap<String, Round>,
    /// The current batch's tallies.
    tallies: BatchTallies,
    /// When the previous batch ended: the time of the rounds this batch opens or closes.
    now: Instant,
}

impl SignalsCounter {
    /// Builds the stage; it reads the schema of `config.daena` and fills `signals`.
    pub fn new(config: &ProcessorsConfig, signals: Signals) -> Self {
        let schema = Schema::new(&config.daena.schema);
        let row_roles = schema
            .fields
            .iter()
            .map(|field| {
                SCHEMA_ROLES
                    .iter()
                    .find(|(key, _)| *key == field.key)
                    .map(|(_, role)| *role)
            })
            .collect();
        signals
            .lock()
            .set_limit(config.signals.max_series_per_metric);
        Self {
            schema,
            row_roles,
            keys: KeyCache::new(),
            signals,
            round_window: config.signals.round_window,
            rounds: HashMap::new(),
            tallies: BatchTallies::default(),
            now: Instant::now(),
        }
    }

    /// The role of `key`, and its schema row.
    fn classify(
        schema: &Schema,
        row_roles: &[Option<Role>],
        key: &str,
    ) -> Option<(Role, Option<usize>)> {
        if let Some((row, _)) = schema.lookup(key) {
            return row_roles[row].map(|role| (role, Some(row)));
        }
        PLAIN_ROLES
            .iter()
            .find(|(plain, _)| *plain == key)
            .map(|(_, role)| (*role, None))
    }
}

/// The tallies of the current batch. A series' labels are owned once, when the series is
/// first seen, and kept at zero for the next batches: counting a span allocates nothing.
#[derive(Default)]
struct BatchTallies {
    /// By a hash of the signal and its label values: the series with that hash.
    series: HashMap<u64, Vec<Series>, BuildHasherDefault<Fnv>>,
    /// Series kept.
    kept: usize,
}

/// One series of a batch: its signal, label values (padded to four) and tally.
type Series = (Signal, [String; 4], Tally);

/// Series kept from batch to batch at most; past it they are let go after a flush.
const MAX_KEPT_SERIES: usize = 4096;

impl BatchTallies {
    /// The tally of `signal` with `labels`, `count` added to it.
    fn add(&mut self, signal: Signal, labels: &[&str], count: u64) -> &mut Tally {
        let mut hasher = Fnv::default();
        hasher.write_usize(signal as usize);
        for label in labels {
            hasher.write(label.as_bytes());
            hasher.write_u8(0xff);
        }
        let bucket = self.series.entry(hasher.finish()).or_default();
        let same =
            |(s, owned, _): &Series| *s == signal && owned.iter().zip(labels).all(|(a, b)| a == b);
        let at = if let Some(at) = bucket.iter().position(same) {
            at
        } else {
            let mut owned: [String; 4] = Default::default();
            for (slot, label) in owned.iter_mut().zip(labels) {
                (*label).clone_into(slot);
            }
            bucket.push((signal, owned, Tally::default()));
            self.kept += 1;
            bucket.len() - 1
        };
        let tally = &mut bucket[at].2;
        tally.count = tally.count.saturating_add(count);
        tally
    }

    /// Adds the batch's tallies to `table` and sets them back to zero.
    fn flush(&mut self, table: &mut SignalTable) {
        for (signal, labels, tally) in self.series.values_mut().flatten() {
            if *tally != Tally::default() {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                table.add(*signal, &labels[..signal.labels().len()], tally);
                *tally = Tally::default();
            }
        }
        if self.kept > MAX_KEPT_SERIES {
            self.series.clear();
            self.kept = 0;
        }
    }
}

/// FNV-1a: the batch's tally keys are a few short labels, hashed per span, where SipHash's
/// resistance to chosen collisions buys nothing (the table is per batch and bounded by it)
/// and cost a fifth of the stage.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// A span's round: its id, department, and the outcome when it is the commit phase.
type RoundSeen<'a> = (Cow<'a, str>, Cow<'a, str>, Option<&'static str>);

/// One span's values, by role: the value and the schema rule it is read by.
type Found<'a> = [Option<(ValueRef<'a>, Option<&'a ValueRule>)>; ROLES];

/// What the signals read of a span besides its attributes and [`SpanRead`]'s fields.
trait SpanFacts: SpanRead {
    /// Rate-limit events, in any spelling.
    fn rate_limit_events(&self) -> usize;
}

impl SpanFacts for Span {
    fn rate_limit_events(&self) -> usize {
        self.events
            .iter()
            .filter(|e| is_rate_limit_event(&e.name))
            .count()
    }
}

impl SpanFacts for SpanMut<'_, '_> {
    fn rate_limit_events(&self) -> usize {
        self.count_events(is_rate_limit_event)
    }
}

impl SpanFacts for SpanRef<'_> {
    fn rate_limit_events(&self) -> usize {
        self.events()
            .filter(|e| is_rate_limit_event(e.name()))
            .count()
    }
}

impl SignalsCounter {
    /// Counts the signals of one span of either form, its attributes given by `attributes`.
    fn count<'a>(
        &mut self,
        span: &impl SpanFacts,
        attributes: impl Iterator<Item = (&'a [u8], LazyValue<'a>)>,
    ) {
        let schema = &self.schema;
        let row_roles = &self.row_roles;
        let mut found: Found<'_> = [None; ROLES];
        for (key, value) in attributes {
            let Some((role, row)) = self
                .keys
                .get(key, |key| Self::classify(schema, row_roles, key))
            else {
                continue;
            };
            let slot = &mut found[role as usize];
            if slot.is_none() {
                let value = value.get();
                if value != ValueRef::Empty {
                    *slot = Some((value, row.map(|r| &schema.fields[r].rule)));
                }
            }
        }
        count_span(span, &found, &mut self.tallies, &mut self.rounds, self.now);
    }

    /// Ends a batch: rounds past their window are counted, the tallies go to the table.
    fn end_batch(&mut self) {
        self.now = Instant::now();
        expire_rounds(
            &mut self.rounds,
            self.round_window,
            self.now,
            &mut self.tallies,
        );
        self.tallies.flush(&mut self.signals.lock());
    }
}

/// The signals as a pass of their own, before head sampling: the spans still encoded are
/// read in place, so those the sampler drops are never decoded.
pub struct SignalsPass(pub SignalsCounter);

impl Processor for SignalsPass {
    fn name(&self) -> &'static str {
        "signals"
    }

    fn process(&mut self, batch: &mut SpanBatch) {
        let counter = &mut self.0;
        for (body, _) in batch.encoded_mut().iter() {
            walk_spans(body, |_, span| counter.count(span, span.attributes()));
        }
        for span in batch
            .decoded_mut()
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            counter.count(span, attributes_of(span));
        }
        counter.end_batch();
    }
}

/// A decoded span's attributes as the view gives them.
fn attributes_of(span: &Span) -> impl Iterator<Item = (&[u8], LazyValue<'_>)> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.as_bytes(), LazyValue::Ready(ValueRef::of(kv))))
}

impl SpanStage for SignalsCounter {
    fn name(&self) -> &'static str {
        "signals"
    }

    fn resource(&mut self, _resource: &mut Resource) {}

    fn span(&mut self, span: &mut SpanMut<'_, '_>) {
        let span = &*span;
        self.count(span, span.attributes());
    }

    fn finish_batch(&mut self) {
        self.end_batch();
    }
}

/// Notes a span of round `id`: a commit phase counts the round by its outcome (once);
/// another span opens it, to be counted as incomplete if no commit follows in time.
fn follow_round(
    rounds: &mut HashMap<String, Round>,
    (id, department, commit_outcome): RoundSeen<'_>,
    now: Instant,
    tallies: &mut BatchTallies,
) {
    match (commit_outcome, rounds.get(id.as_ref())) {
        (_, Some(Round::Done(_))) | (None, Some(Round::Open(..))) => {}
        (Some(outcome), _) => {
            add(
                tallies,
                Signal::CouncilRounds,
                [department, outcome.into()],
                1,
            );
            rounds.insert(id.into_owned(), Round::Done(now));
        }
        (None, None) if rounds.len() >= MAX_ROUNDS => {
            add(
                tallies,
                Signal::CouncilRounds,
                [department, "incomplete".into()],
                1,
            );
        }
        (None, None) => {
            rounds.insert(id.into_owned(), Round::Open(now, department.into_owned()));
        }
    }
}

/// Rounds open for longer than `window` are counted as incomplete; rounds done that long
/// ago are forgotten.
fn expire_rounds(
    rounds: &mut HashMap<String, Round>,
    window: Duration,
    now: Instant,
    tallies: &mut BatchTallies,
) {
    rounds.retain(|_, round| match round {
        Round::Open(at, department) if now.duration_since(*at) >= window => {
            let department = std::mem::take(department);
            add(
                tallies,
                Signal::CouncilRounds,
                [department.into(), "incomplete".into()],
                1,
            );
            false
        }
        Round::Done(at) => now.duration_since(*at) < window,
        Round::Open(..) => true,
    });
}

/// Adds `count` to the series `labels` of `signal`.
fn add<'t, const N: usize>(
    tallies: &'t mut BatchTallies,
    signal: Signal,
    labels: [Cow<'_, str>; N],
    count: u64,
) -> &'t mut Tally {
    tallies.add(signal, &labels.each_ref().map(AsRef::as_ref), count)
}

/// The signals of one span.
fn count_span(
    span: &impl SpanFacts,
    found: &Found<'_>,
    tallies: &mut BatchTallies,
    rounds: &mut HashMap<String, Round>,
    now: Instant,
) {
    let text = |role: Role| found[role as usize].and_then(|(v, rule)| canonical_text(v, rule));
    let label = |role: Role| text(role).unwrap_or(Cow::Borrowed(UNKNOWN));
    let duration = span.duration_nanos();
    let department = label(Role::Department);

    if found[Role::Model as usize].is_some() {
        let model = label(Role::Model);
        let flag = |role: Role| {
            let yes = found[role as usize].and_then(|(v, _)| canonical_bool(v)) == Some(true);
            Cow::Borrowed(if yes { "true" } else { "false" })
        };
        add(
            tallies,
            Signal::LlmRequests,
            [
                model.clone(),
                department.clone(),
                flag(Role::CasHit),
                flag(Role::NearDup),
            ],
            1,
        );
        if let Some(cost) = found[Role::Cost as usize].and_then(|(v, _)| canonical_f64(v))
            && cost.is_finite()
            && cost >= 0.0
        {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
            let billionths = (cost * 1e9).round() as u128;
            let tally = add(
                tallies,
                Signal::LlmCost,
                [model.clone(), department.clone()],
                1,
            );
            tally.billionths = tally.billionths.saturating_add(billionths);
        }
        for (role, direction) in [(Role::TokensIn, "input"), (Role::TokensOut, "output")] {
            if let Some(tokens) = found[role as usize].and_then(|(v, _)| canonical_count(v)) {
                add(
                    tallies,
                    Signal::LlmTokens,
                    [model.clone(), department.clone(), direction.into()],
                    tokens,
                );
            }
        }
    }
    if let Some(phase) = text(Role::Phase) {
        let is_commit = phase == "commit";
        add(
            tallies,
            Signal::CouncilPhaseDuration,
            [department.clone(), phase],
            0,
        )
        .observe(duration);
        if let Some(id) = text(Role::RoundId) {
            let outcome = is_commit.then(|| match span.status() {
                StatusCode::Error => "error",
                _ => "ok",
            });
            follow_round(rounds, (id, department.clone(), outcome), now, tallies);
        }
    } else if let Some(id) = text(Role::RoundId) {
        follow_round(rounds, (id, department.clone(), None), now, tallies);
    }
    let bus = found[Role::Topic as usize].is_some() || found[Role::BusOperation as usize].is_some();
    if bus {
        let topic = label(Role::Topic);
        add(
            tallies,
            Signal::BusMessages,
            [topic.clone(), label(Role::BusOperation)],
            1,
        );
        let limited = span.rate_limit_events();
        if limited > 0 {
            add(tallies, Signal::BusRateLimited, [topic], limited as u64);
        }
    }
    if found[Role::NbmfOperation as usize].is_some() {
        let operation = label(Role::NbmfOperation);
        let tier = label(Role::Tier);
        add(
            tallies,
            Signal::NbmfOperations,
            [operation.clone(), tier.clone(), label(Role::Class)],
            1,
        );
        add(tallies, Signal::NbmfDuration, [operation, tier], 0).observe(duration);
    }
    if span.kind() == SpanKind::Server {
        let route = match found[Role::HttpRoute as usize] {
            Some((ValueRef::Str(route), _)) => Some(Cow::Borrowed(route)),
            _ => route_of_name(span.name()).map(Cow::Borrowed),
        };
        if let Some(route) = route {
            let status_class =
                match found[Role::HttpStatus as usize].and_then(|(v, _)| canonical_count(v)) {
                    // No allocation per span: the five classes are literals.
                    Some(code @ 100..=599) => Cow::Borrowed(
                        ["1xx", "2xx", "3xx", "4xx", "5xx"][(code / 100 - 1) as usize],
                    ),
                    _ => Cow::Borrowed(UNKNOWN),
                };
            add(
                tallies,
                Signal::HttpRequests,
                [route.clone(), status_class],
                1,
            );
            add(tallies, Signal::HttpDuration, [route], 0).observe(duration);
        }
    }
}

/// The route template of a span named like `POST /api/v1/chat`.
fn route_of_name(name: &str) -> Option<&str> {
    let (method, route) = name.split_once(' ')?;
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    (methods.contains(&method) && route.starts_with('/') && !route.contains(' ')).then_some(route)
}

/// A value as text, normalised by its schema rule as the daena stage would.
fn canonical_text<'a>(value: ValueRef<'a>, rule: Option<&'a ValueRule>) -> Option<Cow<'a, str>> {
    match (rule, value) {
        (Some(ValueRule::OneOf(choices)), ValueRef::Str(s)) => {
            one_of(choices, s.trim()).map(Cow::Borrowed)
        }
        (Some(ValueRule::OneOf(choices)), ValueRef::Int(i)) => {
            one_of(choices, &i.to_string()).map(Cow::Borrowed)
        }
        (_, ValueRef::Str(s)) => Some(Cow::Borrowed(s.trim())),
        (_, ValueRef::Int(i)) => Some(Cow::Owned(i.to_string())),
        _ => None,
    }
}

/// A boolean as the schema's `bool` rule reads it.
fn canonical_bool(value: ValueRef<'_>) -> Option<bool> {
    match value {
        ValueRef::Bool(b) => Some(b),
        ValueRef::Int(i @ (0 | 1)) => Some(i == 1),
        ValueRef::Str(s) => bool_of(s),
        _ => None,
    }
}

/// A number as the schema's `double` rule reads it.
fn canonical_f64(value: ValueRef<'_>) -> Option<f64> {
    match value {
        ValueRef::Double(d) => Some(d),
        #[allow(clippy::cast_precision_loss)] // costs are far below 2^53
        ValueRef::Int(i) => Some(i as f64),
        ValueRef::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A non-negative whole number (tokens, a status code).
fn canonical_count(value: ValueRef<'_>) -> Option<u64> {
    match value {
        ValueRef::Int(i) => u64::try_from(i).ok(),
        ValueRef::Str(s) => s.trim().parse().ok(),
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, checked
        ValueRef::Double(d) if d.fract() == 0.0 && (0.0..1e15).contains(&d) => Some(d as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
