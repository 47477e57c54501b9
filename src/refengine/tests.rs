//! Tests of the reference engine, each proving one rule on a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::engine::{check_seqno, MAX_SEQNO};

const KV: KvId = KvId(7);

fn open(tmp: &tempfile::TempDir) -> RefEngine {
    RefEngine::open(tmp.path().join("data")).unwrap()
}

fn store_dir(engine: &RefEngine, kv: KvId) -> PathBuf {
    engine.data_dir().join(format!("kv-{}", kv.0))
}

/// Sorted names of the entries of `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn rec(seqno: u64, key: &str, value: Option<&str>) -> Record {
    Record {
        seqno,
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn records(file: &IndexFile) -> Vec<Record> {
    read_index_file(file.path()).unwrap().1
}

fn flush(engine: &RefEngine, kv: KvId) -> IndexFile {
    engine.flush(kv).unwrap().expect("something to flush")
}

#[test]
fn put_and_delete_seqnos_increase_from_one_per_store() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    assert_eq!(e.put(KV, b"a", b"1").unwrap(), 1);
    assert_eq!(e.delete(KV, b"a").unwrap(), 2);
    assert_eq!(e.put(KV, b"b", b"2").unwrap(), 3);
    assert_eq!(e.put(KvId(8), b"a", b"x").unwrap(), 1, "seqnos are per store");
    assert_eq!(e.high_seqno(KV).unwrap(), 3);
    e.create_store(KvId(9)).unwrap();
    assert_eq!(e.high_seqno(KvId(9)).unwrap(), 0);
    assert_eq!(e.stores(), vec![KvId(7), KvId(8), KvId(9)]);
    assert_eq!(e.get(KV, b"a").unwrap(), None);
    assert_eq!(e.get(KV, b"b").unwrap().as_deref(), Some(&b"2"[..]));
}

#[test]
fn flush_writes_a_file_that_read_index_file_reads_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"a", b"1").unwrap();
    e.put(KV, b"b", b"2").unwrap();
    e.put(KV, b"a", b"3").unwrap();
    e.delete(KV, b"b").unwrap();
    e.put(KV, b"c", b"").unwrap();
    let file = flush(&e, KV);
    assert_eq!(file.name(), "000000000001.sqi");
    assert_eq!(file.path(), store_dir(&e, KV).join("000000000001.sqi"));
    assert!(file.path().is_absolute());
    assert_eq!(
        (file.low_seqno(), file.high_seqno()),
        (1, 5),
        "covers every seqno handed out"
    );
    assert_eq!(file.len(), fs::metadata(file.path()).unwrap().len());

    let (footer, back) = read_index_file(file.path()).unwrap();
    assert_eq!(
        back,
        vec![
            rec(1, "a", Some("1")),
            rec(2, "b", Some("2")),
            rec(3, "a", Some("3")),
            rec(4, "b", None),
            rec(5, "c", Some(""))
        ],
        "every version, in seqno order"
    );
    assert_eq!(
        (
            footer.version,
            footer.record_count,
            footer.low_seqno,
            footer.high_seqno
        ),
        (format::FORMAT_VERSION, 5, 1, 5)
    );
    assert_eq!(e.files(KV).unwrap(), vec![file.clone()]);
    assert_eq!(
        names(&store_dir(&e, KV)),
        vec!["000000000001.sqi"],
        "no temp left"
    );

    assert_eq!(e.flush(KV).unwrap(), None, "the memtable is empty now");
    assert_eq!(e.get(KV, b"a").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(e.get(KV, b"b").unwrap(), None);

    e.put(KV, b"d", b"4").unwrap();
    let second = flush(&e, KV);
    assert_eq!(second.name(), "000000000002.sqi");
    assert_eq!(
        (second.low_seqno(), second.high_seqno()),
        (6, 6),
        "adjacent range"
    );
}

#[test]
fn an_empty_store_flushes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.create_store(KV).unwrap();
    e.create_store(KV).unwrap();
    assert_eq!(e.flush(KV).unwrap(), None);
    assert!(names(&store_dir(&e, KV)).is_empty());
    assert!(e.snapshot(KV).unwrap().files().is_empty());
}

#[test]
fn a_flipped_byte_and_a_truncated_file_are_caught_by_read_index_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    for i in 0..10 {
        e.put(KV, format!("key-{i}").as_bytes(), b"some value").unwrap();
    }
    let file = flush(&e, KV);
    let good = fs::read(file.path()).unwrap();
    let copy = tmp.path().join("copy.sqi");

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x20;
    fs::write(&copy, &flipped).unwrap();
    let err = read_index_file(&copy).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &copy),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");

    fs::write(&copy, &good[..good.len() - 1]).unwrap();
    let err = read_index_file(&copy).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &copy),
        "{err}"
    );
    assert!(err.to_string().contains("copy.sqi"), "{err}");

    fs::write(&copy, &good).unwrap();
    assert_eq!(read_index_file(&copy).unwrap().1.len(), 10);
}

#[test]
fn get_reads_the_memtable_then_files_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"a", b"1").unwrap();
    e.put(KV, b"old", b"kept").unwrap();
    flush(&e, KV);
    e.put(KV, b"a", b"2").unwrap();
    flush(&e, KV);
    assert_eq!(e.get(KV, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(e.get(KV, b"old").unwrap().as_deref(), Some(&b"kept"[..]));
    e.put(KV, b"a", b"3").unwrap();
    assert_eq!(e.get(KV, b"a").unwrap().as_deref(), Some(&b"3"[..]));
    e.delete(KV, b"a").unwrap();
    assert_eq!(e.get(KV, b"a").unwrap(), None);
    flush(&e, KV);
    assert_eq!(
        e.get(KV, b"a").unwrap(),
        None,
        "the tombstone in the newest file wins"
    );
    e.compact(KV).unwrap().unwrap();
    assert_eq!(e.get(KV, b"a").unwrap(), None);
    assert_eq!(e.get(KV, b"old").unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(e.get(KV, b"never").unwrap(), None);
}

#[test]
fn compaction_keeps_only_newest_versions_and_keeps_tombstones() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"a", b"a1").unwrap(); // 1
    e.put(KV, b"b", b"b1").unwrap(); // 2
    e.put(KV, b"c", b"c1").unwrap(); // 3
    let f1 = flush(&e, KV);
    assert_eq!(e.compact(KV).unwrap(), None, "one file: nothing to merge");
    e.put(KV, b"a", b"a2").unwrap(); // 4
    e.delete(KV, b"b").unwrap(); // 5
    let f2 = flush(&e, KV);
    e.put(KV, b"d", b"d1").unwrap(); // 6
    e.put(KV, b"c", b"c2").unwrap(); // 7
    let f3 = flush(&e, KV);

    let out = e.compact(KV).unwrap().expect("compacted");
    assert_eq!(out.name(), "000000000004.sqi");
    assert_eq!(
        (out.low_seqno(), out.high_seqno()),
        (1, 7),
        "the union of the inputs' ranges"
    );
    assert_eq!(
        records(&out),
        vec![
            rec(4, "a", Some("a2")),
            rec(5, "b", None),
            rec(6, "d", Some("d1")),
            rec(7, "c", Some("c2")),
        ]
    );
    assert_eq!(e.files(KV).unwrap(), vec![out.clone()]);
    for f in [&f1, &f2, &f3] {
        assert!(
            !f.path().exists(),
            "no snapshot held {}: deleted at once",
            f.name()
        );
    }
    assert_eq!(names(&store_dir(&e, KV)), vec!["000000000004.sqi"]);
    assert_eq!(e.get(KV, b"c").unwrap().as_deref(), Some(&b"c2"[..]));
    assert_eq!(e.get(KV, b"b").unwrap(), None);

    // A later compaction merges the output again; the tombstone stays.
    e.put(KV, b"e", b"e1").unwrap();
    flush(&e, KV);
    let again = e.compact(KV).unwrap().unwrap();
    assert_eq!((again.low_seqno(), again.high_seqno()), (1, 8));
    assert!(records(&again).contains(&rec(5, "b", None)));
}

#[test]
fn compaction_inputs_survive_while_a_snapshot_holds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"a", b"1").unwrap();
    let f1 = flush(&e, KV);
    e.put(KV, b"a", b"2").unwrap();
    let f2 = flush(&e, KV);
    let bytes1 = fs::read(f1.path()).unwrap();

    let snap = e.snapshot(KV).unwrap();
    let snap2 = e.snapshot(KV).unwrap();
    assert_eq!(snap.kv_id(), KV);
    assert_eq!(snap.files(), &[f1.clone(), f2.clone()]);
    let out = e.compact(KV).unwrap().unwrap();

    assert_eq!(e.files(KV).unwrap(), vec![out.clone()]);
    assert_eq!(
        e.snapshot(KV).unwrap().files(),
        std::slice::from_ref(&out),
        "new snapshots see the output"
    );
    assert_eq!(
        snap.files(),
        &[f1.clone(), f2.clone()],
        "the old snapshot still lists its files"
    );
    assert_eq!(fs::read(f1.path()).unwrap(), bytes1, "held input intact");
    read_index_file(f2.path()).unwrap();

    drop(snap);
    assert!(
        f1.path().exists() && f2.path().exists(),
        "the second snapshot still holds them"
    );
    drop(snap2);
    assert!(
        !f1.path().exists() && !f2.path().exists(),
        "deleted when the last holder dropped"
    );
    assert!(out.path().exists());
}

#[test]
fn reopen_recovers_every_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (files1, files2);
    {
        let e = open(&tmp);
        e.put(KvId(1), b"a", b"1").unwrap();
        flush(&e, KvId(1));
        e.put(KvId(1), b"b", b"2").unwrap();
        flush(&e, KvId(1));
        e.put(KvId(1), b"lost", b"never flushed").unwrap(); // seqno 3

        // k0, k1, k0: the compaction keeps two records over three seqnos,
        // so the file reads back as what it was declared (a dense output,
        // one record per seqno, would read back as holding every version).
        for i in 0..3 {
            e.put(KvId(2), format!("k{}", i % 2).as_bytes(), b"v").unwrap();
            flush(&e, KvId(2));
        }
        e.compact(KvId(2)).unwrap().unwrap(); // file 4, seqnos 1..=3
        e.create_store(KvId(3)).unwrap();
        files1 = e.files(KvId(1)).unwrap();
        files2 = e.files(KvId(2)).unwrap();
    }
    let e = open(&tmp);
    assert_eq!(e.stores(), vec![KvId(1), KvId(2), KvId(3)]);
    assert_eq!(e.files(KvId(1)).unwrap(), files1);
    assert_eq!(e.files(KvId(2)).unwrap(), files2);
    assert!(e.files(KvId(3)).unwrap().is_empty());

    assert_eq!(
        e.high_seqno(KvId(1)).unwrap(),
        2,
        "the unflushed mutation is lost"
    );
    assert_eq!(e.get(KvId(1), b"lost").unwrap(), None);
    assert_eq!(e.get(KvId(1), b"b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(
        e.put(KvId(1), b"c", b"3").unwrap(),
        3,
        "seqnos continue from the highest flushed"
    );
    assert_eq!(flush(&e, KvId(1)).name(), "000000000003.sqi");

    assert_eq!(e.high_seqno(KvId(2)).unwrap(), 3);
    assert_eq!(e.put(KvId(2), b"k9", b"v").unwrap(), 4);
    assert_eq!(flush(&e, KvId(2)).name(), "000000000005.sqi");
    assert_eq!(e.get(KvId(2), b"k1").unwrap().as_deref(), Some(&b"v"[..]));

    assert_eq!(e.put(KvId(3), b"x", b"y").unwrap(), 1);
    assert_eq!(flush(&e, KvId(3)).name(), "000000000001.sqi");
}

#[test]
fn reopen_after_a_crash_between_compaction_output_and_input_deletion_removes_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("saved");
    fs::create_dir(&saved).unwrap();
    let (inputs, out);
    {
        let e = open(&tmp);
        for i in 0..3 {
            e.put(KV, b"same key", format!("v{i}").as_bytes()).unwrap();
            flush(&e, KV);
        }
        inputs = e.files(KV).unwrap();
        for f in &inputs {
            fs::copy(f.path(), saved.join(f.name())).unwrap();
        }
        out = e.compact(KV).unwrap().unwrap();
        e.put(KV, b"after", b"x").unwrap();
        flush(&e, KV); // 000000000005.sqi, seqno 4
    }
    // The crash: the inputs were never deleted; a flush left its temp file.
    let dir = tmp.path().join("data/kv-7");
    for f in &inputs {
        fs::copy(saved.join(f.name()), f.path()).unwrap();
    }
    fs::write(dir.join(".tmp-000000000006.sqi"), b"half written").unwrap();

    let e = open(&tmp);
    let files = e.files(KV).unwrap();
    assert_eq!(
        files.iter().map(IndexFile::name).collect::<Vec<_>>(),
        vec![out.name(), "000000000005.sqi"]
    );
    assert_eq!(
        names(&dir),
        vec!["000000000004.sqi", "000000000005.sqi"],
        "inputs and temp removed"
    );
    assert_eq!(e.get(KV, b"same key").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(e.high_seqno(KV).unwrap(), 4);
    e.put(KV, b"next", b"x").unwrap();
    assert_eq!(flush(&e, KV).name(), "000000000006.sqi");
}

#[test]
fn overlapping_files_that_no_compaction_explains_fail_open() {
    let tmp = tempfile::tempdir().unwrap();
    let f1 = {
        let e = open(&tmp);
        e.put(KV, b"a", b"1").unwrap();
        e.put(KV, b"b", b"1").unwrap();
        let f1 = flush(&e, KV); // 1..=2
        e.put(KV, b"c", b"1").unwrap();
        flush(&e, KV); // 3..=3
        f1
    };
    // File 1 now claims 1..=3: file 2's range lies inside it, but a
    // compaction output always has the higher number, so this is damage.
    let mut bytes = fs::read(f1.path()).unwrap();
    let n = bytes.len();
    bytes[n - 12..n - 4].copy_from_slice(&3u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    fs::write(f1.path(), &bytes).unwrap();
    let err = RefEngine::open(tmp.path().join("data")).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("overlap")),
        "{err}"
    );
}

#[test]
fn drop_store_then_put_reuses_file_name_000000000001() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"old", b"old").unwrap();
    e.put(KV, b"unflushed", b"x").unwrap();
    let old = flush(&e, KV);
    e.put(KV, b"discarded", b"x").unwrap();
    let old_bytes = fs::read(old.path()).unwrap();

    e.drop_store(KV).unwrap();
    assert!(!store_dir(&e, KV).exists(), "the dir goes with its last file");
    assert!(e.stores().is_empty());
    assert!(matches!(e.snapshot(KV).err(), Some(Error::UnknownKvStore { kv }) if kv == KV));
    assert!(matches!(e.drop_store(KV), Err(Error::UnknownKvStore { .. })));

    assert_eq!(e.put(KV, b"new", b"new").unwrap(), 1, "seqnos start over");
    assert_eq!(e.get(KV, b"discarded").unwrap(), None);
    let new = flush(&e, KV);
    assert_eq!(new.name(), old.name());
    assert_eq!(new.name(), "000000000001.sqi");
    assert_ne!(fs::read(new.path()).unwrap(), old_bytes);
    assert_eq!(records(&new), vec![rec(1, "new", Some("new"))]);

    drop(e);
    let e = open(&tmp);
    assert_eq!(e.files(KV).unwrap(), vec![new]);
}

#[test]
fn dropping_a_store_whose_files_a_snapshot_holds_never_replaces_them() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"a", b"old").unwrap();
    let f1 = flush(&e, KV);
    e.put(KV, b"b", b"old").unwrap();
    let f2 = flush(&e, KV);
    let snap = e.snapshot(KV).unwrap();
    let before: Vec<Vec<u8>> = [&f1, &f2].iter().map(|f| fs::read(f.path()).unwrap()).collect();

    e.drop_store(KV).unwrap();
    let dir = store_dir(&e, KV);
    assert_eq!(
        names(&dir),
        vec!["000000000001.sqi", "000000000002.sqi", "dropped-000000000002"]
    );
    assert_eq!(e.put(KV, b"c", b"new").unwrap(), 1);
    let new = flush(&e, KV);
    assert_eq!(new.name(), "000000000003.sqi", "numbered above the held files");
    for (f, bytes) in [&f1, &f2].iter().zip(&before) {
        assert_eq!(&fs::read(f.path()).unwrap(), bytes, "{} untouched", f.name());
    }
    assert_eq!(snap.files(), &[f1.clone(), f2.clone()]);
    assert_eq!(e.files(KV).unwrap(), vec![new.clone()]);

    drop(snap);
    assert_eq!(
        names(&dir),
        vec!["000000000003.sqi"],
        "held files and marker gone"
    );
    drop(e);
    let e = open(&tmp);
    assert_eq!(e.files(KV).unwrap(), vec![new]);
    assert_eq!(e.high_seqno(KV).unwrap(), 1);
}

#[test]
fn a_crash_while_a_dropped_stores_files_are_held_does_not_resurrect_them() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let e = open(&tmp);
        for kv in [KvId(1), KvId(2)] {
            e.put(kv, b"a", b"old").unwrap();
            flush(&e, kv);
            e.put(kv, b"b", b"old").unwrap();
            flush(&e, kv);
            // A snapshot that never drops: the process dies holding it.
            std::mem::forget(e.snapshot(kv).unwrap());
            e.drop_store(kv).unwrap();
        }
        // Store 2 is created again and flushes before the crash.
        e.put(KvId(2), b"c", b"new").unwrap();
        assert_eq!(flush(&e, KvId(2)).name(), "000000000003.sqi");
        assert!(e.data_dir().join("kv-1/000000000001.sqi").exists());
    }
    let e = open(&tmp);
    assert_eq!(e.stores(), vec![KvId(2)], "store 1 stays dropped");
    assert!(!e.data_dir().join("kv-1").exists());
    assert_eq!(names(&e.data_dir().join("kv-2")), vec!["000000000003.sqi"]);
    assert_eq!(e.high_seqno(KvId(2)).unwrap(), 1);
    assert_eq!(e.get(KvId(2), b"a").unwrap(), None);
    assert_eq!(e.get(KvId(2), b"c").unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn seqnos_beyond_48_bits_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    assert!(check_seqno(Path::new("/x"), MAX_SEQNO).is_ok());
    assert!(matches!(
        check_seqno(Path::new("/x"), MAX_SEQNO + 1),
        Err(Error::SeqnoOutOfRange { seqno, .. }) if seqno == 1 << 48
    ));

    e.put(KV, b"a", b"1").unwrap();
    e.store_for_test(KV).set_next_seqno(MAX_SEQNO);
    assert_eq!(e.put(KV, b"b", b"2").unwrap(), MAX_SEQNO, "the last valid seqno");
    for err in [
        e.put(KV, b"c", b"3").unwrap_err(),
        e.delete(KV, b"a").unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::SeqnoOutOfRange { seqno, .. } if seqno == 1 << 48),
            "{err}"
        );
    }
    assert_eq!(
        e.high_seqno(KV).unwrap(),
        MAX_SEQNO,
        "refused mutations take no seqno"
    );
    assert_eq!(e.get(KV, b"c").unwrap(), None);
    let file = flush(&e, KV);
    assert_eq!(file.high_seqno(), MAX_SEQNO);
    assert_eq!(read_index_file(file.path()).unwrap().0.high_seqno, MAX_SEQNO);

    drop(e);
    let e = open(&tmp);
    assert_eq!(e.high_seqno(KV).unwrap(), MAX_SEQNO);
    assert!(matches!(
        e.put(KV, b"c", b"3"),
        Err(Error::SeqnoOutOfRange { .. })
    ));
}

#[test]
fn unknown_stores_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    let kv = KvId(99);
    let unknown = |r: Result<()>| matches!(r, Err(Error::UnknownKvStore { kv: k }) if k == kv);
    assert!(unknown(e.snapshot(kv).map(drop)));
    assert!(unknown(e.flush(kv).map(drop)));
    assert!(unknown(e.compact(kv).map(drop)));
    assert!(unknown(e.files(kv).map(drop)));
    assert!(unknown(e.high_seqno(kv).map(drop)));
    assert!(unknown(e.get(kv, b"a").map(drop)));
    assert!(unknown(e.drop_store(kv)));
    let err = e.snapshot(kv).err().unwrap();
    assert!(err.to_string().contains("no KV store 99"), "{err}");
}

#[test]
fn open_ignores_entries_that_are_not_store_dirs_and_reports_an_absolute_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("kv-07")).unwrap();
    fs::create_dir_all(data.join("backup")).unwrap();
    fs::write(data.join("kv-8"), b"a file, not a dir").unwrap();
    let e = RefEngine::open(&data).unwrap();
    assert!(e.stores().is_empty());
    assert!(e.data_dir().is_absolute());
    assert_eq!(Engine::data_dir(&e), Some(e.data_dir()));
    assert!(format!("{e:?}").contains("RefEngine"));
}

#[test]
fn snapshots_taken_under_a_concurrent_writer_list_complete_files() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<RefEngine>();

    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.create_store(KV).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (e, done) = (e.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut checked = 0;
                while !done.load(Ordering::Relaxed) {
                    let snap = e.snapshot(KV).unwrap();
                    let mut prev_high = 0;
                    for f in snap.files() {
                        let (footer, _) = read_index_file(f.path()).unwrap();
                        assert_eq!(
                            (footer.low_seqno, footer.high_seqno),
                            (f.low_seqno(), f.high_seqno())
                        );
                        assert_eq!(fs::metadata(f.path()).unwrap().len(), f.len());
                        assert_eq!(f.low_seqno(), prev_high + 1, "ranges are adjacent");
                        prev_high = f.high_seqno();
                        checked += 1;
                    }
                }
                checked
            })
        })
        .collect();
    for i in 0..1500u32 {
        e.put(KV, format!("k{}", i % 97).as_bytes(), &i.to_le_bytes())
            .unwrap();
        if i % 25 == 24 {
            flush(&e, KV);
        }
        if i % 250 == 249 {
            e.compact(KV).unwrap().unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    let checked: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checked > 0);
    assert_eq!(
        e.files(KV).unwrap().len(),
        1,
        "the last compaction merged everything"
    );
    assert_eq!(
        names(&store_dir(&e, KV)).len(),
        1,
        "every retired file was deleted"
    );
    assert_eq!(e.get(KV, b"k3").unwrap(), Some(1458u32.to_le_bytes().to_vec()));
}

// ---- Every version kept until compaction ----

#[test]
fn a_flush_keeps_every_version_of_a_key_and_get_returns_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"k", b"first").unwrap(); // 1
    e.put(KV, b"other", b"x").unwrap(); // 2
    e.put(KV, b"k", b"second").unwrap(); // 3
    assert_eq!(
        e.get(KV, b"k").unwrap().as_deref(),
        Some(&b"second"[..]),
        "memtable: newest"
    );
    let file = flush(&e, KV);
    assert_eq!(
        records(&file),
        vec![
            rec(1, "k", Some("first")),
            rec(2, "other", Some("x")),
            rec(3, "k", Some("second"))
        ],
        "both versions of `k`, in seqno order"
    );
    assert_eq!(
        e.get(KV, b"k").unwrap().as_deref(),
        Some(&b"second"[..]),
        "file: newest"
    );

    // A tombstone after a put in one flush: the tombstone is the newest.
    e.put(KV, b"gone", b"v").unwrap(); // 4
    e.delete(KV, b"gone").unwrap(); // 5
    let second = flush(&e, KV);
    assert_eq!(
        records(&second),
        vec![rec(4, "gone", Some("v")), rec(5, "gone", None)]
    );
    assert_eq!(e.get(KV, b"gone").unwrap(), None);

    // The index rebuilt on open also points at the newest version.
    drop(e);
    let e = open(&tmp);
    assert_eq!(e.get(KV, b"k").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(e.get(KV, b"gone").unwrap(), None);
    // Compaction still keeps only the newest version of each key.
    let out = e.compact(KV).unwrap().unwrap();
    assert_eq!(
        records(&out),
        vec![
            rec(2, "other", Some("x")),
            rec(3, "k", Some("second")),
            rec(5, "gone", None)
        ]
    );
}

#[test]
fn read_index_file_accepts_repeated_keys_but_rejects_out_of_order_seqnos() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let versions = vec![rec(1, "k", Some("a")), rec(2, "k", Some("b")), rec(4, "k", None)];
    let len = write_index_file_durably(dir, "000000000001.sqi", &versions, 1, 5).unwrap();
    let path = dir.join("000000000001.sqi");
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
    assert_eq!(names(dir), vec!["000000000001.sqi"], "no temp left");
    let (footer, back) = read_index_file(&path).unwrap();
    assert_eq!(back, versions);
    assert_eq!(
        (footer.record_count, footer.low_seqno, footer.high_seqno),
        (3, 1, 5)
    );

    // The writer refuses records out of order, and writes nothing.
    let swapped = vec![rec(2, "k", Some("b")), rec(1, "k", Some("a"))];
    let err = write_index_file_durably(dir, "000000000002.sqi", &swapped, 1, 5).unwrap_err();
    assert!(matches!(&err, Error::Io { .. }), "{err}");
    let equal = vec![rec(2, "k", Some("a")), rec(2, "j", Some("b"))];
    assert!(write_index_file_durably(dir, "000000000002.sqi", &equal, 1, 5).is_err());
    assert!(write_index_file_durably(dir, "000000000002.sqi", &versions, 0, 5).is_err());
    assert!(write_index_file_durably(dir, ".hidden", &versions, 1, 5).is_err());
    assert!(
        write_index_file_durably(dir, "000000000001.sqi", &versions, 1, 5).is_err(),
        "exists"
    );
    assert_eq!(names(dir), vec!["000000000001.sqi"]);

    // The reader refuses them too, even in a file with a valid checksum:
    // the first record's seqno becomes 2, equal to the second's.
    let mut bytes = fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&2u64.to_le_bytes());
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let bad = dir.join("bad.sqi");
    fs::write(&bad, &bytes).unwrap();
    let err = read_index_file(&bad).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("does not follow")),
        "{err}"
    );
}

// ---- Retention for backup ----

/// Overwrites, in the file at `path`, every occurrence of `from` with `to`
/// (same length), as if the file held other values. A `get` that read the
/// file would return `to`.
fn poison(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(path).unwrap();
    let mut found = false;
    for i in 0..=bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            found = true;
        }
    }
    assert!(found, "{} holds no {:?}", path.display(), from);
    fs::write(path, bytes).unwrap();
}

fn listed(snap: &dyn Snapshot) -> Vec<String> {
    snap.files().iter().map(|f| f.name().to_owned()).collect()
}

#[test]
fn an_input_the_active_backup_has_not_reported_is_retained_until_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.put(KV, b"a", b"v1").unwrap(); // 1
    let f1 = flush(&e, KV);
    e.files_backed_up(KV, std::slice::from_ref(&f1));
    e.put(KV, b"a", b"v2").unwrap(); // 2
    e.put(KV, b"a", b"v3").unwrap(); // 3
    let f2 = flush(&e, KV);

    let out = e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 1);
    assert!(
        !f1.path().exists(),
        "reported before the compaction: deleted at once"
    );
    assert!(f2.path().exists(), "not reported: kept on disk");
    assert_eq!(e.files(KV).unwrap(), vec![out.clone()], "not a live file");
    let snap = e.snapshot(KV).unwrap();
    assert_eq!(
        snap.files(),
        &[out.clone(), f2.clone()],
        "listed, ordered by low seqno (1..=3, then 2..=3)"
    );
    assert_eq!(records(&f2).len(), 2, "with its intermediate version");

    // `get` reads the output, never the retained file.
    poison(f2.path(), b"v3", b"XX");
    assert_eq!(e.get(KV, b"a").unwrap().as_deref(), Some(&b"v3"[..]));

    // Reported (by a round holding a snapshot): released, deleted once no
    // snapshot holds it.
    e.files_backed_up(KV, std::slice::from_ref(&f2));
    assert_eq!(e.retained(KV).unwrap(), 0);
    assert_eq!(listed(&*e.snapshot(KV).unwrap()), vec![out.name()]);
    assert!(f2.path().exists(), "the snapshot still holds it");
    drop(snap);
    assert!(!f2.path().exists(), "deleted with the last snapshot");
    assert_eq!(names(&store_dir(&e, KV)), vec![out.name()]);

    // Reported while no snapshot holds it: deleted at once.
    e.put(KV, b"b", b"1").unwrap();
    let f3 = flush(&e, KV);
    e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 2, "the first output and f3");
    assert!(out.path().exists() && f3.path().exists());
    e.files_backed_up(KV, &[out.clone(), f3.clone()]);
    assert_eq!(e.retained(KV).unwrap(), 0);
    assert!(!out.path().exists() && !f3.path().exists());
}

#[test]
fn backup_stopped_releases_every_retained_file_and_forgets_the_reported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.files_backed_up(KV, &[]); // an empty round activates the backup
    e.put(KV, b"a", b"1").unwrap();
    let f1 = flush(&e, KV);
    e.put(KV, b"a", b"2").unwrap();
    let f2 = flush(&e, KV);
    let out = e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 2);
    assert_eq!(
        listed(&*e.snapshot(KV).unwrap()),
        vec![f1.name(), out.name(), f2.name()],
        "ordered by low seqno, ties by high seqno"
    );
    let snap = e.snapshot(KV).unwrap();

    e.backup_stopped(KV);
    assert_eq!(e.retained(KV).unwrap(), 0);
    assert!(f1.path().exists() && f2.path().exists(), "held by the snapshot");
    drop(snap);
    assert!(!f1.path().exists() && !f2.path().exists());
    assert_eq!(listed(&*e.snapshot(KV).unwrap()), vec![out.name()]);

    // Inactive now: a compaction deletes its inputs.
    e.put(KV, b"b", b"1").unwrap();
    let f3 = flush(&e, KV);
    let out2 = e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 0);
    assert!(!out.path().exists() && !f3.path().exists());

    // What was reported before a stop is forgotten: after a new start that
    // has not reported `out2` yet, compacting it retains it.
    e.files_backed_up(KV, std::slice::from_ref(&out2));
    e.backup_stopped(KV);
    e.files_backed_up(KV, &[]);
    e.put(KV, b"c", b"1").unwrap();
    let f4 = flush(&e, KV);
    e.files_backed_up(KV, std::slice::from_ref(&f4));
    e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 1, "out2 retained, f4 released");
    assert!(out2.path().exists() && !f4.path().exists());
}

#[test]
fn without_retain_for_backup_compaction_deletes_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let options = RefOptions {
        retain_for_backup: false,
    };
    let e = RefEngine::open_with(tmp.path().join("data"), options).unwrap();
    assert_eq!(e.options(), options);
    assert!(RefOptions::default().retain_for_backup, "on by default");
    e.files_backed_up(KV, &[]);
    e.put(KV, b"a", b"1").unwrap();
    let f1 = flush(&e, KV);
    e.put(KV, b"a", b"2").unwrap();
    let f2 = flush(&e, KV);
    let out = e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 0);
    assert!(!f1.path().exists() && !f2.path().exists());
    assert_eq!(listed(&*e.snapshot(KV).unwrap()), vec![out.name()]);
}

#[test]
fn a_store_whose_backup_never_reported_deletes_inputs_at_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    // Another store's backup is active; this one's never was.
    e.files_backed_up(KvId(8), &[]);
    e.put(KV, b"a", b"1").unwrap();
    let f1 = flush(&e, KV);
    e.put(KV, b"a", b"2").unwrap();
    let f2 = flush(&e, KV);
    let out = e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 0);
    assert!(!f1.path().exists() && !f2.path().exists());
    assert_eq!(names(&store_dir(&e, KV)), vec![out.name()]);
}

#[test]
fn drop_store_releases_retained_files_and_the_backup_stays_active() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    e.files_backed_up(KV, &[]);
    e.put(KV, b"a", b"1").unwrap();
    let f1 = flush(&e, KV);
    e.put(KV, b"a", b"2").unwrap();
    let f2 = flush(&e, KV);
    e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 2);

    e.drop_store(KV).unwrap();
    assert!(!f1.path().exists() && !f2.path().exists());
    assert!(!store_dir(&e, KV).exists(), "nothing left: the dir is gone");
    assert!(matches!(e.retained(KV), Err(Error::UnknownKvStore { .. })));
    // Reports for a store that is gone are ignored.
    e.files_backed_up(KV, std::slice::from_ref(&f1));

    // Created again while its backup runs: retention applies at once.
    e.put(KV, b"b", b"1").unwrap();
    flush(&e, KV);
    e.put(KV, b"b", b"2").unwrap();
    flush(&e, KV);
    e.compact(KV).unwrap().unwrap();
    assert_eq!(e.retained(KV).unwrap(), 2);
}

#[test]
fn retained_files_are_removed_by_recovery_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let (f1, f2, out);
    {
        let e = open(&tmp);
        e.files_backed_up(KV, &[]);
        e.put(KV, b"a", b"1").unwrap();
        f1 = flush(&e, KV);
        e.put(KV, b"a", b"2").unwrap();
        f2 = flush(&e, KV);
        out = e.compact(KV).unwrap().unwrap();
        assert_eq!(e.retained(KV).unwrap(), 2);
        // The crash: nothing is released.
        e.crash();
    }
    assert!(f1.path().exists() && f2.path().exists());
    let e = open(&tmp);
    assert_eq!(e.files(KV).unwrap(), vec![out.clone()]);
    assert_eq!(e.retained(KV).unwrap(), 0, "retention is not persisted");
    assert_eq!(names(&store_dir(&e, KV)), vec![out.name()]);
    assert_eq!(e.get(KV, b"a").unwrap().as_deref(), Some(&b"2"[..]));
}

/// Drives one store with writes, flushes and compactions while a simulated
/// backup takes a snapshot every few steps, copies the records of the files
/// it has not seen and reports them. Returns whether every seqno the backup
/// covers restores exactly: for each key the newest backed-up version at or
/// below it equals the oracle's.
fn backup_restores_exactly(options: RefOptions) -> bool {
    use std::collections::{BTreeMap, HashMap, HashSet};

    let tmp = tempfile::tempdir().unwrap();
    let e = RefEngine::open_with(tmp.path().join("data"), options).unwrap();
    let mut history: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut seen: HashSet<(PathBuf, Option<u64>)> = HashSet::new();
    let mut backed_up: Vec<Record> = Vec::new();
    let mut covered = 0;
    let mut round = |e: &RefEngine, backed_up: &mut Vec<Record>, covered: &mut u64| {
        let snap = e.snapshot(KV).unwrap();
        let mut new = Vec::new();
        for f in snap.files() {
            if seen.insert((f.path().to_path_buf(), f.file_id())) {
                backed_up.extend(records(f));
                *covered = (*covered).max(f.high_seqno());
                new.push(f.clone());
            }
        }
        e.files_backed_up(KV, &new);
    };
    // Seeded, deterministic: a small linear congruential generator.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    e.create_store(KV).unwrap();
    round(&e, &mut backed_up, &mut covered);
    for step in 0..400 {
        let key = format!("k{}", next(5)).into_bytes();
        if next(4) == 0 {
            history.push((e.delete(KV, &key).unwrap(), key, None));
        } else {
            let value = format!("v{step}").into_bytes();
            history.push((e.put(KV, &key, &value).unwrap(), key, Some(value)));
        }
        if next(3) == 0 {
            e.flush(KV).unwrap();
        }
        if next(7) == 0 {
            e.compact(KV).unwrap();
        }
        if next(9) == 0 {
            round(&e, &mut backed_up, &mut covered);
        }
    }
    e.flush(KV).unwrap();
    round(&e, &mut backed_up, &mut covered);
    assert_eq!(covered, history.len() as u64, "the backup covers every seqno");

    let mut exact = true;
    for s in 1..=covered {
        let mut oracle: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        for (_, k, v) in history.iter().filter(|(seqno, ..)| *seqno <= s) {
            oracle.insert(k, v.as_deref());
        }
        let mut restored: HashMap<&[u8], (u64, Option<&[u8]>)> = HashMap::new();
        for r in backed_up.iter().filter(|r| r.seqno <= s) {
            let e = restored.entry(&r.key).or_insert((0, None));
            if r.seqno >= e.0 {
                *e = (r.seqno, r.value.as_deref());
            }
        }
        let restored: BTreeMap<&[u8], Option<&[u8]>> =
            restored.into_iter().map(|(k, (_, v))| (k, v)).collect();
        exact &= restored == oracle;
    }
    exact
}

#[test]
fn with_retention_every_covered_seqno_restores_exactly_and_without_it_not() {
    assert!(backup_restores_exactly(RefOptions::default()));
    assert!(
        !backup_restores_exactly(RefOptions {
            retain_for_backup: false
        }),
        "without retention, compaction drops versions the backup never saw"
    );
}

#[test]
fn a_snapshot_generation_changes_exactly_when_the_listed_files_do() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp);
    let generation = |e: &RefEngine| {
        let listed = e.snapshot(KV).unwrap().generation().unwrap();
        let asked = crate::engine::Engine::generation(e, KV);
        assert_eq!(asked, Some(listed), "Engine::generation is the snapshot's");
        listed
    };
    e.create_store(KV).unwrap();
    let g0 = generation(&e);
    e.put(KV, b"a", b"1").unwrap();
    assert_eq!(generation(&e), g0, "a put changes no file");
    let f1 = flush(&e, KV);
    let g1 = generation(&e);
    assert_ne!(g1, g0, "a flush adds a file");
    assert_eq!(generation(&e), g1, "nothing changed, same generation");
    e.files_backed_up(KV, std::slice::from_ref(&f1));
    assert_eq!(generation(&e), g1, "reporting a live file changes no listing");
    e.put(KV, b"a", b"2").unwrap();
    flush(&e, KV);
    e.compact(KV).unwrap().unwrap();
    let g2 = generation(&e);
    assert!(g2 != g1 && e.retained(KV).unwrap() == 1);
    let retained = e.snapshot(KV).unwrap().files()[1].clone();
    e.files_backed_up(KV, &[retained]);
    let g3 = generation(&e);
    assert_ne!(g3, g2, "a released retained file leaves the listing");
    e.drop_store(KV).unwrap();
    assert_eq!(crate::engine::Engine::generation(&e, KV), None, "dropped");
    e.create_store(KV).unwrap();
    let g4 = generation(&e);
    assert!(
        ![g0, g1, g2, g3].contains(&g4),
        "a re-created store never repeats one"
    );
}
