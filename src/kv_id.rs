//! [`KvId`], the id of one KV store: a leaf every module may use.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifier of one KV store. Engines number their stores with 16 bits, as
/// vBucket ids are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KvId(pub u16);

impl fmt::Display for KvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for KvId {
    fn from(id: u16) -> Self {
        KvId(id)
    }
}
