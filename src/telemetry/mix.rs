//! The Daena mix for the status page: spans per `daena.component`, per council phase and
//! per LLM model over the last few minutes.
//!
//! The daena stage tallies each batch in a [`MixTally`] it owns (no lock, and no allocation
//! per span once a value has been seen) and hands it to the shared [`DaenaMix`] once per
//! batch. Memory is bounded whatever the input: at most [`TRACKED_VALUES`] values per
//! dimension per tally, each cut to [`MAX_VALUE_LEN`] bytes, in [`WINDOW_MINUTES`] tallies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Minutes the mix covers: the current one and those before it.
pub const WINDOW_MINUTES: usize = 5;
/// Distinct values a tally keeps per dimension. Past it, a new value takes the place of
/// the least counted one (the Space-Saving rule), so a flood of distinct values cannot
/// grow the tally nor push out a value that is frequent.
pub const TRACKED_VALUES: usize = 64;
/// Values shown per dimension; the rest are summed as `other_spans`.
pub const SHOWN_VALUES: usize = 20;
/// Bytes of a value kept (cut at a character boundary): enough for any model name.
pub const MAX_VALUE_LEN: usize = 64;

const MINUTE: Duration = Duration::from_secs(60);

/// Span counts of one dimension's values, at most [`TRACKED_VALUES`] of them.
///
/// Counts always sum to the spans added. When more distinct values come than it keeps,
/// a newcomer inherits the count of the value it replaces, so a count may include spans
/// of values that were replaced (never more than the smallest count at the time); a value
/// with more than 1/[`TRACKED_VALUES`] of the spans is always kept.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    entries: Vec<(String, u64)>,
}

impl Tally {
    /// Counts `spans` spans of `value`.
    pub fn add(&mut self, value: &str, spans: u64) {
        let value = clip(value);
        if let Some(entry) = self.entries.iter_mut().find(|(v, _)| v == value) {
            entry.1 += spans;
        } else if self.entries.len() < TRACKED_VALUES {
            self.entries.push((value.to_owned(), spans));
        } else if let Some(least) = self.entries.iter_mut().min_by_key(|(_, count)| *count) {
            // The replaced value's string is reused: no allocation for a hostile flood.
            least.0.clear();
            least.0.push_str(value);
            least.1 += spans;
        }
    }

    /// Spans counted.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|(_, count)| count).sum()
    }

    /// Starts counting again. Values counted since the last reset stay in place at 0, so
    /// the next batch, which usually has the same values, allocates nothing.
    fn reset(&mut self) {
        self.entries.retain(|(_, count)| *count > 0);
        for entry in &mut self.entries {
            entry.1 = 0;
        }
    }

    fn add_all(&mut self, other: &Tally) {
        for (value, count) in &other.entries {
            if *count > 0 {
                self.add(value, *count);
            }
        }
    }
}

/// `value` cut to at most [`MAX_VALUE_LEN`] bytes, at a character boundary.
fn clip(value: &str) -> &str {
    if value.len() <= MAX_VALUE_LEN {
        return value;
    }
    let mut end = MAX_VALUE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The mix of one batch, or of one minute.
#[derive(Debug, Clone, Default)]
pub struct MixTally {
    components: Tally,
    council_phases: Tally,
    llm_models: Tally,
    spans: u64,
}

impl MixTally {
    /// Counts one span: its `daena.component`, and its canonical council phase and LLM
    /// model when it has them.
    pub fn span(&mut self, component: &str, council_phase: Option<&str>, llm_model: Option<&str>) {
        self.spans += 1;
        self.components.add(component, 1);
        if let Some(phase) = council_phase {
            self.council_phases.add(phase, 1);
        }
        if let Some(model) = llm_model.filter(|m| !m.is_empty()) {
            self.llm_models.add(model, 1);
        }
    }

    /// Whether no span was counted since the last reset.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Starts counting again, keeping the values' strings for the next batch.
    pub fn reset(&mut self) {
        self.components.reset();
        self.council_phases.reset();
        self.llm_models.reset();
        self.spans = 0;
    }

    fn add_all(&mut self, other: &MixTally) {
        self.components.add_all(&other.components);
        self.council_phases.add_all(&other.council_phases);
        self.llm_models.add_all(&other.llm_models);
        self.spans += other.spans;
    }
}

/// The mix of the last [`WINDOW_MINUTES`] minutes, in one-minute steps; shared by the
/// daena stage, which adds to it once per batch, and the status page, which reads it.
#[derive(Debug)]
pub struct DaenaMix {
    started: Instant,
    /// One tally per minute, at the minute's number modulo [`WINDOW_MINUTES`].
    minutes: Mutex<[Minute; WINDOW_MINUTES]>,
}

#[derive(Debug, Default)]
struct Minute {
    /// Minutes since `started` this tally counts; `None` before the first span.
    number: Option<u64>,
    tally: MixTally,
}

impl Default for DaenaMix {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            minutes: Mutex::default(),
        }
    }
}

impl DaenaMix {
    /// Adds a batch's tally to the current minute.
    pub fn add(&self, batch: &MixTally) {
        self.add_at(batch, Instant::now());
    }

    /// The mix of the current minute and the [`WINDOW_MINUTES`]` - 1` before it.
    pub fn snapshot(&self) -> MixSnapshot {
        self.snapshot_at(Instant::now())
    }

    fn minute_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() / MINUTE.as_secs()
    }

    fn add_at(&self, batch: &MixTally, at: Instant) {
        let number = self.minute_of(at);
        let mut minutes = self.lock();
        let minute = &mut minutes[(number % WINDOW_MINUTES as u64) as usize];
        if minute.number != Some(number) {
            minute.number = Some(number);
            minute.tally.reset();
        }
        minute.tally.add_all(batch);
    }

    fn snapshot_at(&self, at: Instant) -> MixSnapshot {
        let now = self.minute_of(at);
        let mut window = MixTally::default();
        {
            let minutes = self.lock();
            let recent = minutes.iter().filter(|m| {
                m.number
                    .is_some_and(|n| n <= now && now - n < WINDOW_MINUTES as u64)
            });
            for minute in recent {
                window.add_all(&minute.tally);
            }
        }
        MixSnapshot {
            window_seconds: MINUTE.as_secs() * WINDOW_MINUTES as u64,
            spans: window.spans,
            components: TopValues::of(&window.components),
            council_phases: TopValues::of(&window.council_phases),
            llm_models: TopValues::of(&window.llm_models),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Minute; WINDOW_MINUTES]> {
        // Counts only: a panic elsewhere cannot leave them unusable.
        self.minutes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Daena mix as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MixSnapshot {
    /// The window the counts cover at most, in seconds (counted in whole minutes).
    pub window_seconds: u64,
    /// Spans the daena stage saw in the window.
    pub spans: u64,
    /// Spans per `daena.component`.
    pub components: TopValues,
    /// Spans per `council.phase` (spans without a valid phase are not counted).
    pub council_phases: TopValues,
    /// Spans per `llm.model` (spans without one are not counted).
    pub llm_models: TopValues,
}

/// The most counted values of one dimension, most first, and the sum of the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopValues {
    /// At most [`SHOWN_VALUES`] values with their spans, most first (ties by value).
    pub values: Vec<ValueSpans>,
    /// Spans of every other value.
    pub other_spans: u64,
    /// Spans counted in this dimension.
    pub total_spans: u64,
}

/// One value and its spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueSpans {
    /// The value, cut to [`MAX_VALUE_LEN`] bytes.
    pub value: String,
    /// Spans that carried it.
    pub spans: u64,
}

impl TopValues {
    fn of(tally: &Tally) -> Self {
        // Tallies of different minutes may each have replaced different values: summing
        // by value merges what is the same value.
        let mut by_value: HashMap<&str, u64> = HashMap::new();
        for (value, count) in tally.entries.iter().filter(|(_, count)| *count > 0) {
            *by_value.entry(value).or_default() += count;
        }
        let mut values: Vec<ValueSpans> = by_value
            .into_iter()
            .map(|(value, spans)| ValueSpans {
                value: value.to_owned(),
                spans,
            })
            .collect();
        values.sort_by(|a, b| b.spans.cmp(&a.spans).then_with(|| a.value.cmp(&b.value)));
        let rest = values.split_off(values.len().min(SHOWN_VALUES));
        Self {
            values,
            other_spans: rest.iter().map(|v| v.spans).sum(),
            total_spans: tally.total(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(top: &TopValues) -> Vec<(&str, u64)> {
        top.values
            .iter()
            .map(|v| (v.value.as_str(), v.spans))
            .collect()
    }

    #[test]
    fn counts_each_dimension_over_the_window_and_forgets_older_minutes() {
        let mix = DaenaMix::default();
        let start = mix.started;
        let mut batch = MixTally::default();
        batch.span("council", Some("scout"), None);
        batch.span("council", Some("debate"), None);
        batch.span("llm", None, Some("gpt-4o"));
        mix.add_at(&batch, start);
        batch.reset();
        batch.span("llm", None, Some("gpt-4o"));
        batch.span("llm", None, Some("claude"));
        mix.add_at(&batch, start + MINUTE * 3);

        let now = mix.snapshot_at(start + MINUTE * 4);
        assert_eq!(now.spans, 5);
        assert_eq!(shown(&now.components), [("llm", 3), ("council", 2)]);
        assert_eq!(shown(&now.council_phases), [("debate", 1), ("scout", 1)]);
        assert_eq!(shown(&now.llm_models), [("gpt-4o", 2), ("claude", 1)]);

        let later = mix.snapshot_at(start + MINUTE * 5);
        assert_eq!(later.spans, 2, "the first minute has left the window");
        assert_eq!(shown(&later.components), [("llm", 2)]);
        assert_eq!(later.council_phases.total_spans, 0);

        // The first minute's slot is reused for minute 5.
        batch.reset();
        batch.span("nbmf", None, None);
        mix.add_at(&batch, start + MINUTE * 5);
        let latest = mix.snapshot_at(start + MINUTE * 5);
        assert_eq!(shown(&latest.components), [("llm", 2), ("nbmf", 1)]);
    }

    #[test]
    fn a_flood_of_distinct_values_stays_bounded_and_keeps_the_frequent_one() {
        let mix = DaenaMix::default();
        let mut batch = MixTally::default();
        for i in 0..100_000 {
            let hostile = format!("model-{i}-{}", "x".repeat(1000));
            batch.span("llm", None, Some(&hostile));
            if i % 10 == 0 {
                batch.span("llm", None, Some("gpt-4o"));
            }
        }
        assert!(batch.llm_models.entries.len() <= TRACKED_VALUES);
        assert!(
            batch
                .llm_models
                .entries
                .iter()
                .all(|(v, _)| v.len() <= MAX_VALUE_LEN)
        );
        mix.add(&batch);
        let snapshot = mix.snapshot();
        let models = &snapshot.llm_models;
        assert_eq!(models.total_spans, 110_000, "every span is counted");
        assert_eq!(
            models.values.iter().map(|v| v.spans).sum::<u64>() + models.other_spans,
            110_000
        );
        assert_eq!(models.values.len(), SHOWN_VALUES);
        assert_eq!(models.values[0].value, "gpt-4o");
        assert!(models.values[0].spans >= 10_000);
    }

    #[test]
    fn values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_VALUE_LEN);
        let cut = clip(&long);
        assert!(cut.len() <= MAX_VALUE_LEN && cut.len() >= MAX_VALUE_LEN - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn a_reset_tally_reuses_its_values() {
        let mut batch = MixTally::default();
        batch.span("llm", None, Some("gpt-4o"));
        batch.reset();
        assert!(batch.is_empty());
        batch.span("llm", None, Some("gpt-4o"));
        assert_eq!(batch.llm_models.entries, [("gpt-4o".to_owned(), 1)]);
    }
}
