//! Durations (`200ms`, `10s`, `5m`, `1h30m`) and byte sizes (`512KiB`, `4MiB`, `8MB`) in the config.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written in YAML as an integer or with a unit (`KiB`, `MiB`, `GiB`, `TiB`,
/// `KB`, `MB`, `GB`, `TB`, `B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl ByteSize {
    /// Parses `4MiB`, `512 KiB`, `8MB`, `100B`, `1.5GiB` or plain `1024`; never panics, and
    /// refuses what a `u64` of bytes cannot hold.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(format!("{text:?} is negative; write a size such as 4MiB"));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (digits, unit) = (&text[..split], text[split..].trim());
        let number: f64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write e.g. 4MiB, 512KiB or 1048576"))?;
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    format!(
                        "{text:?} has an unknown unit {unit:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                    )
                })?
        };
        let too_large = || format!("{text:?} is too large");
        // Whole numbers exactly; only a fraction goes through f64.
        if let Ok(whole) = digits.parse::<u64>() {
            return whole
                .checked_mul(multiplier)
                .map(Self)
                .ok_or_else(too_large);
        }
        if unit.is_empty() && number.fract() != 0.0 {
            return Err(format!(
                "{text:?} is not a whole number of bytes; write e.g. 1536 or 1.5KiB"
            ));
        }
        let bytes = number * multiplier as f64;
        // 2^64 is exactly representable; anything at or above it does not fit a u64.
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(too_large());
        }
        // A fraction of a byte (1.3KiB) is dropped.
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = UNITS[..4]
            .iter()
            .find(|(_, m)| self.0 >= *m && self.0.is_multiple_of(*m));
        match exact {
            Some((name, m)) => write!(f, "{}{name}", self.0 / m),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

/// Reads a size written as a whole number of bytes or as text with a unit.
struct ByteSizeVisitor;

impl serde::de::Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as 4MiB, 512KiB or 1048576")
    }

    fn visit_u64<E: serde::de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(bytes))
    }

    fn visit_i64<E: serde::de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
        u64::try_from(bytes)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("{bytes} is negative; write a size such as 4MiB")))
    }

    fn visit_u128<E: serde::de::Error>(self, bytes: u128) -> Result<ByteSize, E> {
        u64::try_from(bytes)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("{bytes} is too large")))
    }

    fn visit_i128<E: serde::de::Error>(self, bytes: i128) -> Result<ByteSize, E> {
        if bytes < 0 {
            return Err(E::custom(format!(
                "{bytes} is negative; write a size such as 4MiB"
            )));
        }
        u64::try_from(bytes)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("{bytes} is too large")))
    }

    fn visit_f64<E: serde::de::Error>(self, bytes: f64) -> Result<ByteSize, E> {
        if bytes.fract() != 0.0 || bytes < 0.0 {
            return Err(E::custom(format!(
                "{bytes} is not a whole number of bytes; write e.g. 1536 or 1.5KiB"
            )));
        }
        ByteSize::parse(&format!("{bytes:.0}")).map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
        ByteSize::parse(text).map_err(E::custom)
    }
}

/// The duration units, with their length in nanoseconds.
const DURATION_UNITS: [(&str, u64); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses `200ms`, `10s`, `5m`, `1h30m`, `1.5s` (units: ns, us, ms, s, m, h); never panics,
/// and refuses what a `Duration` cannot hold.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration; write e.g. 200ms, 10s, 5m or 1h30m");
    let too_long = || format!("{text:?} is too long");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    if rest.starts_with('-') {
        return Err(format!("{text:?} is negative; write e.g. 200ms or 10s"));
    }
    if rest.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "{text:?} has no unit; write e.g. {rest}s or {rest}ms"
        ));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(invalid)?;
        let digits = &rest[..split];
        rest = &rest[split..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let nanos_per_unit = DURATION_UNITS
            .iter()
            .find(|(unit, _)| *unit == &rest[..unit_len])
            .map(|(_, nanos)| *nanos)
            .ok_or_else(invalid)?;
        rest = &rest[unit_len..];
        // Whole numbers exactly; only a fraction goes through f64.
        let part = match digits.parse::<u64>() {
            Ok(whole) => {
                let nanos = u128::from(whole) * u128::from(nanos_per_unit);
                u64::try_from(nanos / 1_000_000_000)
                    .map(|secs| Duration::new(secs, (nanos % 1_000_000_000) as u32))
                    .map_err(|_| too_long())?
            }
            Err(_) => {
                let number: f64 = digits.parse().map_err(|_| invalid())?;
                // The number has no sign, so the only failure left is a value too large.
                Duration::try_from_secs_f64(number * nanos_per_unit as f64 / 1e9)
                    .map_err(|_| too_long())?
            }
        };
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    Ok(total)
}

/// Writes a duration the way the config reads it, in the largest unit that is exact.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos >= size && nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// `#[serde(with = "units::duration")]` for `Duration` fields.
pub mod duration {
    use super::*;

    /// Writes the duration as `200ms`, `10s`, ….
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*d))
    }

    /// Reads `200ms`, `10s`, `5m`, ….
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "units::optional_duration")]` for `Option<Duration>` fields that are
/// left out to mean "not set" (give them `default` and `skip_serializing_if` too).
pub mod optional_duration {
    use super::*;

    /// Writes the duration as [`duration::serialize`] does.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a duration as [`duration::deserialize`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        let error = parse_duration("10 seconds").expect_err("invalid");
        assert!(error.contains("write e.g. 200ms"), "{error}");
        assert!(parse_duration("10").is_err(), "a unit is required");
    }

    #[test]
    fn sizes_parse_and_print_back() {
        assert_eq!(ByteSize::parse("4MiB"), Ok(ByteSize(4 << 20)));
        assert_eq!(ByteSize::parse("512 KiB"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("8MB"), Ok(ByteSize(8_000_000)));
        assert_eq!(ByteSize::parse("1000"), Ok(ByteSize(1000)));
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        let error = ByteSize::parse("4 MeB").expect_err("invalid");
        assert!(error.contains("unknown unit"), "{error}");
    }

    #[test]
    fn out_of_range_and_malformed_numbers_are_errors_not_panics() {
        for (text, expected) in [
            ("99999999999999999999999s", "is too long"),
            ("18446744073709551616s", "is too long"),
            ("18446744073709551615s1s", "is too long"),
            ("99999999999999999999999.5h", "is too long"),
            (&"9".repeat(400), "has no unit"),
            (&format!("{}.5s", "9".repeat(400)), "is too long"),
            ("-5s", "is negative"),
            ("1e3s", "is not a duration"),
            ("NaNs", "is not a duration"),
            ("infh", "is not a duration"),
            ("1..5s", "is not a duration"),
            ("10", "has no unit; write e.g. 10s or 10ms"),
        ] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX)),
            "the largest whole number of seconds still fits"
        );
        for (text, expected) in [
            ("16777216TiB", "is too large"),
            ("16PiB", "unknown unit"),
            ("17179869184GiB", "is too large"),
            ("18446744073709551616", "is too large"),
            ("99999999999999999999999.5GiB", "is too large"),
            ("-1KiB", "is negative"),
            ("1.5", "whole number of bytes"),
            ("1e3", "unknown unit"),
            ("NaN", "is not a size"),
        ] {
            let error = ByteSize::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert_eq!(
            ByteSize::parse("18446744073709551615"),
            Ok(ByteSize(u64::MAX))
        );
        assert_eq!(ByteSize::parse("1.5KiB"), Ok(ByteSize(1536)));
        assert_eq!(ByteSize::parse("16TiB"), Ok(ByteSize(16 << 40)));
        assert_eq!(ByteSize(16 << 40).to_string(), "16TiB");
    }

    /// Number-like text: digits, points, signs, exponents and units, valid or not.
    fn number_like() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            "[0-9]{1,40}(\\.[0-9]{0,12})?",
            "[-+]?[0-9.]{0,6}[eE]?[-+]?[0-9]{0,4}",
        ];
        let unit = prop::sample::select(vec![
            "", "ns", "us", "µs", "ms", "s", "m", "h", "d", "B", "KiB", "MiB", "GiB", "kb", "x",
            " s", "s1",
        ]);
        prop::collection::vec((number, unit), 1..4)
            .prop_map(|parts| parts.into_iter().map(|(n, u)| n + u).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parsing_any_number_like_text_answers_without_panicking(text in number_like()) {
            if let Err(error) = parse_duration(&text) {
                prop_assert!(error.contains(&format!("{text:?}")), "{error}");
            }
            if let Err(error) = ByteSize::parse(&text) {
                prop_assert!(error.contains(&format!("{:?}", text.trim())), "{error}");
            }
        }

        #[test]
        fn every_duration_prints_as_text_that_parses_back(nanos in any::<u64>(), secs in any::<u64>()) {
            for duration in [Duration::from_nanos(nanos), Duration::from_secs(secs)] {
                prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
            }
        }

        #[test]
        fn every_size_prints_as_text_that_parses_back(bytes in any::<u64>()) {
            prop_assert_eq!(ByteSize::parse(&ByteSize(bytes).to_string()), Ok(ByteSize(bytes)));
        }
    }
}
