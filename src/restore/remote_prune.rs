//! Pruning the object-store copy, from the remote's own listing (never from
//! a backup dir's state: the remote may hold more, or less, than the
//! local dir).
//!
//! One store dir at a time:
//! 1. **Expire**: the objects a remote prune record names, once the record
//!    is older than the grace period, are deleted (the object, then its
//!    sidecars).
//! 2. **Plan**: the store is laid out in a local scratch dir as a backup
//!    dir would be: its round manifests and prune records downloaded
//!    (each checked against its sidecar), every other trusted object (one
//!    sidecar of its length) as a sparse file of its length, and for the
//!    reference engine's footer rule the last 40 bytes of each. Objects a
//!    record names are left out (gone or going). The local prune's rule
//!    (`prune::plan`) runs on it unchanged, self-check included.
//! 3. **Mark**: what the plan lets go is named in a new record
//!    `prune.<p>.json` (sidecar, then object). From then on readers treat
//!    those objects as gone: a mirror does not download them and the
//!    uploader never uploads them again. They are deleted by the first
//!    prune after the grace period (at once with a zero grace), so a
//!    reader that listed the remote before the record has that long to
//!    finish.
//!
//! Metadata files and round manifests are never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::Path as FsPath;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::layout::store_dir_id;
use super::prune::{check_policy, name_of, plan, Consolidate};
use super::StoreBackup;
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::manifest::{
    now_ms, parse_prune_file_name, parse_round_file_name, prune_file_name, PruneRecord, PRUNE_FORMAT,
};
use crate::metadata::parse_metadata_file_name;
use crate::replication::prunes::{delete_with_sidecars, fetch_records, pruned_names, put_with_sidecar};
use crate::replication::uploader::{list_remote, segment, RemoteEntry};
use crate::replication::{on_own_runtime, RemoteUrl};
use crate::retention::Retention;

/// The reference engine's footer: the last this many bytes of its files.
const REF_FOOTER_LEN: u64 = 40;

/// What a prune of the remote copy did (or, dry, would do) to one store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemotePruneReport {
    /// The store.
    pub kv: KvId,
    /// The first round of the window, when a plan was made.
    pub window_round: Option<u64>,
    /// The oldest seqno kept restorable.
    pub window_seqno: Option<u64>,
    /// Objects this prune's record names: deleted after the grace period
    /// (or at once, with a zero grace: then also in `deleted`).
    pub marked: Vec<String>,
    /// Their bytes.
    pub marked_bytes: u64,
    /// Objects deleted by this run.
    pub deleted: Vec<String>,
    /// Their bytes (space freed on the remote).
    pub deleted_bytes: u64,
    /// Why nothing was marked, if so.
    pub skipped: Option<String>,
}

/// Prunes the remote copy at `url` by `policy` (see the module docs):
/// deletes what records older than `grace` named, and marks what the rule
/// lets go now. With `dry_run` nothing is written or deleted. Blocks until
/// done (on a thread and runtime of its own). The client's settings come
/// from the environment, overridden by `options`.
pub fn prune_remote(
    url: &str,
    options: &BTreeMap<String, String>,
    policy: &Retention,
    grace: Duration,
    dry_run: bool,
) -> Result<Vec<RemotePruneReport>> {
    check_policy(policy)?;
    let remote = RemoteUrl::parse(url)?;
    let client = remote.open(options)?;
    on_own_runtime(FsPath::new(url), || {
        prune_all(&*client, &remote, policy, grace, dry_run)
    })
}

async fn prune_all(
    client: &dyn ObjectStore,
    remote: &RemoteUrl,
    policy: &Retention,
    grace: Duration,
    dry_run: bool,
) -> Result<Vec<RemotePruneReport>> {
    let mut stores = BTreeSet::new();
    for (parts, _) in remote.list_below(client).await? {
        if let [store, _, ..] = parts.as_slice() {
            if let Some(kv) = store_dir_id(store) {
                stores.insert(kv);
            }
        }
    }
    let mut reports = Vec::new();
    for kv in stores {
        let store = remote.join(&kv.to_string());
        reports.push(prune_store(client, &store, kv, policy, grace, dry_run).await?);
    }
    Ok(reports)
}

/// Whether `entry` is an object a mirror takes: one sidecar, of its length.
fn trusted(entry: &RemoteEntry) -> Option<u64> {
    let len = entry.object?;
    matches!(entry.sidecars.as_slice(), [one] if one.len == len).then_some(len)
}

async fn prune_store(
    client: &dyn ObjectStore,
    store: &RemoteUrl,
    kv: KvId,
    policy: &Retention,
    grace: Duration,
    dry_run: bool,
) -> Result<RemotePruneReport> {
    let mut report = RemotePruneReport {
        kv,
        window_round: None,
        window_seqno: None,
        marked: Vec::new(),
        marked_bytes: 0,
        deleted: Vec::new(),
        deleted_bytes: 0,
        skipped: None,
    };
    let listing = list_remote(client, store).await?;
    let objects = listing
        .iter()
        .filter(|(_, e)| e.object.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let records = fetch_records(client, store, objects).await?;
    let now = now_ms();
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);

    // 1. Expire.
    if !dry_run {
        for record in records
            .values()
            .filter(|r| r.time_ms.saturating_add(grace_ms) <= now)
        {
            for name in &record.deleted {
                let Some(entry) = listing.get(&segment(name)) else {
                    continue;
                };
                delete_with_sidecars(client, store, name, &entry.sidecars).await?;
                if let Some(len) = entry.object {
                    report.deleted.push(name.clone());
                    report.deleted_bytes += len;
                }
            }
        }
    }

    // 2. Plan, on a scratch layout of what readers still see.
    let gone = pruned_names(&records);
    let scratch = tempfile::tempdir().map_err(|e| Error::io("create temp dir", std::env::temp_dir(), e))?;
    let dir = scratch.path().join(kv.to_string());
    std::fs::create_dir(&dir).map_err(|e| Error::io("create dir", &dir, e))?;
    let mut sizes = BTreeMap::new();
    for (encoded, entry) in &listing {
        let Some(len) = trusted(entry) else {
            continue; // a mirror does not take it either
        };
        let name = match percent_encoding::percent_decode_str(encoded).decode_utf8() {
            Ok(name) if !name.starts_with('.') && !name.contains('/') && !name.is_empty() => {
                name.into_owned()
            }
            _ => continue,
        };
        if gone.contains(&name) || parse_metadata_file_name(&name).is_some() {
            continue;
        }
        let path = dir.join(&name);
        if parse_round_file_name(&name).is_some() || parse_prune_file_name(&name).is_some() {
            let bytes = store.get_whole(client, &name).await?;
            if crate::replication::Sums::of(&bytes) != entry.sidecars[0] {
                report.skipped = Some(format!(
                    "{name} does not match its sidecar: run cbk verify on the remote (nothing is pruned \
                     while a manifest is in doubt)"
                ));
                return Ok(report);
            }
            std::fs::write(&path, &bytes).map_err(|e| Error::io("write", &path, e))?;
        } else {
            let file = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            file.set_len(len)
                .map_err(|e| Error::io("set length of", &path, e))?;
            sizes.insert(name, len);
        }
    }
    let view = StoreBackup::list(kv, &dir)?;
    let (rounds, _) = view.round_records()?;
    if let Some(why) = unsettled(&listing, &gone, &view, &rounds) {
        report.skipped = Some(format!(
            "the remote copy is not settled ({why}): an upload may be under way; pruned once it caught up"
        ));
        return Ok(report);
    }
    if super::pit::legacy_applies(&view, &rounds) {
        // The footer rule's check reads each file's footer: fetch those.
        for (name, len) in &sizes {
            if *len < REF_FOOTER_LEN {
                continue; // the check refuses it
            }
            let location = store.path().clone().join(name.as_str());
            let tail = client
                .get_range(&location, len - REF_FOOTER_LEN..*len)
                .await
                .map_err(|e| store.error("get", &location, e))?;
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.write_at(&tail, len - REF_FOOTER_LEN))
                .map_err(|e| Error::io("write", &path, e))?;
        }
    }
    let plan = match plan(&view, policy, &|_| false, Consolidate::Never)? {
        Ok(plan) => plan,
        Err(why) => {
            report.skipped = Some(why);
            return Ok(report);
        }
    };
    report.window_round = Some(plan.window_round);
    report.window_seqno = Some(plan.window_seqno);
    report.marked = plan.delete.iter().map(|p| name_of(p).to_owned()).collect();
    report.marked_bytes = report.marked.iter().filter_map(|n| sizes.get(n)).sum();
    if dry_run || report.marked.is_empty() {
        return Ok(report);
    }

    // 3. Mark (and, with no grace, delete at once). Numbered past every
    // record name listed, a sidecar left alone by a cut-off write too.
    let p = listing
        .keys()
        .filter_map(|n| parse_prune_file_name(n))
        .max()
        .map_or(1, |p| p + 1);
    let record = PruneRecord {
        format: PRUNE_FORMAT,
        time_ms: now,
        window_round: plan.window_round,
        window_seqno: plan.window_seqno,
        deleted: report.marked.clone(),
        base: None,
        remote: true,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::Corrupt {
        path: prune_file_name(p).into(),
        reason: format!("cannot encode: {e}"),
    })?;
    put_with_sidecar(client, store, &prune_file_name(p), bytes).await?;
    if grace.is_zero() {
        for name in &report.marked {
            let sidecars = listing
                .get(&segment(name))
                .map(|e| e.sidecars.clone())
                .unwrap_or_default();
            delete_with_sidecars(client, store, name, &sidecars).await?;
            report.deleted.push(name.clone());
            report.deleted_bytes += sizes.get(name).copied().unwrap_or(0);
        }
    }
    Ok(report)
}

/// Why the listed copy may be one an upload is still changing, if so: a
/// prune planned on it could mark files that restore points need once the
/// rest lands. Settled means: round manifests without a missing number,
/// every object whole with one sidecar of its length, no sidecar without
/// its object, and every file a manifest declares there (or marked gone).
fn unsettled(
    listing: &std::collections::HashMap<String, RemoteEntry>,
    gone: &std::collections::HashSet<String>,
    view: &StoreBackup,
    rounds: &[crate::manifest::RoundRecord],
) -> Option<String> {
    let numbers: Vec<u64> = view.rounds.iter().map(|(r, _)| *r).collect();
    if let Some(w) = numbers.windows(2).find(|w| w[1] != w[0] + 1) {
        return Some(format!("round manifests {} and {} with none between", w[0], w[1]));
    }
    for (encoded, entry) in listing {
        let name = percent_encoding::percent_decode_str(encoded).decode_utf8_lossy();
        if gone.contains(name.as_ref()) || parse_metadata_file_name(&name).is_some() {
            continue;
        }
        if entry.object.is_none() && !entry.sidecars.is_empty() {
            return Some(format!("{name} has a sidecar but no object yet"));
        }
        if entry.object.is_some() && trusted(entry).is_none() {
            return Some(format!("{name} is not whole with one sidecar of its length"));
        }
    }
    for f in rounds.iter().flat_map(|r| &r.added) {
        if !view.holds_file(&f.name) && !gone.contains(&f.name) {
            return Some(format!("{} is declared but not there", f.name));
        }
    }
    None
}
