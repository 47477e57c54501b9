//! The lsm-tree reader on damaged tables: a flipped byte anywhere is
//! either an error naming the file or, where the byte is one no record
//! depends on, exactly the original records; never a panic, an abort or
//! other records.
#![cfg(feature = "lsm-tree")]

use continuous_backup::lsm::{LsmEngine, LsmFormat};
use continuous_backup::restore::RecordReader;
use continuous_backup::{Error, KvId, Record};

fn read(path: &std::path::Path) -> Result<Vec<Record>, Error> {
    LsmFormat::default().records(path)?.collect()
}

// Regression: a flipped bit in a table's table of contents made lsm-tree
// allocate 40 GB and abort `cbk verify`, before it checked the contents'
// checksum.
#[test]
fn a_flipped_byte_anywhere_in_a_table_is_an_error_or_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = LsmEngine::open(tmp.path().join("data")).unwrap();
    let kv = KvId(0);
    engine.create_store(kv).unwrap();
    for i in 0..300u32 {
        engine
            .put(kv, format!("key-{i:04}").as_bytes(), &[i as u8; 60])
            .unwrap();
        if i % 10 == 0 {
            engine.delete(kv, format!("key-{:04}", i / 2).as_bytes()).unwrap();
        }
    }
    engine.flush(kv).unwrap();
    let tables = tmp.path().join("data/kv-0/tree/tables");
    let table = std::fs::read_dir(&tables)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&table).unwrap();
    let original = read(&table).unwrap();
    assert_eq!(original.len(), 330);

    let damaged = tmp.path().join("damaged");
    // Every byte of the last 4 KiB (trailer, contents, index, metadata),
    // and every 7th byte of the data blocks before.
    let tail = bytes.len().saturating_sub(4096);
    let at: Vec<usize> = (0..tail).step_by(7).chain(tail..bytes.len()).collect();
    let (mut refused, mut same) = (0, 0);
    for &i in &at {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        std::fs::write(&damaged, &b).unwrap();
        match read(&damaged) {
            Err(Error::Corrupt { path, .. }) | Err(Error::Io { path, .. }) => {
                assert_eq!(path, damaged);
                refused += 1;
            }
            Err(other) => panic!("byte {i}: {other}"),
            Ok(records) => {
                assert_eq!(
                    records, original,
                    "byte {i} changed what the table reads back, unnoticed"
                );
                same += 1;
            }
        }
    }
    assert!(
        refused > at.len() * 9 / 10,
        "{refused} of {} refused, {same} unchanged",
        at.len()
    );
}
