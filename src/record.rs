//! The crate's own record type: one mutation of a KV store, whatever engine
//! wrote it. Readers of every engine's files yield it; restore targets take it.

/// One mutation of a KV store: a put (`value` is `Some`) or a delete
/// (`None`, a delete marker), at its seqno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The mutation's seqno.
    pub seqno: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// Whether this is a delete.
    pub fn is_delete(&self) -> bool {
        self.value.is_none()
    }
}
