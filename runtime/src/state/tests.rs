//! Unit tests of the state store.

use super::*;

fn put(key: &str, value: &str) -> StateOp {
    StateOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn commit(consumer: &str, offsets: &[(&str, u64)], namespace: &str, ops: Vec<StateOp>) -> Commit {
    Commit {
        consumer: consumer.to_string(),
        offsets: offsets.iter().map(|(t, o)| (t.to_string(), *o)).collect(),
        namespace: namespace.to_string(),
        ops,
    }
}

fn get_str(store: &StateStore, namespace: &str, key: &str) -> Option<String> {
    store
        .get(namespace, key.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn commit_applies_offsets_and_state_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.offset("plugin:fraud", "pos.payments").unwrap(), None);
    store
        .commit(&commit(
            "plugin:fraud",
            &[("pos.payments", 42), ("ref.blocklist", 7)],
            "fraud",
            vec![put("card-1", "3"), put("card-2", "5")],
        ))
        .unwrap();
    assert_eq!(
        store.offset("plugin:fraud", "pos.payments").unwrap(),
        Some(42)
    );
    assert_eq!(
        store.offset("plugin:fraud", "ref.blocklist").unwrap(),
        Some(7)
    );
    assert_eq!(get_str(&store, "fraud", "card-1").as_deref(), Some("3"));
    assert_eq!(get_str(&store, "fraud", "card-2").as_deref(), Some("5"));

    store
        .commit(&commit(
            "plugin:fraud",
            &[("pos.payments", 43)],
            "fraud",
            vec![
                StateOp::Delete {
                    key: b"card-1".to_vec(),
                },
                put("card-2", "6"),
            ],
        ))
        .unwrap();
    assert_eq!(
        store.offset("plugin:fraud", "pos.payments").unwrap(),
        Some(43)
    );
    assert_eq!(get_str(&store, "fraud", "card-1"), None);
    assert_eq!(get_str(&store, "fraud", "card-2").as_deref(), Some("6"));
    assert_eq!(
        store.offsets("plugin:fraud").unwrap(),
        vec![
            ("pos.payments".to_string(), 43),
            ("ref.blocklist".to_string(), 7)
        ]
    );
}

#[test]
fn a_commit_with_an_oversized_value_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .commit(&commit("c", &[("t", 1)], "ns", vec![put("a", "old")]))
        .unwrap();
    let too_big = StateOp::Put {
        key: b"b".to_vec(),
        value: vec![0; MAX_STATE_VALUE_BYTES + 1],
    };
    // The good op comes first, so the transaction has staged a write before the bad op aborts.
    let err = store
        .commit(&commit(
            "c",
            &[("t", 2)],
            "ns",
            vec![put("a", "new"), too_big],
        ))
        .unwrap_err();
    assert!(matches!(err, StateError::Aborted(_)), "{err}");
    assert!(
        err.to_string()
            .contains("nothing of the commit was applied"),
        "{err}"
    );
    assert_eq!(store.offset("c", "t").unwrap(), Some(1));
    assert_eq!(get_str(&store, "ns", "a").as_deref(), Some("old"));
    assert_eq!(store.get("ns", b"b").unwrap(), None);

    let long_key = StateOp::Delete {
        key: vec![b'k'; MAX_STATE_KEY_BYTES + 1],
    };
    assert!(store
        .commit(&commit("c", &[("t", 3)], "ns", vec![long_key]))
        .is_err());
    assert_eq!(store.offset("c", "t").unwrap(), Some(1));
}

#[test]
fn reopen_returns_what_was_committed_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = StateStore::open(dir.path()).unwrap();
        for i in 1..=100u64 {
            store
                .commit(&commit(
                    "c",
                    &[("t", i)],
                    "ns",
                    vec![put("last", &(i - 1).to_string())],
                ))
                .unwrap();
        }
        store.sync().unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.offset("c", "t").unwrap(), Some(100));
    assert_eq!(get_str(&store, "ns", "last").as_deref(), Some("99"));
}

#[test]
fn edge_id_is_stable_across_reopen_and_an_explicit_id_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let generated = {
        let store = StateStore::open(dir.path()).unwrap();
        let id = store.edge_id(None).unwrap();
        assert!(id.starts_with("edge-") && id.len() == 17, "{id}");
        assert_eq!(store.edge_id(None).unwrap(), id);
        id
    };
    {
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.edge_id(None).unwrap(), generated);
        assert_eq!(store.edge_id(Some("store-0042")).unwrap(), "store-0042");
        assert_eq!(store.edge_id(None).unwrap(), "store-0042");
        assert!(matches!(
            store.edge_id(Some("has space")),
            Err(StateError::InvalidName { .. })
        ));
        assert!(store.edge_id(Some("")).is_err());
    }
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.edge_id(None).unwrap(), "store-0042");
    assert_eq!(store.edge_id(Some("store-0042")).unwrap(), "store-0042");
}

#[test]
fn an_edge_id_is_synced_before_it_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let before = store.sync_count();
    store.edge_id(None).unwrap();
    assert_eq!(store.sync_count(), before + 1);
    store.edge_id(None).unwrap();
    assert_eq!(
        store.sync_count(),
        before + 1,
        "a known id needs no second sync"
    );
    store.edge_id(Some("box-1")).unwrap();
    assert_eq!(store.sync_count(), before + 2);
}

#[test]
fn resume_below_the_log_start_skips_ahead_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(
        store.resume("c", "t", 0).unwrap(),
        Resume {
            offset: 0,
            skipped_from: None
        }
    );
    assert_eq!(
        store.resume("c", "t", 5).unwrap(),
        Resume {
            offset: 5,
            skipped_from: Some(0)
        }
    );
    store
        .commit(&commit("c", &[("t", 10)], "", vec![]))
        .unwrap();
    assert_eq!(
        store.resume("c", "t", 10).unwrap(),
        Resume {
            offset: 10,
            skipped_from: None
        }
    );
    assert_eq!(
        store.resume("c", "t", 3).unwrap(),
        Resume {
            offset: 10,
            skipped_from: None
        }
    );
    assert_eq!(
        store.resume("c", "t", 25).unwrap(),
        Resume {
            offset: 25,
            skipped_from: Some(10)
        }
    );
    // Resuming writes nothing: the consumer's next commit moves the offset.
    assert_eq!(store.offset("c", "t").unwrap(), Some(10));
}

#[test]
fn reset_removes_only_that_namespace_and_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // "ab" is a string prefix of "abc": the length-prefixed keys keep them apart.
    store
        .commit(&commit(
            "plugin:ab",
            &[("t", 4), ("u", 2)],
            "ab",
            vec![put("k", "1"), put("l", "2")],
        ))
        .unwrap();
    store
        .commit(&commit(
            "plugin:abc",
            &[("t", 9)],
            "abc",
            vec![put("k", "3")],
        ))
        .unwrap();
    let before = store.sync_count();
    store.reset("ab", "plugin:ab").unwrap();
    assert!(store.sync_count() > before, "reset must be durable");
    assert_eq!(store.get("ab", b"k").unwrap(), None);
    assert_eq!(store.get("ab", b"l").unwrap(), None);
    assert_eq!(store.offsets("plugin:ab").unwrap(), vec![]);
    assert_eq!(get_str(&store, "abc", "k").as_deref(), Some("3"));
    assert_eq!(store.offset("plugin:abc", "t").unwrap(), Some(9));
    let rest: Vec<_> = store
        .state_iter("abc")
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rest, vec![(b"k".to_vec(), b"3".to_vec())]);
    assert_eq!(
        store.all_offsets().unwrap(),
        vec![("plugin:abc".to_string(), "t".to_string(), 9)]
    );
}

#[test]
fn state_iter_lists_one_namespace_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .commit(&commit("c", &[], "a", vec![put("z", "1"), put("m", "2")]))
        .unwrap();
    store
        .commit(&commit("c", &[], "b", vec![put("a", "3")]))
        .unwrap();
    let entries: Vec<_> = store.state_iter("a").unwrap().map(Result::unwrap).collect();
    assert_eq!(
        entries,
        vec![
            (b"m".to_vec(), b"2".to_vec()),
            (b"z".to_vec(), b"1".to_vec())
        ]
    );
}

#[test]
fn a_newer_format_version_refuses_to_open_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = StateStore::open(dir.path()).unwrap();
        store
            .trees()
            .unwrap()
            .meta
            .insert(META_FORMAT_VERSION, &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        store.sync().unwrap();
    }
    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StateError::NewerFormat { found, supported, .. }
            if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("format version 2"), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
}

#[test]
fn an_undecodable_offset_is_reported_as_corrupt_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .trees()
        .unwrap()
        .offsets
        .insert(keys::offset_key("c", "pos.payments"), &[1u8, 2, 3][..])
        .unwrap();
    let err = store.offset("c", "pos.payments").unwrap_err();
    match err {
        StateError::Corrupt { key, .. } => assert_eq!(key, "offsets/c/pos.payments"),
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(store.resume("c", "pos.payments", 0).is_err());
}

#[test]
fn invalid_consumer_and_namespace_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.commit(&commit("", &[("t", 1)], "", vec![])),
        Err(StateError::InvalidName {
            what: "consumer",
            ..
        })
    ));
    assert!(matches!(
        store.commit(&commit("c", &[], "", vec![put("k", "v")])),
        Err(StateError::InvalidName {
            what: "namespace",
            ..
        })
    ));
    assert!(store.offset("c", "t").unwrap().is_none());
}

#[test]
fn retention_guard_syncs_before_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .commit(&commit("c", &[("t", 500)], "", vec![]))
        .unwrap();
    let guard: Arc<dyn RetentionGuard> = Arc::new(store.clone());
    let before = store.sync_count();
    guard.before_delete("t", 400).unwrap();
    assert_eq!(store.sync_count(), before + 1);
    assert_eq!(guard.protected_from("t"), None);
    // The guard prints where the store lives, not sled's tree dump.
    assert!(format!("{guard:?}").contains("StateStore"));
}

#[test]
fn concurrent_commits_from_many_threads_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let consumer = format!("c{t}");
                for i in 1..=200u64 {
                    store
                        .commit(&commit(
                            &consumer,
                            &[("t", i)],
                            &consumer,
                            vec![put("n", &i.to_string())],
                        ))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        let consumer = format!("c{t}");
        assert_eq!(store.offset(&consumer, "t").unwrap(), Some(200));
        assert_eq!(get_str(&store, &consumer, "n").as_deref(), Some("200"));
    }
}

#[test]
fn a_second_open_waits_for_a_stopping_holder_and_fails_clearly_on_one_that_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let first = StateStore::open(&path).unwrap();
    let letting_go = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = StateStore::open(&path).expect("the store opens once the first holder lets go");
    letting_go.join().unwrap();

    let started = std::time::Instant::now();
    let err = StateStore::open(&path).expect_err("the second holder keeps the lock");
    assert!(started.elapsed() >= LOCK_WAIT);
    let message = err.to_string();
    assert!(
        message.contains("another Outpost") && message.contains(&path.display().to_string()),
        "{message}"
    );
    drop(second);
}

fn delete(key: &str) -> StateOp {
    StateOp::Delete {
        key: key.as_bytes().to_vec(),
    }
}

fn usage(bytes: u64, keys: u64) -> StateUsage {
    StateUsage { bytes, keys }
}

#[test]
fn usage_counts_key_and_value_bytes_and_commits_keep_it_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.usage("a").unwrap(), usage(0, 0));
    store
        .commit(&commit(
            "plugin:a",
            &[],
            "a",
            vec![put("k1", "12345"), put("k2", "")],
        ))
        .unwrap();
    assert_eq!(store.usage("a").unwrap(), usage(2 + 5 + 2, 2));
    // A replacement counts the difference, a delete frees its entry, deleting a missing key
    // and a key put twice in one commit count what is stored in the end.
    store
        .commit(&commit(
            "plugin:a",
            &[],
            "a",
            vec![
                put("k1", "1"),
                delete("k2"),
                delete("absent"),
                put("k3", "xxxxxxxxxx"),
                put("k3", "xx"),
            ],
        ))
        .unwrap();
    assert_eq!(store.usage("a").unwrap(), usage(3 + 4, 2));
    // Another namespace, even one whose name is a prefix, is counted apart.
    store
        .commit(&commit("plugin:ab", &[], "ab", vec![put("k", "v")]))
        .unwrap();
    assert_eq!(store.usage("ab").unwrap(), usage(2, 1));
    assert_eq!(store.usage("a").unwrap(), usage(7, 2));
    drop(store);
    let reopened = StateStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.usage("a").unwrap(),
        usage(7, 2),
        "counted again from the stored entries"
    );
}

#[test]
fn a_failed_commit_leaves_usage_unchanged_and_a_reset_empties_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .commit(&commit("plugin:a", &[("t", 1)], "a", vec![put("k", "vv")]))
        .unwrap();
    assert_eq!(store.usage("a").unwrap(), usage(3, 1));
    let too_long = StateOp::Put {
        key: vec![b'k'; MAX_STATE_KEY_BYTES + 1],
        value: Vec::new(),
    };
    assert!(store
        .commit(&commit(
            "plugin:a",
            &[],
            "a",
            vec![put("k2", "v"), too_long]
        ))
        .is_err());
    assert_eq!(store.usage("a").unwrap(), usage(3, 1));
    store.reset("a", "plugin:a").unwrap();
    assert_eq!(store.usage("a").unwrap(), usage(0, 0));
    store
        .commit(&commit("plugin:a", &[], "a", vec![put("k", "v")]))
        .unwrap();
    assert_eq!(store.usage("a").unwrap(), usage(2, 1));
}
