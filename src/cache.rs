//! In-memory caches bounded by the bytes their entries weigh, not by their
//! number: two generations, the current one filling up to half the budget
//! and then becoming the previous one (whose entries go when it is next
//! replaced, unless read again first, which moves them forward). Every
//! operation is O(1), and an often-read entry stays however many others
//! pass through.

use std::{borrow::Borrow, collections::HashMap, hash::Hash, sync::Mutex};

pub struct ByteCache<K, V> {
    budget: usize,
    inner: Mutex<Generations<K, V>>,
}

struct Generations<K, V> {
    current: HashMap<K, (V, usize)>,
    current_bytes: usize,
    previous: HashMap<K, (V, usize)>,
    previous_bytes: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> ByteCache<K, V> {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            inner: Mutex::new(Generations {
                current: HashMap::new(),
                current_bytes: 0,
                previous: HashMap::new(),
                previous_bytes: 0,
            }),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.inner.lock().expect("cache poisoned");
        if let Some((value, _)) = inner.current.get(key) {
            return Some(value.clone());
        }
        let (key, (value, weight)) = inner.previous.remove_entry(key)?;
        inner.previous_bytes -= weight;
        let out = value.clone();
        self.put(&mut inner, key, value, weight);
        Some(out)
    }

    /// Keep `value`, which weighs about `weight` bytes (an entry heavier
    /// than half the budget is not kept).
    pub fn insert(&self, key: K, value: V, weight: usize) {
        let mut inner = self.inner.lock().expect("cache poisoned");
        if let Some((_, old)) = inner.previous.remove(&key) {
            inner.previous_bytes -= old;
        }
        self.put(&mut inner, key, value, weight);
    }

    fn put(&self, inner: &mut Generations<K, V>, key: K, value: V, weight: usize) {
        if weight > self.budget / 2 {
            return;
        }
        if inner.current_bytes + weight > self.budget / 2 {
            inner.previous = std::mem::take(&mut inner.current);
            inner.previous_bytes = std::mem::take(&mut inner.current_bytes);
        }
        if let Some((_, old)) = inner.current.insert(key, (value, weight)) {
            inner.current_bytes -= old;
        }
        inner.current_bytes += weight;
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.inner.lock().expect("cache poisoned");
        if let Some((_, weight)) = inner.current.remove(key) {
            inner.current_bytes -= weight;
        }
        if let Some((_, weight)) = inner.previous.remove(key) {
            inner.previous_bytes -= weight;
        }
    }

    /// The bytes the entries weigh now (at most the budget).
    pub fn bytes(&self) -> usize {
        let inner = self.inner.lock().expect("cache poisoned");
        inner.current_bytes + inner.previous_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_and_entries_read_again_stay() {
        let cache = ByteCache::new(1000);
        cache.insert("hot".to_owned(), 0, 100);
        for i in 0..100 {
            cache.insert(format!("cold {i}"), i, 100);
            assert!(cache.bytes() <= 1000, "{} bytes held", cache.bytes());
            assert_eq!(cache.get("hot"), Some(0), "read often, kept (after {i} others)");
        }
        assert_eq!(cache.get("cold 0"), None, "read never, gone");
        assert_eq!(cache.get("cold 99"), Some(99));
        cache.insert("too big".to_owned(), 1, 501);
        assert_eq!(cache.get("too big"), None, "heavier than half the budget: not kept");
        cache.remove("hot");
        assert_eq!(cache.get("hot"), None);
        cache.insert("cold 99".to_owned(), 7, 50);
        assert_eq!(cache.get("cold 99"), Some(7), "replaced");
    }
}
