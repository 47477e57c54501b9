//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::kv_id::KvId;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a callback may return to fail its round (the round's files are
/// then reported again by the next round).
pub type CallbackError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong. Each variant names the operation and the path
/// or KV store it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation, e.g. `link`, `fsync dir`, `open backup dir`.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// An engine listed a seqno that does not fit in 48 bits.
    #[error("seqno {seqno} of {path} is above the 48-bit limit 2^48-1; the engine must not hand it out")]
    SeqnoOutOfRange {
        /// The file it came from.
        path: PathBuf,
        /// The offending value, untruncated.
        seqno: u64,
    },

    /// An engine listed a file whose low seqno is above its high seqno.
    #[error("{path} covers seqnos {low}..={high}, but low is above high")]
    SeqnoRangeInverted {
        /// The file.
        path: PathBuf,
        /// Its low seqno.
        low: u64,
        /// Its high seqno.
        high: u64,
    },

    /// An engine listed a file the component cannot back up under its name.
    #[error("seqno-index file {path} is not acceptable: {reason}")]
    InvalidIndexFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },

    /// A backup dir was given that cannot be used.
    #[error("backup dir {path} cannot be used: {reason}")]
    InvalidBackupDir {
        /// The dir.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// Two KV stores were given the same backup dir.
    #[error("backup dir {path} is already in use by KV store {holder}; give each store its own dir")]
    BackupDirInUse {
        /// The dir.
        path: PathBuf,
        /// The store already backing up into it.
        holder: KvId,
    },

    /// A directory (a backup dir, or an engine's data dir) is owned by
    /// another holder: another process, or another component or engine of
    /// this one. Nothing was written.
    #[error("{path} is in use by {}; one owner at a time: stop the other one first, or give another dir", holder_text(*holder_pid))]
    DirLocked {
        /// The dir.
        path: PathBuf,
        /// The pid holding its lock, where `/proc/locks` tells it (this
        /// process's own pid when another component of it holds it).
        holder_pid: Option<u32>,
    },

    /// Start was asked for a store that is already backing up elsewhere.
    #[error("KV store {kv} is already backing up into {dir}; stop it first")]
    AlreadyRunning {
        /// The store.
        kv: KvId,
        /// Where it backs up now.
        dir: PathBuf,
    },

    /// Stop was asked for a store that is not backing up.
    #[error("KV store {kv} is not backing up")]
    NotRunning {
        /// The store.
        kv: KvId,
    },

    /// A metadata write came after its backup was stopped.
    #[error("backup of KV store {kv} was stopped; its metadata writer no longer writes")]
    BackupStopped {
        /// The store.
        kv: KvId,
    },

    /// A metadata write with nothing in it.
    #[error("metadata for KV store {kv} is empty; write at least one byte")]
    MetadataEmpty {
        /// The store.
        kv: KvId,
    },

    /// A metadata write above [`crate::MAX_METADATA_LEN`].
    #[error("metadata for KV store {kv} is {len} bytes, above the limit of {max}")]
    MetadataTooLarge {
        /// The store.
        kv: KvId,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// `MetadataWriter::write` was called on a thread that runs async tasks,
    /// where blocking would stall every actor on it.
    #[error("MetadataWriter::write blocks and was called from an async context; use write_async there")]
    BlockingInAsyncContext,

    /// The actor system the component runs on has stopped.
    #[error("the backup component has shut down")]
    ComponentStopped,

    /// The engine has no KV store with this id.
    #[error("the engine has no KV store {kv}")]
    UnknownKvStore {
        /// The store.
        kv: KvId,
    },

    /// An engine call failed for a reason of its own.
    #[error("engine failed for KV store {kv}: {source}")]
    Engine {
        /// The store.
        kv: KvId,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A file of the reference engine is damaged.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An fsync of the backup dir failed earlier: the kernel may have dropped
    /// entries it had not written, and a later fsync proves nothing about
    /// them, so the dir is not used again until the backup is restarted.
    #[error("backup dir {path} had an fsync fail; stop and start the backup to reopen it")]
    BackupDirPoisoned {
        /// The dir.
        path: PathBuf,
    },

    /// A file the engine listed was gone when it was to be linked: the engine
    /// broke the snapshot's promise to keep it.
    #[error("{path} vanished while a snapshot held it: the engine deleted a file it listed")]
    SourceVanished {
        /// The engine's file.
        path: PathBuf,
    },

    /// A file has as many hard links as its file system allows.
    #[error("{path} has the most hard links its file system allows (EMLINK); it cannot be linked again")]
    LinkLimit {
        /// The engine's file.
        path: PathBuf,
    },

    /// The final round of a stop failed: the store is stopped, but its backup
    /// may lack the last files.
    #[error("final round of KV store {kv} failed; its backup may lack the last files: {reason}")]
    FinalRoundFailed {
        /// The store.
        kv: KvId,
        /// Why the round failed.
        reason: String,
    },

    /// A start queued behind the stop of the same store failed.
    #[error("start of KV store {kv} failed: {reason}")]
    StartFailed {
        /// The store.
        kv: KvId,
        /// Why.
        reason: String,
    },

    /// A backup root holds no backup of this store.
    #[error("{root} holds no backup of KV store {kv}")]
    NotInBackup {
        /// The store.
        kv: KvId,
        /// The backup root.
        root: PathBuf,
    },

    /// A restore was asked for what the backup cannot give exactly.
    #[error("cannot restore KV store {kv} to seqno {seqno}: {reason}")]
    NotRestorable {
        /// The store.
        kv: KvId,
        /// The seqno asked for.
        seqno: u64,
        /// Why, with what the backup covers.
        reason: String,
    },

    /// A time that cannot be read; nothing was written.
    #[error("{reason}")]
    InvalidTime {
        /// What is wrong.
        reason: String,
    },

    /// A restore to a time that the backup cannot give; nothing was written.
    #[error("cannot restore KV store {kv} as of {time}: {reason}")]
    NotRestorableAt {
        /// The store.
        kv: KvId,
        /// The time asked for (RFC 3339).
        time: String,
        /// Why, with the times the backup covers.
        reason: String,
    },

    /// A restore target that already holds something.
    #[error("restore target {path} is not empty; give a new or empty dir")]
    RestoreTargetNotEmpty {
        /// The dir.
        path: PathBuf,
    },

    /// A retention policy that cannot be used; nothing was deleted.
    #[error("retention: {reason}")]
    InvalidRetention {
        /// What is wrong.
        reason: String,
    },

    /// Backed-up files in a format this build cannot read (or a backup
    /// root whose stores are in several).
    #[error("{what}; formats this build reads: {known}")]
    UnknownFormat {
        /// What was found.
        what: String,
        /// The formats this build supports.
        known: String,
    },

    /// A file could not be linked under any free name.
    #[error("no free name for {name} in {dir} after {tries} tries")]
    NoFreeName {
        /// The backup dir.
        dir: PathBuf,
        /// The wanted name.
        name: String,
        /// How many names were tried.
        tries: u32,
    },

    /// Code of the component or the engine panicked during a round, or in
    /// the blocking file work of an upload or a mirror.
    #[error("{what} panicked for KV store {kv}: {message}")]
    Panicked {
        /// The store.
        kv: KvId,
        /// What panicked: `callback`, `callback factory`, `linker`,
        /// `metadata writer`, `uploader`, `mirror` or `prune`.
        what: &'static str,
        /// The panic message.
        message: String,
    },

    /// The backup callback returned an error.
    #[error("backup callback for KV store {kv} failed: {source}")]
    Callback {
        /// The store.
        kv: KvId,
        /// What the callback said.
        #[source]
        source: CallbackError,
    },

    /// A configuration value is out of its range.
    #[error("configuration {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },

    /// An object-store URL cannot be used.
    #[error("object-store URL {url} cannot be used: {reason}")]
    InvalidRemote {
        /// The URL as given.
        url: String,
        /// What is wrong (the parser's or the client's words).
        reason: String,
    },

    /// An object-store call failed.
    #[cfg(feature = "replication")]
    #[error("{op} {location}: {source}")]
    Remote {
        /// The operation, e.g. `put`, `list`, `get`.
        op: &'static str,
        /// The object or prefix, as `<store>/<path>`.
        location: String,
        /// What the client said.
        #[source]
        source: object_store::Error,
    },
}

impl Error {
    /// Wraps an `io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) if pid == std::process::id() => format!("another owner in this process (pid {pid})"),
        Some(pid) => format!("process {pid}"),
        None => "another owner (its pid is not known)".to_owned(),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}
