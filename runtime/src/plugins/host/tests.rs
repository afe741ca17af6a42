//! Unit tests of the host: linking, load-time checks and the call path, with WAT modules.

use super::*;

#[test]
fn every_wasi_preview1_function_is_defined() {
    let host = Host::new(HostConfig::default()).unwrap();
    for name in wasi::ALL_FUNCTIONS {
        assert!(
            host.inner
                .imports
                .contains_key(&(wasi::MODULE.to_string(), name.to_string())),
            "wasi_snapshot_preview1.{name} is not defined"
        );
    }
    let wasi_count = host
        .inner
        .imports
        .keys()
        .filter(|(m, _)| m == wasi::MODULE)
        .count();
    assert_eq!(wasi_count, wasi::ALL_FUNCTIONS.len());
}

/// Reads the state under the record's key and emits what it found (`none` when absent), then
/// writes the record's value there; fails the call (after the write) when the value is `!`.
const KV: &str = r#"(module
  (import "outpost" "emit" (func $emit (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "outpost" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "outpost" "state_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "kv.out")
  (data (i32.const 32) "none")
  (func (export "outpost_abi_version") (result i32) (i32.const 1))
  (func (export "outpost_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "outpost_on_record") (param $p i32) (param $len i32) (result i32)
    (local $q i32) (local $kp i32) (local $kl i32) (local $vp i32) (local $vl i32) (local $n i32)
    (local.set $q (i32.add (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
    (local.set $q (i32.add (local.get $q) (i32.const 16)))
    (local.set $kl (i32.load (local.get $q)))
    (local.set $kp (i32.add (local.get $q) (i32.const 4)))
    (local.set $q (i32.add (local.get $kp) (local.get $kl)))
    (local.set $vl (i32.load (local.get $q)))
    (local.set $vp (i32.add (local.get $q) (i32.const 4)))
    (local.set $n (call $get (local.get $kp) (local.get $kl) (i32.const 1024) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (drop (call $emit (i32.const 16) (i32.const 6) (i32.const 0) (i32.const -1)
                     (i32.const 32) (i32.const 4) (i32.const 0) (i32.const 0))))
      (else (drop (call $emit (i32.const 16) (i32.const 6) (i32.const 0) (i32.const -1)
                     (i32.const 1024) (local.get $n) (i32.const 0) (i32.const 0)))))
    (drop (call $put (local.get $kp) (local.get $kl) (local.get $vp) (local.get $vl)))
    (if (i32.eq (i32.load8_u (local.get $vp)) (i32.const 33)) (then (return (i32.const 1))))
    (i32.const 0)))"#;

fn kv_instance(host: &Host) -> Instance {
    let manifest = crate::plugins::manifest::Manifest::parse(
        "name = \"kv\"\nversion = \"1\"\ninputs = [\"kv.in\"]\noutputs = [\"kv.out\"]\nstate = true\n",
    )
    .unwrap();
    let module = host.compile_named("kv", KV.as_bytes()).unwrap();
    host.instantiate(&manifest, &module).unwrap()
}

fn put_get(instance: &mut Instance, value: &[u8]) -> Result<Vec<u8>, CallFailure> {
    let record = crate::log::Record {
        offset: 0,
        timestamp_ms: 0,
        key: Some(b"a".to_vec()),
        value: value.to_vec(),
        headers: Vec::new(),
    };
    instance.call("kv.in", &record)?;
    let emits: Vec<Emitted> = instance.drain_emits().collect();
    assert_eq!(emits.len(), 1);
    Ok(emits[0].value.clone())
}

#[test]
fn calls_see_earlier_writes_of_the_batch_but_not_those_of_failed_calls() {
    let host = Host::new(HostConfig::default()).unwrap();
    let mut kv = kv_instance(&host);
    assert_eq!(put_get(&mut kv, b"1").unwrap(), b"none");
    assert_eq!(put_get(&mut kv, b"2").unwrap(), b"1");
    let failure = put_get(&mut kv, b"!").unwrap_err();
    assert_eq!(failure.kind, FailureKind::Error);
    assert_eq!(
        kv.drain_emits().count(),
        0,
        "a failed call's emits are discarded"
    );
    assert_eq!(
        put_get(&mut kv, b"3").unwrap(),
        b"2",
        "the failed call's write is discarded"
    );
    let ops = kv.take_state_ops();
    assert_eq!(
        ops,
        vec![crate::state::StateOp::Put {
            key: b"a".to_vec(),
            value: b"3".to_vec()
        }],
        "one op per key, with its final value"
    );
    assert!(!kv.has_pending_state());
    // Without a store, only the committed cache can remember the value.
    kv.committed(ops);
    assert_eq!(put_get(&mut kv, b"4").unwrap(), b"3");
}

#[test]
fn committed_state_is_read_from_the_store_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(dir.path()).unwrap();
    store
        .commit(&crate::state::Commit {
            consumer: "plugin:kv".into(),
            offsets: vec![("kv.in".into(), 1)],
            namespace: "kv".into(),
            ops: vec![crate::state::StateOp::Put {
                key: b"a".to_vec(),
                value: b"stored".to_vec(),
            }],
        })
        .unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let mut kv = kv_instance(&host);
    kv.set_state_store(store);
    assert_eq!(put_get(&mut kv, b"5").unwrap(), b"stored");
    kv.restart().unwrap();
    assert_eq!(
        put_get(&mut kv, b"6").unwrap(),
        b"5",
        "uncommitted writes survive a restart"
    );
}

#[test]
fn alloc_returning_zero_fails_the_call_as_out_of_memory() {
    let host = Host::new(HostConfig::default()).unwrap();
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "outpost_abi_version") (result i32) (i32.const 1))
        (func (export "outpost_alloc") (param i32) (result i32) (i32.const 0))
        (func (export "outpost_on_record") (param i32 i32) (result i32) (i32.const 0)))"#;
    let manifest = crate::plugins::manifest::Manifest::parse(
        "name = \"zero\"\nversion = \"1\"\ninputs = [\"in\"]\n",
    )
    .unwrap();
    let module = host.compile_named("zero", wat.as_bytes()).unwrap();
    let mut instance = host.instantiate(&manifest, &module).unwrap();
    let record = crate::log::Record {
        offset: 0,
        timestamp_ms: 0,
        key: None,
        value: b"x".to_vec(),
        headers: Vec::new(),
    };
    let failure = instance.call("in", &record).unwrap_err();
    assert_eq!(failure.kind, FailureKind::OutOfMemory, "{failure}");
    assert!(failure.message.contains("returned 0"), "{failure}");
}

#[test]
fn init_reads_committed_state_when_a_store_is_attached() {
    // outpost_init reads key "a" into 1024 and remembers the length; records emit it.
    let wat = r#"(module
      (import "outpost" "emit" (func $emit (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "outpost" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 2)
      (global $n (mut i32) (i32.const 0))
      (data (i32.const 16) "kv.out")
      (data (i32.const 32) "a")
      (func (export "outpost_abi_version") (result i32) (i32.const 1))
      (func (export "outpost_alloc") (param i32) (result i32) (i32.const 65536))
      (func (export "outpost_init") (param i32 i32) (result i32)
        (global.set $n (call $get (i32.const 32) (i32.const 1) (i32.const 1024) (i32.const 64)))
        (i32.const 0))
      (func (export "outpost_on_record") (param i32 i32) (result i32)
        (drop (call $emit (i32.const 16) (i32.const 6) (i32.const 0) (i32.const -1)
          (i32.const 1024) (select (global.get $n) (i32.const 0) (i32.gt_s (global.get $n) (i32.const 0)))
          (i32.const 0) (i32.const 0)))
        (i32.const 0)))"#;
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(dir.path()).unwrap();
    store
        .commit(&crate::state::Commit {
            consumer: "plugin:kv".into(),
            offsets: vec![],
            namespace: "kv".into(),
            ops: vec![crate::state::StateOp::Put {
                key: b"a".to_vec(),
                value: b"from init".to_vec(),
            }],
        })
        .unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let manifest = crate::plugins::manifest::Manifest::parse(
        "name = \"kv\"\nversion = \"1\"\ninputs = [\"kv.in\"]\noutputs = [\"kv.out\"]\nstate = true\n",
    )
    .unwrap();
    let module = host.compile_named("kv", wat.as_bytes()).unwrap();
    let record = crate::log::Record {
        offset: 0,
        timestamp_ms: 0,
        key: None,
        value: Vec::new(),
        headers: Vec::new(),
    };
    let mut with = host
        .instantiate_with_state(&manifest, &module, store)
        .unwrap();
    with.call("kv.in", &record).unwrap();
    assert_eq!(with.drain_emits().next().unwrap().value, b"from init");
    let mut without = host.instantiate(&manifest, &module).unwrap();
    without.call("kv.in", &record).unwrap();
    assert!(without.drain_emits().next().unwrap().value.is_empty());
}

/// Like `KV`, but asks for the value first with a 4-byte buffer, then again with a large one,
/// and fails the call unless both answers agree (the SDK's way to read values of any size).
const KV_RETRY: &str = r#"(module
  (import "outpost" "emit" (func $emit (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "outpost" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "outpost" "state_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "kv.out")
  (func (export "outpost_abi_version") (result i32) (i32.const 1))
  (func (export "outpost_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "outpost_on_record") (param $p i32) (param $len i32) (result i32)
    (local $q i32) (local $kp i32) (local $kl i32) (local $vp i32) (local $vl i32)
    (local $small i32) (local $big i32)
    (local.set $q (i32.add (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
    (local.set $q (i32.add (local.get $q) (i32.const 16)))
    (local.set $kl (i32.load (local.get $q)))
    (local.set $kp (i32.add (local.get $q) (i32.const 4)))
    (local.set $q (i32.add (local.get $kp) (local.get $kl)))
    (local.set $vl (i32.load (local.get $q)))
    (local.set $vp (i32.add (local.get $q) (i32.const 4)))
    (local.set $small (call $get (local.get $kp) (local.get $kl) (i32.const 1024) (i32.const 4)))
    (local.set $big (call $get (local.get $kp) (local.get $kl) (i32.const 1024) (i32.const 4096)))
    (if (i32.ne (local.get $small) (local.get $big)) (then (return (i32.const 1))))
    (if (i32.ge_s (local.get $big) (i32.const 0))
      (then (drop (call $emit (i32.const 16) (i32.const 6) (i32.const 0) (i32.const -1)
                     (i32.const 1024) (local.get $big) (i32.const 0) (i32.const 0)))))
    (drop (call $put (local.get $kp) (local.get $kl) (local.get $vp) (local.get $vl)))
    (i32.const 0)))"#;

#[test]
fn value_larger_than_the_guests_buffer_is_handed_over_on_the_second_ask() {
    let host = Host::new(HostConfig::default()).unwrap();
    let manifest = crate::plugins::manifest::Manifest::parse(
        "name = \"kv\"\nversion = \"1\"\ninputs = [\"kv.in\"]\noutputs = [\"kv.out\"]\nstate = true\n",
    )
    .unwrap();
    let module = host.compile_named("kv", KV_RETRY.as_bytes()).unwrap();
    let mut kv = host.instantiate(&manifest, &module).unwrap();
    let send = |kv: &mut Instance, value: &[u8]| -> Vec<Vec<u8>> {
        let record = crate::log::Record {
            offset: 0,
            timestamp_ms: 0,
            key: Some(b"a".to_vec()),
            value: value.to_vec(),
            headers: Vec::new(),
        };
        kv.call("kv.in", &record).unwrap();
        kv.drain_emits().map(|e| e.value).collect()
    };
    let big = vec![b'z'; 300];
    assert!(send(&mut kv, &big).is_empty(), "nothing stored yet");
    // From the batch's writes.
    assert_eq!(send(&mut kv, b"small"), vec![big.clone()]);
    // From the committed cache.
    let ops = kv.take_state_ops();
    kv.committed(ops);
    assert_eq!(send(&mut kv, &big), vec![b"small".to_vec()]);
    let ops = kv.take_state_ops();
    kv.committed(ops);
    assert_eq!(send(&mut kv, b"x"), vec![big]);
}

/// The `state_hog` fixture (see `tests/fixtures/wat/README.md`) as plugin `hog` with `limits`.
fn hog(host: &Host, store: &crate::state::StateStore, limits: &str) -> Instance {
    let wat = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/wat/state_hog.wat"
    ))
    .unwrap();
    let manifest = crate::plugins::manifest::Manifest::parse(&format!(
        "name = \"hog\"\nversion = \"1\"\ninputs = [\"hog.in\"]\noutputs = [\"hog.out\"]\n\
         state = true\n[limits]\n{limits}\n"
    ))
    .unwrap();
    let module = host.compile_named("hog", &wat).unwrap();
    host.instantiate_with_state(&manifest, &module, store.clone())
        .unwrap()
}

/// Calls the hog with record key `command`; the statuses it emitted, or its failure.
fn hog_call(hog: &mut Instance, command: &str) -> Result<Vec<i32>, CallFailure> {
    let record = crate::log::Record {
        offset: 0,
        timestamp_ms: 0,
        key: Some(command.as_bytes().to_vec()),
        value: Vec::new(),
        headers: Vec::new(),
    };
    hog.call("hog.in", &record)?;
    let emitted: Vec<Emitted> = hog.drain_emits().collect();
    Ok(emitted[0]
        .value
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Commits the hog's pending state as its runner would.
fn hog_commit(hog: &mut Instance, store: &crate::state::StateStore) {
    let commit = crate::state::Commit {
        consumer: "plugin:hog".into(),
        offsets: vec![],
        namespace: "hog".into(),
        ops: hog.take_state_ops(),
    };
    store.commit(&commit).unwrap();
    hog.committed(commit.ops);
}

const QUOTA: i32 = outpost_sdk::abi::status::QUOTA;

#[test]
fn the_key_quota_counts_committed_keys_and_the_uncommitted_ones_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(dir.path()).unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let mut hog = hog(&host, &store, "state_keys = 3");
    assert_eq!(hog_call(&mut hog, "s2a").unwrap(), [0, 0]);
    // Two keys wait in the batch, uncommitted: the third fits, the fourth does not.
    assert_eq!(hog_call(&mut hog, "s2b").unwrap(), [0, QUOTA]);
    hog_commit(&mut hog, &store);
    assert_eq!(store.usage("hog").unwrap().keys, 3);
    assert_eq!(hog.state_usage().unwrap().keys, 3);
    // Replacing a key is no new key; a key deleted in the batch frees its place.
    assert_eq!(hog_call(&mut hog, "s1a").unwrap(), [0]);
    assert_eq!(hog_call(&mut hog, "s1c").unwrap(), [QUOTA]);
    assert_eq!(hog_call(&mut hog, "d1a").unwrap(), [0]);
    assert_eq!(hog_call(&mut hog, "s1c").unwrap(), [0]);
    assert_eq!(hog_call(&mut hog, "s1a").unwrap(), [QUOTA]);
    // A failed call's writes do not count.
    assert_eq!(hog_call(&mut hog, "d1c").unwrap(), [0]);
    assert!(
        hog_call(&mut hog, "S2x").is_err(),
        "x0 fits, x1 is refused, so the call fails"
    );
    assert_eq!(hog_call(&mut hog, "s1y").unwrap(), [0]);
    hog_commit(&mut hog, &store);
    let usage = store.usage("hog").unwrap();
    assert_eq!((usage.bytes, usage.keys), (3 * 3, 3), "a1, b0 and y0");
    assert_eq!(hog.state_usage().unwrap(), hog_usage(usage));
}

fn hog_usage(u: crate::state::StateUsage) -> outpost_sdk::abi::StateUsage {
    outpost_sdk::abi::StateUsage {
        bytes: u.bytes,
        keys: u.keys,
    }
}

#[test]
fn the_byte_quota_counts_replacements_by_their_difference_and_deletes_free_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(dir.path()).unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let mut hog = hog(&host, &store, "state_mib = 2");
    let entry = (1 << 20) + 2; // a 2-byte key and a 1 MiB value
    assert_eq!(hog_call(&mut hog, "p1a").unwrap(), [0]);
    assert_eq!(
        hog_call(&mut hog, "p1b").unwrap(),
        [QUOTA],
        "2 MiB + 4 bytes"
    );
    assert_eq!(hog_call(&mut hog, "p1a").unwrap(), [0], "a replacement");
    assert_eq!(hog_call(&mut hog, "s1b").unwrap(), [0], "3 bytes fit");
    hog_commit(&mut hog, &store);
    assert_eq!(store.usage("hog").unwrap().bytes, entry + 3);
    // Growing a small value to 1 MiB counts the difference, and does not fit...
    assert_eq!(hog_call(&mut hog, "p1b").unwrap(), [QUOTA]);
    // ...until the other entry is deleted (in the same batch, not yet committed).
    assert_eq!(hog_call(&mut hog, "d1a").unwrap(), [0]);
    assert_eq!(hog_call(&mut hog, "p1b").unwrap(), [0]);
    assert_eq!(hog_call(&mut hog, "p1a").unwrap(), [QUOTA]);
    // A restart after a trap keeps the batch and what it counts.
    hog.restart().unwrap();
    assert_eq!(hog_call(&mut hog, "p1a").unwrap(), [QUOTA]);
    hog_commit(&mut hog, &store);
    assert_eq!(store.usage("hog").unwrap().bytes, entry);
    assert_eq!(store.usage("hog").unwrap().keys, 1);
    assert_eq!(hog.pending_state_bytes(), 0);
}

#[test]
fn a_new_instance_counts_the_stored_state_against_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(dir.path()).unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let mut first = hog(&host, &store, "state_mib = 2");
    assert_eq!(hog_call(&mut first, "p1a").unwrap(), [0]);
    assert_eq!(first.pending_state_bytes(), (1 << 20) + 2);
    hog_commit(&mut first, &store);
    drop(first);
    let mut second = hog(&host, &store, "state_mib = 2");
    assert_eq!(hog_call(&mut second, "p1b").unwrap(), [QUOTA]);
    assert_eq!(second.state_quota().max_bytes, 2 << 20);
    assert_eq!(second.state_quota().max_keys, 1_000_000, "the default");
}

#[test]
fn the_state_quota_of_a_manifest_is_capped_by_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(dir.path()).unwrap();
    let host = Host::new(HostConfig {
        max_state_bytes: 3 << 20,
        max_state_keys: 10,
        default_state_bytes: 1 << 20,
        default_state_keys: 5,
        ..HostConfig::default()
    })
    .unwrap();
    let asks_much = hog(&host, &store, "state_mib = 100\nstate_keys = 100");
    assert_eq!(asks_much.state_quota().max_bytes, 3 << 20);
    assert_eq!(asks_much.state_quota().max_keys, 10);
    let asks_nothing = hog(&host, &store, "");
    assert_eq!(asks_nothing.state_quota().max_bytes, 1 << 20);
    assert_eq!(asks_nothing.state_quota().max_keys, 5);
}
