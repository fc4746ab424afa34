//! Tests of the queue on its own: restart, torn and corrupt records, the bound, resends.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use super::{Entry, Spool};

fn push_n(s: &mut Spool, from: usize, n: usize) {
    for i in from..from + n {
        s.push(
            format!("t/{}", i % 3),
            format!("{i:06}").into_bytes(),
            1,
            true,
        );
    }
}

fn drain(s: &mut Spool) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = s.take_next() {
        out.push(String::from_utf8_lossy(&e.payload).into_owned());
        s.ack(e.seq);
    }
    out
}

fn segment_file(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .expect("a segment")
        .path()
}

fn numbers(v: &[String]) -> Vec<usize> {
    v.iter().filter_map(|x| x.parse().ok()).collect()
}

#[test]
fn survives_a_restart_and_replays_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
    push_n(&mut s, 0, 100);
    s.flush_blocking();
    assert_eq!(s.counters.messages_written, 100);
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(s.counters.recovered, 100);
    assert_eq!(s.depth(), 100);
    push_n(&mut s, 100, 10);
    let got = numbers(&drain(&mut s));
    assert_eq!(got, (0..110).collect::<Vec<_>>());
    assert_eq!(s.depth(), 0);
}

#[test]
fn acknowledged_before_the_flush_never_touches_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
    push_n(&mut s, 0, 50);
    assert_eq!(drain(&mut s).len(), 50);
    s.flush_blocking();
    assert_eq!(s.counters.disk_bytes_written, 0);
    assert_eq!(s.bytes(), 0);
    let files = fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(files, 0);
}

#[test]
fn a_torn_record_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
    push_n(&mut s, 0, 10);
    s.flush_blocking();
    drop(s);
    // A crash in the middle of the next write: half a record at the end.
    let seg = segment_file(dir.path());
    let good = fs::metadata(&seg).expect("meta").len();
    let mut partial = Vec::new();
    Entry {
        seq: 10,
        ts_ms: 0,
        topic: "t/x".into(),
        payload: b"lost".to_vec(),
        qos: 1,
        retain: false,
    }
    .encode(&mut partial);
    let mut f = OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("open seg");
    f.write_all(&partial[..partial.len() / 2]).expect("write");
    drop(f);
    let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(s.counters.torn, 1);
    assert_eq!(s.counters.recovered, 10);
    assert_eq!(fs::metadata(&seg).expect("meta").len(), good);
    push_n(&mut s, 10, 5);
    s.flush_blocking();
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen 2");
    assert_eq!(numbers(&drain(&mut s)), (0..15).collect::<Vec<_>>());
}

#[test]
fn a_flipped_bit_is_never_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
    push_n(&mut s, 0, 4);
    s.flush_blocking();
    drop(s);
    let seg = segment_file(dir.path());
    let mut b = fs::read(&seg).expect("read");
    let last = b.len() - 1;
    b[last] ^= 0x01;
    fs::write(&seg, b).expect("write");
    let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(numbers(&drain(&mut s)), vec![0, 1, 2]);
}

#[test]
fn full_queue_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let max = 64 << 10;
    let mut s = Spool::open(dir.path(), max).expect("open");
    for round in 0..20 {
        push_n(&mut s, round * 100, 100);
        s.flush_blocking();
        assert!(s.bytes() <= max, "{} > {max}", s.bytes());
    }
    let dropped = s.counters.dropped;
    assert!(dropped > 0);
    let got = numbers(&drain(&mut s));
    assert_eq!(got.len() as u64 + dropped, 2000);
    assert_eq!(got.last(), Some(&1999));
    assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept");
}

#[test]
fn lost_connection_resends_in_order_and_head_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
    push_n(&mut s, 0, 10);
    s.flush_blocking();
    let sent: Vec<u64> = (0..6)
        .filter_map(|_| s.take_next().map(|e| e.seq))
        .collect();
    assert_eq!(sent, vec![0, 1, 2, 3, 4, 5]);
    s.ack(0);
    s.ack(1);
    s.ack(3);
    s.rewind(&|_| false);
    assert_eq!(s.head(), 2);
    let again: Vec<u64> = (0..3)
        .filter_map(|_| s.take_next().map(|e| e.seq))
        .collect();
    assert_eq!(again, vec![2, 4, 5]);
    s.ack(2);
    s.flush_blocking();
    drop(s);
    // 0–3 acknowledged, 4 and 5 in flight: a restart replays from 4.
    let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(numbers(&drain(&mut s)), (4..10).collect::<Vec<_>>());
}
