//! Opening a box's state store: damage is refused, not papered over, and the identity never
//! changes silently.
//!
//! A box keeps its identity (edge id, store id) in **two** places: the store's `meta` tree and
//! the identity file `<data_dir>/identity` (checksummed, written with fsync and rename; format
//! in `identity.rs`). The cloud deduplicates on `outpost-edge` + `outpost-offset`, so a new
//! edge id would make every forwarded record a new one upstream.
//!
//! [`open_box`] decides, in this order:
//! 1. **Damage.** The store is *damaged* when sled cannot open it (corruption, unreadable
//!    files), or when it opens without a format version (sled recovered nothing: the file was
//!    damaged, truncated, replaced or the directory deleted) although the box has a past: an
//!    identity file exists or the log has data. A damaged store makes `open_box` refuse with
//!    [`IdentityError::Damaged`], naming the file and `--rebuild-state`, and writes nothing.
//! 2. **Rebuild** (`outpost run --rebuild-state`, `edge.rebuild_state = true`). The damaged
//!    directory is renamed to `state.damaged-<epoch ms>` (kept for inspection) and a new store
//!    is created. What is **recovered**: the identity, from the identity file (or the explicit
//!    `edge.edge_id`); and every consumer offset of the positions checkpoint
//!    `<data_dir>/state.positions`, which every [`StateStore::sync`] of a box's store rewrites
//!    (at shutdown, before retention deletes segments, and periodically while the box runs):
//!    plugins, sinks and forwarder cursors resume where the checkpoint says. What is **redone
//!    or lost**: inputs after a consumer's checkpointed offset are processed again (outputs
//!    at least once, as after any crash; the forwarder's duplicates are dropped by the cloud,
//!    which sees the same edge id and offsets); plugin key-value state is *not* recovered, so
//!    each plugin restarts from its checkpointed offset with empty state (fraud-score's
//!    windows refill as payments arrive); consumers missing from the checkpoint start at the
//!    log start.
//! 3. **Identity.** With an explicit id (`edge.edge_id`/OUTPOST_EDGE_ID) that id is written to
//!    both copies. Otherwise: both copies agree → used; one copy missing (or the file damaged)
//!    → repaired from the other, with a warning; the copies disagree →
//!    [`IdentityError::IdentityConflict`] naming both files; neither exists → a new id is
//!    generated *only* when the log is empty (a first start), else
//!    [`IdentityError::IdentityLost`]. The configured store id is written to both copies; a
//!    change of it is logged.
//!
//! Deleting `state/` but keeping the log and the identity file counts as damage: the box
//! refuses until told to rebuild, then keeps its edge id. A store whose log still has data
//! never silently gets a new identity.

use std::path::{Path, PathBuf};

use super::identity::{self, Read, StoredIdentity};
use super::{Commit, IdentityError, StateError, StateStore};

/// What the box asks of its store.
#[derive(Debug, Clone, Default)]
pub struct BoxOptions {
    /// `edge.edge_id` / OUTPOST_EDGE_ID: replaces the stored edge id in both copies.
    pub explicit_edge_id: Option<String>,
    /// `edge.store_id`.
    pub store_id: String,
    /// `--rebuild-state` / `edge.rebuild_state`: rebuild a damaged store instead of refusing.
    pub rebuild: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Where the damaged store was moved (none when there was no directory left).
    pub moved_to: Option<PathBuf>,
    /// Consumer offsets restored from the positions checkpoint.
    pub restored_offsets: usize,
    /// Why the store counted as damaged.
    pub reason: String,
}

/// A box's opened store and its resolved identity.
#[derive(Debug)]
pub struct OpenedBox {
    pub store: StateStore,
    pub identity: StoredIdentity,
    /// Set when the store was rebuilt.
    pub rebuilt: Option<Rebuilt>,
}

/// Whether an error opening the store means its files are damaged (as opposed to locked,
/// newer, or a permission problem the operator must fix).
fn is_damage(e: &StateError) -> bool {
    match e {
        StateError::Sled(sled::Error::Corruption { .. }) | StateError::Corrupt { .. } => true,
        StateError::Sled(sled::Error::Io(io)) | StateError::Io { source: io, .. } => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Whether `dir` exists and holds at least one entry.
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Opens the store at `<data_dir>/state` and resolves the box's identity (see the module doc).
pub fn open_box(data_dir: &Path, options: &BoxOptions) -> Result<OpenedBox, StateError> {
    let state_dir = data_dir.join("state");
    let store_file = state_dir.join("db");
    let identity_file = identity::identity_path(data_dir);
    let positions_file = identity::positions_path(data_dir);
    let log_dir = data_dir.join("log");
    let file_copy = match identity::read_identity(&identity_file)? {
        Read::Found(id) => Some(id),
        Read::Absent => None,
        Read::Damaged(why) => {
            tracing::warn!(
                file = %identity_file.display(),
                problem = %why,
                "The identity file is damaged; it is rewritten from the state store's copy."
            );
            None
        }
    };
    let has_past = file_copy.is_some() || has_entries(&log_dir);
    let existed = store_file.exists();

    let damage = match StateStore::open_unchecked(&state_dir, Some(positions_file.clone())) {
        Ok(store) => match store.has_format() {
            Ok(true) => Ok(store),
            Ok(false) if !has_past => {
                store.init_format()?;
                Ok(store)
            }
            Ok(false) => Err((
                Some(store),
                if existed {
                    "sled opened it but found no format version and no entries: the file was \
                     damaged, truncated or replaced"
                        .to_string()
                } else {
                    "the state store directory is gone".to_string()
                },
            )),
            Err(e) if is_damage(&e) => Err((Some(store), e.to_string())),
            Err(e) => return Err(e),
        },
        Err(e) if is_damage(&e) => Err((None, e.to_string())),
        Err(e) => return Err(e),
    };
    let (store, rebuilt) = match damage {
        Ok(store) => (store, None),
        Err((opened, detail)) => {
            drop(opened);
            if !options.rebuild {
                return Err(StateError::from(Box::new(IdentityError::Damaged {
                    file: store_file,
                    detail,
                    identity: identity_file,
                    positions: positions_file,
                })));
            }
            rebuild(&state_dir, &positions_file, detail)?
        }
    };

    let identity = resolve_identity(
        &store,
        file_copy,
        options,
        &store_file,
        &identity_file,
        &log_dir,
        has_past,
    )?;
    Ok(OpenedBox {
        store,
        identity,
        rebuilt,
    })
}

/// Moves the damaged store aside, creates a new one and restores the checkpointed offsets.
fn rebuild(
    state_dir: &Path,
    positions_file: &Path,
    reason: String,
) -> Result<(StateStore, Option<Rebuilt>), StateError> {
    let moved_to = if state_dir.exists() {
        let aside =
            state_dir.with_file_name(format!("state.damaged-{}", crate::kernel::clock::now_ms()));
        std::fs::rename(state_dir, &aside).map_err(|source| StateError::Io {
            context: format!(
                "moving the damaged state store {} aside to {}",
                state_dir.display(),
                aside.display()
            ),
            source,
        })?;
        Some(aside)
    } else {
        None
    };
    // Read before the new store's first sync rewrites the checkpoint.
    let positions = match identity::read_positions(positions_file)? {
        Read::Found(positions) => positions,
        Read::Absent => Vec::new(),
        Read::Damaged(why) => {
            tracing::warn!(
                file = %positions_file.display(),
                problem = %why,
                "The positions checkpoint is damaged; every consumer starts at the log start."
            );
            Vec::new()
        }
    };
    let store = StateStore::open_unchecked(state_dir, Some(positions_file.to_path_buf()))?;
    store.init_format()?;
    let mut by_consumer: std::collections::BTreeMap<String, Vec<(String, u64)>> =
        std::collections::BTreeMap::new();
    for (consumer, topic, offset) in &positions {
        by_consumer
            .entry(consumer.clone())
            .or_default()
            .push((topic.clone(), *offset));
    }
    for (consumer, offsets) in by_consumer {
        store.commit(&Commit {
            consumer,
            offsets,
            ..Commit::default()
        })?;
    }
    store.sync()?;
    tracing::warn!(
        moved_to = %moved_to.as_ref().map_or_else(|| "nothing to move".into(), |p| p.display().to_string()),
        restored_offsets = positions.len(),
        reason = %reason,
        "Rebuilt the damaged state store: consumer offsets come from the positions checkpoint, \
         plugin state starts empty, and inputs after the checkpoint are processed again."
    );
    Ok((
        store,
        Some(Rebuilt {
            moved_to,
            restored_offsets: positions.len(),
            reason,
        }),
    ))
}

/// Step 3 of the module doc: both copies agree on the identity afterwards, and it is durable.
fn resolve_identity(
    store: &StateStore,
    file_copy: Option<StoredIdentity>,
    options: &BoxOptions,
    store_file: &Path,
    identity_file: &Path,
    log_dir: &Path,
    has_past: bool,
) -> Result<StoredIdentity, StateError> {
    let store_copy = store.stored_identity()?;
    let edge_id = match (&options.explicit_edge_id, &store_copy, &file_copy) {
        (Some(explicit), _, _) => {
            let previous = store_copy.as_ref().or(file_copy.as_ref());
            if previous.is_some_and(|p| &p.edge_id != explicit) {
                tracing::info!(
                    edge_id = %explicit,
                    previous = %previous.map_or("none", |p| p.edge_id.as_str()),
                    "The explicit edge id (OUTPOST_EDGE_ID) replaces the stored one in both copies."
                );
            }
            explicit.clone()
        }
        (None, Some(s), Some(f)) if s.edge_id != f.edge_id => {
            return Err(StateError::from(Box::new(
                IdentityError::IdentityConflict {
                    store_file: store_file.to_path_buf(),
                    store_edge_id: s.edge_id.clone(),
                    identity_file: identity_file.to_path_buf(),
                    file_edge_id: f.edge_id.clone(),
                },
            )))
        }
        (None, Some(s), Some(_)) => s.edge_id.clone(),
        (None, Some(s), None) => {
            tracing::warn!(
                file = %identity_file.display(),
                edge_id = %s.edge_id,
                "The identity file is missing; it is written from the state store's copy."
            );
            s.edge_id.clone()
        }
        (None, None, Some(f)) => {
            tracing::warn!(
                store = %store_file.display(),
                edge_id = %f.edge_id,
                "The state store holds no edge id; it is written from the identity file."
            );
            f.edge_id.clone()
        }
        (None, None, None) if has_past => {
            return Err(StateError::from(Box::new(IdentityError::IdentityLost {
                store_file: store_file.to_path_buf(),
                identity_file: identity_file.to_path_buf(),
                log_dir: log_dir.to_path_buf(),
            })))
        }
        (None, None, None) => {
            let id = super::files::random_edge_id()?;
            tracing::info!(edge_id = %id, "Generated this box's edge id; it is kept in the state store and in the identity file.");
            id
        }
    };
    let identity = StoredIdentity {
        edge_id,
        store_id: options.store_id.clone(),
    };
    let previous_store_id = store_copy
        .as_ref()
        .or(file_copy.as_ref())
        .map(|p| p.store_id.as_str())
        .filter(|s| !s.is_empty());
    if let Some(previous) = previous_store_id.filter(|p| *p != identity.store_id) {
        tracing::warn!(
            store_id = %identity.store_id,
            previous,
            "The configured store id (edge.store_id) differs from the stored one and replaces it."
        );
    }
    if store_copy.as_ref() != Some(&identity) {
        store.store_identity(&identity)?;
    } else {
        // The process that stored it may have crashed before its sync finished.
        store.sync()?;
    }
    if file_copy.as_ref() != Some(&identity) {
        identity::write_identity(identity_file, &identity)?;
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BoxOptions {
        BoxOptions {
            store_id: "store-1".into(),
            ..BoxOptions::default()
        }
    }

    fn first_start(dir: &Path) -> String {
        let opened = open_box(dir, &options()).unwrap();
        assert!(opened.rebuilt.is_none());
        opened.identity.edge_id
    }

    #[test]
    fn a_first_start_writes_the_same_identity_to_both_copies() {
        let dir = tempfile::tempdir().unwrap();
        let edge_id = first_start(dir.path());
        match identity::read_identity(&identity::identity_path(dir.path())).unwrap() {
            Read::Found(id) => assert_eq!(
                (id.edge_id, id.store_id),
                (edge_id.clone(), "store-1".into())
            ),
            other => panic!("no identity file: {other:?}"),
        }
        assert_eq!(first_start(dir.path()), edge_id);
    }

    #[test]
    fn a_missing_identity_file_is_repaired_from_the_state_store() {
        let dir = tempfile::tempdir().unwrap();
        let edge_id = first_start(dir.path());
        std::fs::remove_file(identity::identity_path(dir.path())).unwrap();
        assert_eq!(first_start(dir.path()), edge_id);
        assert!(matches!(
            identity::read_identity(&identity::identity_path(dir.path())).unwrap(),
            Read::Found(id) if id.edge_id == edge_id
        ));
    }

    #[test]
    fn a_state_store_without_an_edge_id_is_repaired_from_the_identity_file() {
        let dir = tempfile::tempdir().unwrap();
        let edge_id = first_start(dir.path());
        {
            let store = StateStore::open(&dir.path().join("state")).unwrap();
            store
                .trees()
                .unwrap()
                .meta
                .remove(super::super::META_EDGE_ID)
                .unwrap();
            store.sync().unwrap();
        }
        assert_eq!(first_start(dir.path()), edge_id);
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(store.stored_identity().unwrap().unwrap().edge_id, edge_id);
    }

    #[test]
    fn copies_that_disagree_refuse_to_start_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        first_start(dir.path());
        let other = StoredIdentity {
            edge_id: "edge-other".into(),
            store_id: "store-1".into(),
        };
        identity::write_identity(&identity::identity_path(dir.path()), &other).unwrap();
        let err = open_box(dir.path(), &options()).unwrap_err();
        assert!(
            matches!(&err, StateError::Identity(e) if matches!(**e, IdentityError::IdentityConflict { .. })),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&identity::identity_path(dir.path()).display().to_string()),
            "{text}"
        );
        assert!(
            text.contains(&dir.path().join("state").join("db").display().to_string()),
            "{text}"
        );
        // An explicit id settles it and rewrites both copies.
        let explicit = BoxOptions {
            explicit_edge_id: Some("edge-chosen".into()),
            ..options()
        };
        assert_eq!(
            open_box(dir.path(), &explicit).unwrap().identity.edge_id,
            "edge-chosen"
        );
        assert_eq!(first_start(dir.path()), "edge-chosen");
    }

    #[test]
    fn a_rebuild_restores_the_checkpointed_offsets_and_keeps_the_edge_id() {
        let dir = tempfile::tempdir().unwrap();
        let edge_id = {
            let opened = open_box(dir.path(), &options()).unwrap();
            opened
                .store
                .commit(&Commit {
                    consumer: "forward:cloud".into(),
                    offsets: vec![("pos.payments".into(), 7)],
                    ..Commit::default()
                })
                .unwrap();
            opened.store.sync().unwrap();
            opened.identity.edge_id
        };
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        let err = open_box(dir.path(), &options()).unwrap_err();
        assert!(
            matches!(&err, StateError::Identity(e) if matches!(**e, IdentityError::Damaged { .. })),
            "{err}"
        );
        let rebuild = BoxOptions {
            rebuild: true,
            ..options()
        };
        let opened = open_box(dir.path(), &rebuild).unwrap();
        assert_eq!(opened.identity.edge_id, edge_id);
        assert_eq!(opened.rebuilt.as_ref().unwrap().restored_offsets, 1);
        assert_eq!(
            opened
                .store
                .offset("forward:cloud", "pos.payments")
                .unwrap(),
            Some(7)
        );
    }

    #[test]
    fn a_log_with_data_and_no_identity_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log").join("pos.payments")).unwrap();
        let err = open_box(dir.path(), &options()).unwrap_err();
        assert!(
            matches!(&err, StateError::Identity(e) if matches!(**e, IdentityError::Damaged { .. })),
            "{err}"
        );
        let rebuild = BoxOptions {
            rebuild: true,
            ..options()
        };
        let err = open_box(dir.path(), &rebuild).unwrap_err();
        assert!(
            matches!(&err, StateError::Identity(e) if matches!(**e, IdentityError::IdentityLost { .. })),
            "{err}"
        );
    }
}
