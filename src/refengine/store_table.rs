//! The engine's stores, in a table indexed by KV store id.
//!
//! The reference engine's `snapshot` is asked of every store every reported
//! idle round. In a B-tree map, finding a store walked three or four nodes,
//! each a cache miss at 1024 stores (`perf`: the lookup was 16 % of the
//! idle window's samples); here it is one slot. The table is 8 bytes per id
//! up to the highest id in use (512 KiB at most).

use crate::engine::KvId;

/// Every store of an engine (`T`: its handle on one), by id.
pub(super) struct StoreTable<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for StoreTable<T> {
    fn default() -> Self {
        StoreTable {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> StoreTable<T> {
    /// The store `kv`, if there is one.
    pub fn get(&self, kv: KvId) -> Option<&T> {
        self.slots.get(usize::from(kv.0))?.as_ref()
    }

    /// Whether there is a store `kv`.
    pub fn contains(&self, kv: KvId) -> bool {
        self.get(kv).is_some()
    }

    /// Puts `store` in as `kv`; returns the store it replaces, if any.
    pub fn insert(&mut self, kv: KvId, store: T) -> Option<T> {
        let at = usize::from(kv.0);
        if self.slots.len() <= at {
            self.slots.resize_with(at + 1, || None);
        }
        let old = self.slots[at].replace(store);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Takes the store `kv` out, if there is one.
    pub fn remove(&mut self, kv: KvId) -> Option<T> {
        let old = self.slots.get_mut(usize::from(kv.0))?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The ids of every store, ascending.
    pub fn ids(&self) -> impl Iterator<Item = KvId> + '_ {
        (0..=u16::MAX)
            .zip(&self.slots)
            .filter_map(|(id, slot)| slot.as_ref().map(|_| KvId(id)))
    }

    /// How many stores there are.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_found_by_its_id_until_removed_and_ids_come_ascending() {
        let mut table = StoreTable::default();
        assert_eq!(table.get(KvId(3)), None);
        assert_eq!(table.insert(KvId(700), "b"), None);
        assert_eq!(table.insert(KvId(3), "a"), None);
        assert_eq!(table.insert(KvId(u16::MAX), "c"), None);
        assert_eq!(
            table.insert(KvId(3), "a2"),
            Some("a"),
            "a replaced store comes back"
        );
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(KvId(3)), Some(&"a2"));
        assert!(table.contains(KvId(700)) && !table.contains(KvId(701)));
        assert_eq!(
            table.ids().collect::<Vec<_>>(),
            [KvId(3), KvId(700), KvId(u16::MAX)]
        );
        assert_eq!(table.remove(KvId(700)), Some("b"));
        assert_eq!(table.remove(KvId(700)), None, "removed once");
        assert_eq!(table.remove(KvId(9000)), None, "beyond the table");
        assert_eq!(table.len(), 2);
        assert!(!table.contains(KvId(700)));
    }
}
