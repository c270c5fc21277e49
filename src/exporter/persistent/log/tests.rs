use proptest::prelude::*;

use super::*;
use crate::otlp::{Span, SpanBatch, request_of};

fn options(max_bytes: u64) -> LogOptions {
    LogOptions {
        max_bytes,
        max_spans: usize::MAX,
        fsync: Fsync::Batch,
        drop_oldest: false,
    }
}

/// A batch of `spans` spans named `tag`, so replayed batches can be told apart.
fn payload(tag: &str, spans: usize) -> Arc<Payload> {
    let spans = (0..spans)
        .map(|i| Span {
            name: format!("{tag}/{i}"),
            ..Default::default()
        })
        .collect();
    Arc::new(Payload::new(SpanBatch::from_request(request_of(spans))))
}

/// The first span name of every batch the log hands out, read back from disk.
fn drain(log: &mut SegmentLog) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(record) = log.take_next() {
        let (spans, body) = read_record(&log.dir, &record).expect("record reads back");
        assert_eq!(spans, record.spans);
        let request = SpanBatch::from_encoded(body, spans).into_request();
        names.push(
            request.resource_spans[0].scope_spans[0].spans[0]
                .name
                .clone(),
        );
    }
    names
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment_numbers(dir)
        .expect("list")
        .into_iter()
        .map(|seq| segment_path(dir, seq))
        .collect()
}

#[test]
fn what_was_appended_and_not_delivered_is_replayed_in_order_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
        assert_eq!(recovery, Recovery::default());
        for tag in ["a", "b", "c"] {
            assert_eq!(log.append(&payload(tag, 3)), Ok(0));
        }
        log.sync().expect("sync");
        let first = log.take_next().expect("a");
        log.done(&first);
        let _in_flight = log.take_next().expect("b");
        // Dropped without `done`: the process dies with b on its way to the backend.
    }
    let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
    assert_eq!(
        recovery,
        Recovery {
            records: 2,
            spans: 6,
            damaged: 0
        }
    );
    assert_eq!(drain(&mut log), ["b/0", "c/0"], "a was acknowledged");
}

#[test]
fn a_record_delivered_while_an_older_one_waits_is_not_sent_again_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
        for tag in ["a", "b", "c", "d"] {
            assert_eq!(log.append(&payload(tag, 1)), Ok(0));
        }
        let a = log.take_next().expect("a");
        let b = log.take_next().expect("b");
        let c = log.take_next().expect("c");
        // Two workers: b and c are acknowledged while a is still being retried.
        log.done(&c);
        log.done(&b);
        let _ = a;
        // The process dies with a in flight and d unread.
    }
    let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
    assert_eq!(recovery.records, 2);
    assert_eq!(drain(&mut log), ["a/0", "d/0"], "b and c were acknowledged");
    drop(log);
    // Once everything is delivered, nothing is left behind: no segment, no done file.
    let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
    while let Some(record) = log.take_next() {
        log.done(&record);
    }
    drop(log);
    let (_, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
    assert_eq!(recovery, Recovery::default());
    let done_files = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".done"))
        .count();
    assert_eq!(done_files, 0);
}

#[test]
fn delivered_segments_are_deleted_and_the_disk_bound_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 512 KiB: 64 KiB segments, each holding a few of these ~20 KiB batches.
    let (mut log, _) = SegmentLog::open(dir.path(), options(512 << 10)).expect("open");
    let batch = payload("x", 1000);
    let mut appended = 0;
    while log.append(&batch).is_ok() {
        appended += 1;
        assert!(appended < 1000, "the bound is never reached");
    }
    assert_eq!(log.append(&batch), Err(NotQueued::Full));
    assert!(log.disk_bytes() <= 512 << 10, "{}", log.disk_bytes());
    let on_disk: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(
        on_disk,
        log.disk_bytes(),
        "the accounting matches the files"
    );
    assert!(segments(dir.path()).len() > 2);
    while let Some(record) = log.take_next() {
        log.done(&record);
    }
    assert_eq!(log.spans(), 0);
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the segment being written is left"
    );
    assert_eq!(log.append(&batch), Ok(0), "room again");
}

#[test]
fn drop_oldest_sheds_unsent_batches_to_make_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(u64::MAX);
    opts.max_spans = 10;
    opts.drop_oldest = true;
    let (mut log, _) = SegmentLog::open(dir.path(), opts).expect("open");
    assert_eq!(log.append(&payload("a", 4)), Ok(0));
    assert_eq!(log.append(&payload("b", 4)), Ok(0));
    assert_eq!(
        log.append(&payload("c", 4)),
        Ok(4),
        "12 spans do not fit in 10"
    );
    assert_eq!(drain(&mut log), ["b/0", "c/0"], "a made room for c");
}

#[test]
fn a_torn_tail_is_counted_and_everything_before_it_is_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
        for tag in ["a", "b", "c"] {
            log.append(&payload(tag, 5)).expect("append");
        }
        log.sync().expect("sync");
    }
    let last = segments(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&last).expect("stat").len();
    let file = OpenOptions::new().write(true).open(&last).expect("open");
    file.set_len(len - 7).expect("truncate mid-record");
    drop(file);

    let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
    assert_eq!(recovery.damaged, 1);
    assert_eq!(recovery.records, 2);
    assert_eq!(drain(&mut log), ["a/0", "b/0"]);
}

#[test]
fn a_flipped_byte_is_caught_by_the_checksum_and_new_writes_go_to_a_new_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
        for tag in ["a", "b"] {
            log.append(&payload(tag, 5)).expect("append");
        }
    }
    let last = segments(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    let at = bytes.len() - 3;
    bytes[at] ^= 0x40;
    std::fs::write(&last, bytes).expect("write");
    {
        let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
        assert_eq!((recovery.records, recovery.damaged), (1, 1));
        log.append(&payload("c", 1)).expect("append after damage");
    }
    let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
    assert_eq!(
        recovery.damaged, 1,
        "the damage is still there, still skipped"
    );
    assert_eq!(drain(&mut log), ["a/0", "c/0"]);
}

#[test]
fn a_second_agent_on_the_same_queue_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = SegmentLog::open(dir.path(), options(1 << 20)).expect("open");
    let second = SegmentLog::open(dir.path(), options(1 << 20));
    let Err(error) = second else {
        panic!("two agents on one queue")
    };
    assert!(
        error
            .to_string()
            .contains("in use by another agent process"),
        "{error}"
    );
}

#[test]
fn new_records_sort_after_the_cursor_even_when_every_segment_was_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..3 {
        let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
        log.append(&payload(&format!("r{round}"), 1))
            .expect("append");
        let record = log.take_next().expect("record");
        log.done(&record);
    }
    {
        let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
        assert_eq!(recovery.records, 0, "all three were delivered");
        log.append(&payload("kept", 1)).expect("append");
    }
    let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
    assert_eq!(drain(&mut log), ["kept/0"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever point a crash cuts the last segment at, every record that ends before
    /// the cut is replayed, in order, and nothing after it.
    #[test]
    fn a_cut_anywhere_keeps_exactly_the_whole_records_before_it(
        sizes in prop::collection::vec(1usize..40, 1..12),
        cut_fraction in 0.0f64..1.0,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ends = Vec::new();
        {
            let (mut log, _) = SegmentLog::open(dir.path(), options(1 << 30)).expect("open");
            for (i, spans) in sizes.iter().enumerate() {
                log.append(&payload(&format!("r{i}"), *spans)).expect("append");
                ends.push(log.segments[&log.writer_seq].len);
            }
        }
        let last = segments(dir.path()).pop().expect("a segment");
        let len = std::fs::metadata(&last).expect("stat").len();
        let cut = MAGIC.len() as u64 + ((len - MAGIC.len() as u64) as f64 * cut_fraction) as u64;
        OpenOptions::new().write(true).open(&last).expect("open").set_len(cut).expect("cut");

        let (mut log, recovery) = SegmentLog::open(dir.path(), options(1 << 30)).expect("reopen");
        let whole = ends.iter().filter(|end| **end <= cut).count();
        let expected: Vec<String> = (0..whole).map(|i| format!("r{i}/0")).collect();
        prop_assert_eq!(drain(&mut log), expected);
        let at_a_boundary = cut == MAGIC.len() as u64 || ends.contains(&cut);
        prop_assert_eq!(recovery.damaged, usize::from(!at_a_boundary));
    }
}

/// Options for the damage properties: 512 KiB make 64 KiB segments; no fsync, for speed.
fn small_segments() -> LogOptions {
    LogOptions {
        max_bytes: 512 << 10,
        max_spans: usize::MAX,
        fsync: Fsync::Never,
        drop_oldest: false,
    }
}

/// A batch whose first span is named `tag/0` and whose second one carries `pad` bytes, so
/// a few records fill a segment.
fn padded(tag: &str, pad: usize) -> Arc<Payload> {
    let spans = vec![
        Span {
            name: format!("{tag}/0"),
            ..Default::default()
        },
        Span {
            name: "p".repeat(pad),
            ..Default::default()
        },
    ];
    Arc::new(Payload::new(SpanBatch::from_request(request_of(spans))))
}

/// A record as written: where it starts, its bytes with the frame, and its first span's name.
struct Written {
    offset: u64,
    bytes: u64,
    name: String,
}

/// Appends a batch for every padding; returns each segment's path and records, in order.
fn write_records(dir: &Path, pads: &[usize]) -> Vec<(PathBuf, Vec<Written>)> {
    let (mut log, _) = SegmentLog::open(dir, small_segments()).expect("open");
    let mut segments: BTreeMap<u64, Vec<Written>> = BTreeMap::new();
    for (i, pad) in pads.iter().enumerate() {
        let payload = padded(&format!("r{i}"), *pad);
        log.append(&payload).expect("append");
        let record = log.unread.back().expect("the record just appended");
        segments
            .entry(record.id.segment)
            .or_default()
            .push(Written {
                offset: record.id.offset,
                bytes: HEADER + u64::from(record.len),
                name: format!("r{i}/0"),
            });
    }
    segments
        .into_iter()
        .map(|(seq, records)| (segment_path(dir, seq), records))
        .collect()
}

/// What happens to one segment file while the agent is down.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// One byte of one of its records is changed: in its frame (length, checksum, span
    /// count) or in its payload.
    Record {
        record: prop::sample::Index,
        in_frame: bool,
        at: prop::sample::Index,
        xor: u8,
    },
    /// One byte of its format marker is changed.
    Magic {
        at: usize,
        xor: u8,
    },
    /// The file is cut inside its format marker (0 bytes: the marker was never written).
    MagicCut {
        len: u64,
    },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        2 => Just(Damage::None),
        3 => (any::<prop::sample::Index>(), any::<bool>(), any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(record, in_frame, at, xor)| Damage::Record { record, in_frame, at, xor }),
        1 => (0..MAGIC.len(), 1u8..=255).prop_map(|(at, xor)| Damage::Magic { at, xor }),
        1 => (0..MAGIC.len() as u64).prop_map(|len| Damage::MagicCut { len }),
    ]
}

fn flip(path: &Path, at: u64, xor: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).expect("read");
    byte[0] ^= xor;
    file.write_all_at(&byte, at).expect("write");
}

#[test]
fn a_damaged_record_in_the_middle_ends_only_its_own_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = write_records(dir.path(), &[12_000; 16]);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let (path, records) = &segments[1];
    assert!(records.len() >= 3);
    // The payload byte in the middle of the second record of the second segment.
    flip(path, records[1].offset + records[1].bytes / 2, 0x01);
    let (mut log, recovery) = SegmentLog::open(dir.path(), small_segments()).expect("reopen");
    let mut expected: Vec<String> = segments[0].1.iter().map(|r| r.name.clone()).collect();
    expected.push(records[0].name.clone());
    for (_, records) in &segments[2..] {
        expected.extend(records.iter().map(|r| r.name.clone()));
    }
    assert_eq!(recovery.damaged, 1);
    assert_eq!(recovery.records, expected.len());
    assert_eq!(drain(&mut log), expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Damage to any segments while the agent is down: a changed byte in any record (not
    /// only the last) delivers the records before it in its segment and skips it and the
    /// rest of the segment; a changed or cut format marker skips the whole segment; each
    /// damaged segment counts once; the other segments deliver everything, in order.
    #[test]
    fn damage_skips_exactly_the_rest_of_its_own_segment(
        pads in prop::collection::vec(6_000usize..16_000, 12..24),
        damages in prop::collection::vec(damage(), 8),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let segments = write_records(dir.path(), &pads);
        prop_assert!(segments.len() >= 2, "{} segments", segments.len());
        let mut expected = Vec::new();
        let mut damaged = 0;
        for ((path, records), damage) in segments.iter().zip(&damages) {
            let kept = match damage {
                Damage::None => records.len(),
                Damage::Record { record, in_frame, at, xor } => {
                    let r = record.index(records.len());
                    let (start, bytes) = if *in_frame {
                        (records[r].offset, HEADER)
                    } else {
                        (records[r].offset + HEADER, records[r].bytes - HEADER)
                    };
                    flip(path, start + at.index(bytes as usize) as u64, *xor);
                    damaged += 1;
                    r
                }
                Damage::Magic { at, xor } => {
                    flip(path, *at as u64, *xor);
                    damaged += 1;
                    0
                }
                Damage::MagicCut { len } => {
                    OpenOptions::new().write(true).open(path).expect("open").set_len(*len).expect("cut");
                    damaged += usize::from(*len > 0);
                    0
                }
            };
            expected.extend(records[..kept].iter().map(|r| r.name.clone()));
        }
        let (mut log, recovery) = SegmentLog::open(dir.path(), small_segments()).expect("reopen");
        prop_assert_eq!(
            recovery,
            Recovery { records: expected.len(), spans: 2 * expected.len(), damaged }
        );
        prop_assert_eq!(drain(&mut log), expected);
    }
}

#[cfg(unix)]
#[test]
fn the_queue_is_readable_by_the_agent_s_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("queue").join("tempo");
    let (mut log, _) = SegmentLog::open(&dir, options(1 << 30)).expect("open");
    assert_eq!(log.append(&payload("a", 1)), Ok(0));
    log.sync().expect("sync");
    let record = log.take_next().expect("a");
    log.done(&record);
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(
        mode(&parent.path().join("queue")),
        0o700,
        "created parents too"
    );
    for entry in std::fs::read_dir(&dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    drop(log);
    // A directory others can read is used as it is (with a warning), not refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(SegmentLog::open(&dir, options(1 << 30)).is_ok());
}
