//! The remote copy's own prune records: `<url>/prune.<p>.json` objects,
//! written only by a prune of the remote (`cbk prune <url>`), never
//! uploaded from a backup dir (a backup dir's own prune records stay
//! local: the remote keeps its own retention).
//!
//! A record names objects to delete once it is older than the prune's
//! grace period. From the moment it is written, readers treat the objects
//! it names as gone (a mirror does not download them, the uploader never
//! uploads them again), so a reader that starts after it never needs them,
//! and one that started before has the grace period to finish.

use std::collections::{BTreeMap, HashSet};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{RemoteUrl, Sums, SUMS_DIR};
use crate::error::Result;
use crate::manifest::{parse_prune_file_name, PruneRecord};

/// The remote's own prune records among the object names `names` of the
/// store dir `store` (as listed: a prune record's name needs no encoding),
/// by number.
pub(crate) async fn fetch_records(
    client: &dyn ObjectStore,
    store: &RemoteUrl,
    names: Vec<String>,
) -> Result<BTreeMap<u64, PruneRecord>> {
    let mut out = BTreeMap::new();
    for name in names {
        let Some(p) = parse_prune_file_name(&name) else {
            continue;
        };
        let bytes = store.get_whole(client, &name).await?;
        // One that does not parse, or was not written by a prune of the
        // remote (an older version uploaded a backup dir's own), is not
        // the remote's: passed over (the uploader and mirror go on).
        match serde_json::from_slice::<PruneRecord>(&bytes) {
            Ok(record) if record.remote => {
                out.insert(p, record);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(object = %name, error = %e, "not a prune record; passed over"),
        }
    }
    Ok(out)
}

/// Every name the remote's prune records name (gone, or going).
pub(crate) fn pruned_names(records: &BTreeMap<u64, PruneRecord>) -> HashSet<String> {
    records.values().flat_map(|r| r.deleted.iter().cloned()).collect()
}

/// Puts a small object `name` of the store dir `store`: its sidecar first,
/// so the object is never there without one.
pub(crate) async fn put_with_sidecar(
    client: &dyn ObjectStore,
    store: &RemoteUrl,
    name: &str,
    bytes: Vec<u8>,
) -> Result<()> {
    let sums = Sums::of(&bytes);
    let sidecar = sidecar_path(store, name, sums);
    let text = format!("len {}\ncrc32c {:08x}\n", sums.len, sums.crc32c);
    client
        .put(&sidecar, PutPayload::from(text))
        .await
        .map_err(|e| store.error("put", &sidecar, e))?;
    let location = store.path().clone().join(name);
    client
        .put(&location, PutPayload::from(bytes))
        .await
        .map_err(|e| store.error("put", &location, e))?;
    Ok(())
}

/// Deletes the object `name` of the store dir `store`, then its sidecars
/// (a sidecar without object reads as an upload under way; an object
/// without sidecar as a problem). Gone already counts as done.
pub(crate) async fn delete_with_sidecars(
    client: &dyn ObjectStore,
    store: &RemoteUrl,
    name: &str,
    sidecars: &[Sums],
) -> Result<()> {
    let location = store.path().clone().join(name);
    match client.delete(&location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store.error("delete", &location, e)),
    }
    for sums in sidecars {
        let sidecar = sidecar_path(store, name, *sums);
        match client.delete(&sidecar).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store.error("delete", &sidecar, e)),
        }
    }
    Ok(())
}

fn sidecar_path(store: &RemoteUrl, name: &str, sums: Sums) -> Path {
    store
        .path()
        .clone()
        .join(SUMS_DIR)
        .join(sums.sidecar_name(name).as_str())
}
