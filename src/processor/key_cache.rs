//! A small two-way set-associative cache from attribute keys to what a stage decided about them.
//!
//! Spans repeat the same few dozen keys; classifying a key (schema lookup, secret-word
//! match) costs tens of nanoseconds to microseconds, a cache hit a hash and one or two
//! comparisons. Bounded: each key may sit in one of two slots, and a third colliding key
//! replaces an entry, so memory never grows with the keys seen, and keys
//! longer than [`MAX_KEY`] are classified every time rather than kept, so neither does it
//! grow with their length. A span of all-distinct keys costs a classification and a copy
//! of each key into a slot's reused buffer: linear, and allocation-free once warm.

/// Entries; a power of two.
const SLOTS: usize = 512;

/// The longest key cached, in bytes: real keys are far shorter, and caching a longer one
/// would let a hostile span pin `SLOTS` times its length in memory.
const MAX_KEY: usize = 128;

/// Remembers `T` for recently seen keys.
pub struct KeyCache<T> {
    /// Per slot: the key (its buffer reused by the next key) and, when it holds one, the value.
    slots: Vec<(String, Option<T>)>,
}

impl<T: Copy> KeyCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| (String::new(), None)).collect(),
        }
    }

    /// What `classify` says about `key`, computed at most once while the key stays cached.
    /// The key may be bytes read in place: they are UTF-8 (the wire scan checked), and
    /// only a key not cached is turned into text.
    pub fn get(
        &mut self,
        key: &(impl AsRef<[u8]> + ?Sized),
        classify: impl FnOnce(&str) -> T,
    ) -> T {
        let key = key.as_ref();
        // Two slots per key (a pair): two keys of a span that share a slot would otherwise
        // evict each other at every span.
        let first = hash(key) & (SLOTS - 1);
        for at in [first, first ^ 1] {
            if let (cached, Some(value)) = &self.slots[at]
                && cached.as_bytes() == key
            {
                return *value;
            }
        }
        let Ok(key) = std::str::from_utf8(key) else {
            return classify("");
        };
        let value = classify(key);
        if key.len() <= MAX_KEY {
            let at = if self.slots[first].1.is_some() && self.slots[first ^ 1].1.is_none() {
                first ^ 1
            } else {
                first
            };
            let (cached, slot) = &mut self.slots[at];
            cached.clear();
            cached.push_str(key);
            *slot = Some(value);
        }
        value
    }
}

/// A fast hash of a key's length and its first and last eight bytes (keys that share
/// all three only collide, which costs a recomputation, never a wrong answer).
fn hash(bytes: &[u8]) -> usize {
    let n = bytes.len();
    let (head, tail) = match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => {
            let mut word = [0u8; 8];
            word[..n].copy_from_slice(bytes);
            (u64::from_le_bytes(word), 0)
        }
    };
    let h = (head.wrapping_mul(0x517c_c1b7_2722_0a95) ^ tail.rotate_left(29) ^ n as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 40) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_key_is_classified_once_and_colliding_keys_stay_correct() {
        let mut cache = KeyCache::new();
        let mut calls = 0;
        for _ in 0..3 {
            assert_eq!(
                cache.get("council.phase", |k| {
                    calls += 1;
                    k.len()
                }),
                13
            );
        }
        assert_eq!(calls, 1);
        // More distinct keys than slots: every answer is still the classifier's.
        for i in 0..(SLOTS * 3) {
            let key = format!("key.{i}");
            assert_eq!(cache.get(&key, str::len), key.len());
        }
    }

    #[test]
    fn long_keys_are_answered_but_never_kept() {
        let mut cache = KeyCache::new();
        let long = "k".repeat(MAX_KEY + 1);
        let mut calls = 0;
        for _ in 0..2 {
            let mut classify = |k: &str| {
                calls += 1;
                k.len()
            };
            assert_eq!(cache.get(&long, &mut classify), MAX_KEY + 1);
        }
        assert_eq!(calls, 2, "classified each time");
        assert!(cache.slots.iter().all(|(key, _)| key.len() <= MAX_KEY));
    }
}
