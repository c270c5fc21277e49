//! The consistent-hash ring that picks a span's backend from its routing hash.
//!
//! Each backend owns [`VIRTUAL_NODES`] points on a 64-bit circle, placed by
//! [`route_hash`] (FNV-1a with the splitmix64 finaliser: fixed and documented, never std's
//! per-process `RandomState`) of `"<host:port>#<i>"`. A key belongs to the first point at
//! or after its hash, wrapping around. So every sidecar of any version that lists the same
//! backends routes alike, and a backend leaving moves only the keys it owned.

use crate::otlp::partition::route_hash;

/// Points per backend: enough that three backends each get about a third of the keys.
pub const VIRTUAL_NODES: usize = 200;

/// Backends placed on the circle; built once per membership.
#[derive(Debug, Clone)]
pub struct HashRing {
    /// `(point, backend index)`, sorted by point.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// A ring over `backends`, each named by its `host:port` (its index is what
    /// [`owner`](Self::owner) returns).
    pub fn new<S: AsRef<str>>(backends: &[S]) -> Self {
        let mut points = Vec::with_capacity(backends.len() * VIRTUAL_NODES);
        for (index, backend) in backends.iter().enumerate() {
            for node in 0..VIRTUAL_NODES {
                let point = route_hash(format!("{}#{node}", backend.as_ref()).as_bytes());
                points.push((point, index));
            }
        }
        // Ties (vanishingly rare) go to the smaller index, the same on every agent.
        points.sort_unstable();
        Self { points }
    }

    /// The index of the backend that owns `hash`; `None` for a ring without backends.
    pub fn owner(&self, hash: u64) -> Option<usize> {
        self.owner_among(hash, |_| true)
    }

    /// The owner of `hash` among the backends `eligible` admits: the first of their
    /// points at or after it, so leaving a backend out moves only the keys it owned.
    pub fn owner_among(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let at = self.points.partition_point(|&(point, _)| point < hash);
        let (after, before) = self.points.split_at(at);
        before
            .iter()
            .chain(after)
            .map(|&(_, index)| index)
            .find(|&index| eligible(index))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BACKENDS: [&str; 3] = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"];

    fn owners(ring: &HashRing, names: &[&str], keys: &[[u8; 16]]) -> Vec<String> {
        keys.iter()
            .map(|key| {
                let index = ring.owner(route_hash(key)).expect("a backend");
                names[index].to_owned()
            })
            .collect()
    }

    #[test]
    fn an_empty_ring_owns_nothing_and_one_backend_owns_everything() {
        assert_eq!(HashRing::new::<&str>(&[]).owner(42), None);
        let ring = HashRing::new(&["only:4317"]);
        for hash in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(ring.owner(hash), Some(0));
        }
    }

    #[test]
    fn an_owner_left_out_gives_its_keys_to_the_next_point_and_no_other_key_moves() {
        let ring = HashRing::new(&BACKENDS);
        let hashes: Vec<u64> = (0..=u8::MAX).map(|t| route_hash(&[t; 16])).collect();
        let without_first = HashRing::new(&BACKENDS[1..]);
        for &hash in &hashes {
            let owner = ring.owner(hash).expect("a backend");
            let among = ring.owner_among(hash, |i| i != 0).expect("two left");
            // Leaving backend 0 out is the ring without it: the same owners, shifted.
            assert_eq!(among, without_first.owner(hash).expect("a backend") + 1);
            if owner != 0 {
                assert_eq!(among, owner);
            }
        }
        assert_eq!(ring.owner_among(hashes[0], |_| false), None);
    }

    #[test]
    fn points_are_fixed_across_versions() {
        // Any change here re-routes every trace of a mixed-version fleet: keep these.
        assert_eq!(route_hash(b"10.0.0.1:4317#0"), 0xbe6a_8db7_276c_a086);
        assert_eq!(route_hash(&[0; 16]), 0x6875_2350_ae1d_483f);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4))]

        /// 100,000 random trace ids over three backends: each gets 28–39%; removing one
        /// moves only its keys; adding it back restores every previous owner.
        #[test]
        fn keys_spread_evenly_and_only_a_leaving_backends_keys_move(seed in any::<u64>()) {
            let mut state = seed;
            let keys: Vec<[u8; 16]> = (0..100_000)
                .map(|_| {
                    let mut id = [0u8; 16];
                    for chunk in id.chunks_mut(8) {
                        // splitmix64: a cheap, well-spread sequence from the seed.
                        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                        let mut z = state;
                        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
                    }
                    id
                })
                .collect();
            let all = owners(&HashRing::new(&BACKENDS), &BACKENDS, &keys);
            for backend in BACKENDS {
                let share = all.iter().filter(|o| *o == backend).count() as f64 / keys.len() as f64;
                prop_assert!((0.28..=0.39).contains(&share), "{backend}: {share}");
            }
            for leaving in BACKENDS {
                let rest: Vec<&str> = BACKENDS.iter().copied().filter(|b| *b != leaving).collect();
                let without = owners(&HashRing::new(&rest), &rest, &keys);
                for (before, after) in all.iter().zip(&without) {
                    if before != leaving {
                        prop_assert_eq!(before, after);
                    }
                }
                // Back, listed in another order: the same owners, as on another sidecar.
                let mut again = rest.clone();
                again.insert(0, leaving);
                let back = owners(&HashRing::new(&again), &again, &keys);
                prop_assert_eq!(&back, &all);
            }
        }
    }
}
