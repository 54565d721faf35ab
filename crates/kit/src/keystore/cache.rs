//! A bounded in-process cache of unwrapped subject keys: first in, first out, and every entry
//! forgotten after a time to live, so a key another process destroyed is not used here for
//! longer than that.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::crypto::SubjectKey;

type Slot = (Uuid, Uuid);

pub(crate) struct SubjectCache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<Slot, (SubjectKey, Instant)>,
    order: VecDeque<Slot>,
}

impl SubjectCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        SubjectCache { capacity, ttl, entries: HashMap::new(), order: VecDeque::new() }
    }

    pub fn get(&mut self, tenant_id: Uuid, subject_id: Uuid) -> Option<SubjectKey> {
        let slot = (tenant_id, subject_id);
        match self.entries.get(&slot) {
            Some((key, at)) if at.elapsed() < self.ttl => Some(key.clone()),
            Some(_) => {
                self.entries.remove(&slot);
                None
            }
            None => None,
        }
    }

    pub fn put(&mut self, tenant_id: Uuid, subject_id: Uuid, key: SubjectKey) {
        if self.capacity == 0 {
            return;
        }
        let slot = (tenant_id, subject_id);
        if self.entries.insert(slot, (key, Instant::now())).is_none() {
            self.order.push_back(slot);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        // Slots removed by `remove` stay in the queue until popped: rebuild it when it drifts.
        if self.order.len() > 2 * self.capacity.max(16) {
            let entries = &self.entries;
            self.order.retain(|s| entries.contains_key(s));
        }
    }

    pub fn remove(&mut self, tenant_id: Uuid, subject_id: Uuid) {
        self.entries.remove(&(tenant_id, subject_id));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SubjectKey {
        SubjectKey::from_bytes(&rand::random())
    }

    #[test]
    fn test_cache_is_bounded_and_forgets_removed_and_expired_keys() {
        let mut cache = SubjectCache::new(2, Duration::from_secs(60));
        let t = Uuid::now_v7();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            cache.put(t, *id, key());
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(t, ids[0]).is_none(), "the oldest went first");
        assert!(cache.get(t, ids[2]).is_some());
        cache.remove(t, ids[2]);
        assert!(cache.get(t, ids[2]).is_none());
        let mut short = SubjectCache::new(2, Duration::ZERO);
        short.put(t, ids[0], key());
        assert!(short.get(t, ids[0]).is_none(), "expired");
        let mut off = SubjectCache::new(0, Duration::from_secs(60));
        off.put(t, ids[0], key());
        assert!(off.get(t, ids[0]).is_none());
    }
}
