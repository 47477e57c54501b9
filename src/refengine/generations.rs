//! The engine's generations: the last one handed out, and what each
//! store's listing is at now, in a dense table by KV store id.
//!
//! `Engine::generation` is the question every idle tick asks of every
//! store. Answered from each store's own struct (found in the engine's map),
//! it cost two cold cache misses per store-round at 1024 stores (the map's
//! nodes, then the store); from this table it is one load from memory that
//! every tick touches: 2 KiB per 256 ids in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::engine::KvId;

/// Ids per chunk of the table.
const CHUNK: usize = 256;

/// One chunk of the table: the published generations of 256 ids.
type Chunk = [AtomicU64; CHUNK];

/// The generations of one engine, shared by its stores.
pub(super) struct Generations {
    /// The last generation handed out, engine-wide, so a store dropped and
    /// created again never repeats one.
    last: AtomicU64,
    /// By `kv.0 / CHUNK`, made on the first store published in it: every
    /// store's listing's generation, 0 for no store (generations start at 1).
    published: [OnceLock<Box<Chunk>>; (u16::MAX as usize + 1) / CHUNK],
}

impl Generations {
    /// No generation handed out, no store published.
    pub fn new() -> Self {
        Generations {
            last: AtomicU64::new(0),
            published: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// A generation no listing of this engine had before.
    pub fn next(&self) -> u64 {
        self.last.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Publishes `generation` as what `kv` lists now; 0: no such store.
    /// Written by the store under its state lock.
    pub fn publish(&self, kv: KvId, generation: u64) {
        let (chunk, at) = Self::slot(kv);
        self.published[chunk].get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))))[at]
            .store(generation, Ordering::Release);
    }

    /// The generation `kv` lists now, `None` for no store (never created,
    /// or dropped).
    pub fn of(&self, kv: KvId) -> Option<u64> {
        let (chunk, at) = Self::slot(kv);
        let generation = self.published[chunk].get()?[at].load(Ordering::Acquire);
        (generation != 0).then_some(generation)
    }

    fn slot(kv: KvId) -> (usize, usize) {
        let id = usize::from(kv.0);
        (id / CHUNK, id % CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_at_what_it_published_last_and_none_is_at_nothing() {
        let g = Generations::new();
        assert_eq!(g.of(KvId(7)), None, "never published");
        let first = g.next();
        g.publish(KvId(7), first);
        let second = g.next();
        g.publish(KvId(7), second);
        assert_eq!((g.of(KvId(7)), g.of(KvId(8))), (Some(second), None));
        assert_eq!(g.of(KvId(7 + CHUNK as u16)), None, "another chunk's id");
        g.publish(KvId(7), 0);
        assert_eq!(g.of(KvId(7)), None, "dropped");
    }

    #[test]
    fn generations_are_never_repeated_and_every_id_has_a_slot() {
        let g = Generations::new();
        let (a, b) = (g.next(), g.next());
        assert!(0 < a && a < b);
        g.publish(KvId(u16::MAX), b);
        g.publish(KvId(0), a);
        assert_eq!((g.of(KvId(0)), g.of(KvId(u16::MAX))), (Some(a), Some(b)));
    }
}
