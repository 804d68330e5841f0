//! A map that keeps the entries used most recently, in bounded memory.

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

/// Two generations of at most `generation` entries each. An entry used (through
/// [`Generations::update`]) moves to the newer generation; when that is full, the older
/// one is dropped and the newer takes its place. So the last `generation` keys used are
/// always kept, at most twice as many are, and a key used again is never dropped in
/// between: a burst of new keys drops the ones unused the longest. (Memory: at most two
/// hash tables of `generation` entries.)
///
/// The live hub remembers per task what it routed this way, and each `taskEvents`
/// subscription what it delivered.
#[derive(Debug)]
pub(crate) struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    generation: usize,
}

impl<K: Eq + Hash, V> Generations<K, V> {
    /// An empty map keeping generations of at most `generation` entries (at least 1).
    pub(crate) fn new(generation: usize) -> Self {
        Generations { current: HashMap::new(), previous: HashMap::new(), generation: generation.max(1) }
    }

    /// The value of `key`, if kept; does not count as a use.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// Applies `f` to the value of `key`, moved to the newer generation, or to `make()`
    /// put there when it is not kept. Either way a use.
    pub(crate) fn update<Q, R>(&mut self, key: &Q, make: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(value) = self.current.get_mut(key) {
            return f(value);
        }
        let mut value = self.previous.remove(key).unwrap_or_else(make);
        let result = f(&mut value);
        if self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key.to_owned(), value);
        result
    }

    /// Keeps only the entries `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.current.retain(&mut keep);
        self.previous.retain(keep);
    }

    /// Entries kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_used_lately_are_kept_and_the_longest_unused_dropped() {
        let mut map = Generations::<String, u32>::new(2);
        let bump = |value: &mut u32| *value += 1;
        map.update("kept", || 0, bump);
        for (i, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            map.update(key, || 1, |_| ());
            // `kept` is used every other key: it is never dropped.
            if i % 2 == 1 {
                map.update("kept", || 0, bump);
            }
            assert!(map.len() <= 4, "two generations at most: {}", map.len());
        }
        assert_eq!(map.get("kept"), Some(&3), "a key used lately is kept, with its value");
        assert_eq!(map.get("e"), Some(&1));
        assert_eq!(map.get("a"), None, "the key unused the longest is dropped");
        assert_eq!(map.update("a", || 7, |value| *value), 7, "and starts over when used again");

        map.retain(|key, _| key != "kept");
        assert_eq!(map.get("kept"), None);
    }
}
