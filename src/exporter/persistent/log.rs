//! The log of a persistent queue: segment files of checksummed records.
//!
//! Under `<queue.dir>/<exporter>/` live `lock` (held while an agent uses the queue),
//! `cursor` (where the prefix the backend acknowledged ends) and the segments
//! `00000000000000000001.seg`, … Each segment starts with [`MAGIC`], then records framed as
//! `[payload length u32][crc32 u32][spans u32][payload]` (little endian, the CRC over the
//! spans field and the payload; the payload is the batch's OTLP protobuf encoding).
//! A record leaves only once the backend acknowledged it (its segment is deleted when all
//! of its records have); on start-up every record after the cursor is replayed. A torn or
//! corrupted record ends its segment's replay: it is counted and logged, and what came
//! before it is delivered. Writing always starts a new segment, never after damage.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::Fsync;
use crate::exporter::Payload;
use crate::pipeline::NotQueued;

/// The first bytes of every segment file: the format and its version.
pub const MAGIC: &[u8; 8] = b"DAENAQ1\n";
/// Bytes of a record's frame before its payload.
const HEADER: u64 = 12;

/// The highest segment number the queue gives out: numbering starts at 1, so it is never
/// reached (one segment a second for 10^11 years). A segment file or cursor numbered past
/// it was not written by the queue, and is treated as damaged rather than counted on
/// (adding one to `u64::MAX` overflowed: found by the `queue_segment` fuzz target).
pub const MAX_SEGMENT: u64 = 1 << 62;
/// Batches kept in memory as well as on disk, so a backend that keeps up is sent batches
/// without reading them back; beyond this, records are read from their segment.
const HOT_BYTES: usize = 8 << 20;

/// Why a persistent queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or one of its files could not be created or read.
    #[error("persistent queue {}: {source}; check that the directory is writable by the agent", dir.display())]
    Io {
        /// The queue's directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Another process holds the queue.
    #[error("persistent queue {} is in use by another agent process; give each agent its own queue.dir", dir.display())]
    InUse {
        /// The queue's directory.
        dir: PathBuf,
    },
}

/// Where a record starts: its segment and its offset in it; ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordId {
    segment: u64,
    offset: u64,
}

/// A batch in the log, on its way to the backend.
pub struct Record {
    /// Where it is in the log.
    pub id: RecordId,
    /// Spans in the batch.
    pub spans: usize,
    len: u32,
    /// The batch itself when it is still in memory.
    hot: Option<Arc<Payload>>,
}

/// What a start-up found in the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records (and their spans) left by the previous run, to be delivered now.
    pub records: usize,
    /// Spans in those records.
    pub spans: usize,
    /// Torn or corrupted records skipped, with everything after them in their segment.
    pub damaged: usize,
}

/// Limits and policies of a log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Bytes of segment files, at most (an empty queue still takes one larger batch).
    pub max_bytes: u64,
    /// Spans waiting, at most.
    pub max_spans: usize,
    /// When writes are forced to the disk.
    pub fsync: Fsync,
    /// Whether a full log drops its oldest unsent records to make room.
    pub drop_oldest: bool,
}

#[derive(Debug)]
struct Segment {
    /// Bytes in the file.
    len: u64,
    /// Records in it not yet acknowledged by the backend.
    live: usize,
    /// Bytes of its done file: the records the backend acknowledged past the cursor.
    done_bytes: u64,
}

/// The log itself: blocking file I/O, used behind [`PersistentQueue`](super::PersistentQueue)'s lock.
pub struct SegmentLog {
    dir: PathBuf,
    options: LogOptions,
    segment_bytes: u64,
    _lock: File,
    cursor: File,
    /// The prefix of the log the backend has acknowledged, as last written to `cursor`.
    acked_to: RecordId,
    writer: File,
    writer_seq: u64,
    unsynced: bool,
    segments: BTreeMap<u64, Segment>,
    unread: VecDeque<Record>,
    in_flight: BTreeSet<RecordId>,
    disk_bytes: u64,
    spans: usize,
    hot_bytes: usize,
}

impl Record {
    /// The batch, when it is still in memory; taken once.
    pub fn take_hot(&mut self) -> Option<Arc<Payload>> {
        self.hot.take()
    }
}

impl SegmentLog {
    /// Opens (creating) the log in `dir`, finds what the previous run left, and starts
    /// a new segment to write to.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(Self, Recovery), OpenError> {
        let io_error = |source| OpenError::Io {
            dir: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(io_error)?;
        let lock = private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io_error)?;
        if lock.try_lock().is_err() {
            return Err(OpenError::InUse {
                dir: dir.to_owned(),
            });
        }
        let cursor = private_file()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("cursor"))
            .map_err(io_error)?;
        let acked_to = read_cursor(&cursor);

        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        let mut unread = VecDeque::new();
        let numbers = segment_numbers(dir).map_err(io_error)?;
        remove_orphan_done_files(dir, &numbers);
        for seq in numbers {
            let path = segment_path(dir, seq);
            let (done, done_bytes) = read_done(dir, seq);
            let scan = scan_segment(&path, seq, acked_to, &done).map_err(io_error)?;
            if let Some(damage) = &scan.damage {
                recovery.damaged += 1;
                tracing::warn!(
                    segment = %path.display(),
                    offset = damage.offset,
                    bytes_skipped = damage.skipped,
                    problem = damage.problem,
                    "Persistent queue: a damaged record ends this segment; the records before it are delivered, the rest of the segment is skipped"
                );
            }
            recovery.records += scan.records.len();
            recovery.spans += scan.records.iter().map(|r| r.spans).sum::<usize>();
            segments.insert(
                seq,
                Segment {
                    len: scan.len,
                    live: scan.records.len(),
                    done_bytes,
                },
            );
            unread.extend(scan.records);
        }
        // Past every segment and the cursor, so new records always sort after the
        // acknowledged prefix, even when every old segment was deleted.
        let writer_seq = segments
            .range(..=MAX_SEGMENT)
            .next_back()
            .map_or(0, |(seq, _)| *seq)
            .max(acked_to.segment)
            + 1;
        let mut log = Self {
            dir: dir.to_owned(),
            options,
            segment_bytes: (options.max_bytes / 8).clamp(64 << 10, 64 << 20),
            _lock: lock,
            cursor,
            acked_to,
            writer: create_segment(dir, writer_seq, options.fsync).map_err(io_error)?,
            writer_seq,
            unsynced: false,
            disk_bytes: segments.values().map(|s| s.len + s.done_bytes).sum::<u64>()
                + MAGIC.len() as u64,
            segments,
            unread,
            in_flight: BTreeSet::new(),
            spans: recovery.spans,
            hot_bytes: 0,
        };
        log.segments.insert(
            writer_seq,
            Segment {
                len: MAGIC.len() as u64,
                live: 0,
                done_bytes: 0,
            },
        );
        let empty: Vec<u64> = log
            .segments
            .iter()
            .filter(|(seq, s)| s.live == 0 && **seq != writer_seq)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in empty {
            log.delete_segment(seq);
        }
        Ok((log, recovery))
    }

    /// Spans waiting (not yet acknowledged by the backend).
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Appends a batch; returns the spans dropped to make room (`drop_oldest`).
    /// With `fsync: always` it is on the disk when this returns; with `batch`, after [`Self::sync`].
    pub fn append(&mut self, payload: &Arc<Payload>) -> Result<usize, NotQueued> {
        let body = payload.encoded();
        let len = u32::try_from(body.len()).map_err(|_| NotQueued::WriteFailed)?;
        let record_bytes = HEADER + u64::from(len);
        let spans = payload.spans();
        let mut dropped = 0;
        while !self.fits(record_bytes, spans) {
            if !self.options.drop_oldest {
                return Err(NotQueued::Full);
            }
            let Some(oldest) = self.unread.pop_front() else {
                return Err(NotQueued::Full);
            };
            dropped += oldest.spans;
            self.cool(&oldest);
            self.forget(&oldest);
        }
        let writer_len = self.segments.get(&self.writer_seq).map_or(0, |s| s.len);
        if writer_len > MAGIC.len() as u64 && writer_len + record_bytes > self.segment_bytes {
            self.roll().map_err(|e| self.write_failed(&e))?;
        }
        let offset = self.segments.get(&self.writer_seq).map_or(0, |s| s.len);
        let mut header = [0u8; HEADER as usize];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&checksum(spans as u32, &body).to_le_bytes());
        header[8..12].copy_from_slice(&(spans as u32).to_le_bytes());
        let written = self
            .writer
            .write_all(&header)
            .and_then(|()| self.writer.write_all(&body))
            .and_then(|()| match self.options.fsync {
                Fsync::Always => self.writer.sync_data(),
                Fsync::Batch | Fsync::Never => Ok(()),
            });
        if let Err(error) = written {
            // Cut the partial record off so the segment stays readable; if even that
            // fails, the replay's checksum finds it, and writing moves to a new segment.
            if self.writer.set_len(offset).is_err() {
                let _ = self.roll();
            }
            return Err(self.write_failed(&error));
        }
        self.unsynced = self.options.fsync == Fsync::Batch;
        if let Some(segment) = self.segments.get_mut(&self.writer_seq) {
            segment.len += record_bytes;
            segment.live += 1;
        }
        self.disk_bytes += record_bytes;
        self.spans += spans;
        let hot = (self.hot_bytes + body.len() <= HOT_BYTES).then(|| {
            self.hot_bytes += body.len();
            Arc::clone(payload)
        });
        self.unread.push_back(Record {
            id: RecordId {
                segment: self.writer_seq,
                offset,
            },
            spans,
            len,
            hot,
        });
        Ok(dropped)
    }

    /// Forces what was appended to the disk (`fsync: batch`).
    pub fn sync(&mut self) -> Result<(), NotQueued> {
        self.sync_writer().map_err(|e| self.write_failed(&e))
    }

    fn sync_writer(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.writer.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The oldest record not yet handed out; it stays in the log until [`Self::done`].
    pub fn take_next(&mut self) -> Option<Record> {
        let record = self.unread.pop_front()?;
        self.in_flight.insert(record.id);
        self.cool(&record);
        Some(record)
    }

    /// The backend has the record (or refused it for good): it leaves the log.
    pub fn done(&mut self, record: &Record) {
        if self.in_flight.remove(&record.id) {
            self.forget(record);
        }
    }

    fn fits(&self, bytes: u64, spans: usize) -> bool {
        let empty = self.unread.is_empty() && self.in_flight.is_empty();
        empty
            || (self.disk_bytes + bytes <= self.options.max_bytes
                && self.spans + spans <= self.options.max_spans)
    }

    /// Takes a record out of the accounting; deletes its segment once nothing in it is
    /// waiting and moves the acknowledged prefix forward.
    fn forget(&mut self, record: &Record) {
        self.spans -= record.spans;
        let seq = record.id.segment;
        let emptied = self.segments.get_mut(&seq).is_some_and(|s| {
            s.live -= 1;
            s.live == 0
        });
        if emptied && seq != self.writer_seq {
            self.delete_segment(seq);
        }
        let waiting = [
            self.in_flight.first().copied(),
            self.unread.front().map(|r| r.id),
        ];
        let prefix = waiting.into_iter().flatten().min().unwrap_or(RecordId {
            segment: self.writer_seq,
            offset: self.segments.get(&self.writer_seq).map_or(0, |s| s.len),
        });
        if prefix > self.acked_to {
            self.acked_to = prefix;
            // Without fsync: a lost cursor only means records sent twice after a crash.
            let _ = self.cursor.write_all_at(&encode_cursor(prefix), 0);
        }
        // Acknowledged while an older record still waits: the cursor cannot cover it, so
        // its segment's done file does, and a restart does not send it again.
        if record.id >= prefix {
            self.mark_done(record.id);
        }
    }

    /// Notes in the segment's done file that the record at `id` left the log.
    fn mark_done(&mut self, id: RecordId) {
        let Some(segment) = self.segments.get_mut(&id.segment) else {
            return;
        };
        let appended = private_file()
            .create(true)
            .append(true)
            .open(done_path(&self.dir, id.segment))
            .and_then(|mut file| file.write_all(&encode_done(id.offset)));
        match appended {
            Ok(()) => {
                segment.done_bytes += DONE_ENTRY as u64;
                self.disk_bytes += DONE_ENTRY as u64;
            }
            // Without it, the record is only sent twice if the agent crashes.
            Err(error) => {
                tracing::warn!(segment = id.segment, %error, "Persistent queue: could not note a delivered record");
            }
        }
    }

    /// A record leaving the unread list no longer counts against the memory it may hold.
    fn cool(&mut self, record: &Record) {
        if record.hot.is_some() {
            self.hot_bytes -= record.len as usize;
        }
    }

    fn delete_segment(&mut self, seq: u64) {
        if let Some(segment) = self.segments.remove(&seq) {
            self.disk_bytes -= segment.len + segment.done_bytes;
            if let Err(error) = std::fs::remove_file(segment_path(&self.dir, seq)) {
                tracing::warn!(segment = seq, %error, "Persistent queue: could not delete a delivered segment");
            }
            // After the segment: a crash in between leaves an orphan, removed at start-up.
            if segment.done_bytes > 0 {
                let _ = std::fs::remove_file(done_path(&self.dir, seq));
            }
        }
    }

    /// Starts a new segment, syncing the one it leaves behind per the fsync policy.
    fn roll(&mut self) -> io::Result<()> {
        self.sync_writer()?;
        let seq = self.writer_seq + 1;
        self.writer = create_segment(&self.dir, seq, self.options.fsync)?;
        let left = self.writer_seq;
        self.writer_seq = seq;
        self.segments.insert(
            seq,
            Segment {
                len: MAGIC.len() as u64,
                live: 0,
                done_bytes: 0,
            },
        );
        self.disk_bytes += MAGIC.len() as u64;
        if self.segments.get(&left).is_some_and(|s| s.live == 0) {
            self.delete_segment(left);
        }
        Ok(())
    }

    fn write_failed(&self, error: &io::Error) -> NotQueued {
        tracing::error!(dir = %self.dir.display(), %error, "Persistent queue: a write failed; the batch is refused and its clients are told to retry");
        NotQueued::WriteFailed
    }
}

/// Reads a record's payload back from its segment in `dir`, checking it against its checksum.
pub fn read_record(dir: &Path, record: &Record) -> io::Result<(usize, Bytes)> {
    let file = File::open(segment_path(dir, record.id.segment))?;
    let offset = record.id.offset;
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, offset)?;
    let mut body = vec![0u8; record.len as usize];
    file.read_exact_at(&mut body, offset + HEADER)?;
    let (stored_len, crc, spans) = parse_header(&header);
    if stored_len != record.len || crc != checksum(spans, &body) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the record's checksum does not match: the file changed on disk",
        ));
    }
    Ok((spans as usize, Bytes::from(body)))
}

/// The first damaged record of a segment.
struct Damage {
    offset: u64,
    skipped: u64,
    problem: &'static str,
}

struct Scan {
    len: u64,
    records: Vec<Record>,
    damage: Option<Damage>,
}

/// Reads a segment's records after `acked_to` that are not `done`, stopping at the first
/// damaged one.
fn scan_segment(
    path: &Path,
    seq: u64,
    acked_to: RecordId,
    done: &BTreeSet<u64>,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut scan = Scan {
        len,
        records: Vec::new(),
        damage: None,
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut magic = [0u8; MAGIC.len()];
    if seq > MAX_SEGMENT {
        scan.damage = Some(Damage {
            offset: 0,
            skipped: len,
            problem: "the segment's number is past any the queue gives out",
        });
        return Ok(scan);
    }
    // A segment cut off before its magic was written is empty, not damaged.
    if len == 0 {
        return Ok(scan);
    }
    let mut offset = MAGIC.len() as u64;
    let damage = |offset: u64, problem| {
        Some(Damage {
            offset,
            skipped: len - offset.min(len),
            problem,
        })
    };
    if len < offset || reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        scan.damage = damage(
            0,
            "the segment does not start with the queue's format marker",
        );
        return Ok(scan);
    }
    let mut body = Vec::new();
    while offset < len {
        let mut header = [0u8; HEADER as usize];
        if len - offset < HEADER || reader.read_exact(&mut header).is_err() {
            scan.damage = damage(offset, "torn record header at the end of the segment");
            break;
        }
        let (record_len, crc, spans) = parse_header(&header);
        if u64::from(record_len) > len - offset - HEADER {
            scan.damage = damage(
                offset,
                "torn record: its length runs past the end of the segment",
            );
            break;
        }
        body.resize(record_len as usize, 0);
        if reader.read_exact(&mut body).is_err() || crc != checksum(spans, &body) {
            scan.damage = damage(offset, "the record's checksum does not match its contents");
            break;
        }
        let id = RecordId {
            segment: seq,
            offset,
        };
        if id >= acked_to && !done.contains(&offset) {
            scan.records.push(Record {
                id,
                spans: spans as usize,
                len: record_len,
                hot: None,
            });
        }
        offset += HEADER + u64::from(record_len);
    }
    Ok(scan)
}

fn parse_header(header: &[u8; HEADER as usize]) -> (u32, u32, u32) {
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    (word(0), word(4), word(8))
}

fn checksum(spans: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&spans.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

fn encode_cursor(id: RecordId) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..8].copy_from_slice(&id.segment.to_le_bytes());
    out[8..16].copy_from_slice(&id.offset.to_le_bytes());
    let crc = crc32fast::hash(&out[0..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The acknowledged prefix the last run wrote; the start of the log if it is unreadable.
fn read_cursor(file: &File) -> RecordId {
    let mut buf = [0u8; 20];
    let start = RecordId {
        segment: 0,
        offset: 0,
    };
    if file.read_exact_at(&mut buf, 0).is_err() {
        return start;
    }
    let crc = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if crc != crc32fast::hash(&buf[0..16]) {
        return start;
    }
    let mut segment = [0u8; 8];
    let mut offset = [0u8; 8];
    segment.copy_from_slice(&buf[0..8]);
    offset.copy_from_slice(&buf[8..16]);
    let segment = u64::from_le_bytes(segment);
    if segment > MAX_SEGMENT {
        return start;
    }
    RecordId {
        segment,
        offset: u64::from_le_bytes(offset),
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Bytes of one done-file entry: the record's offset and a CRC of it, so a torn entry
/// is ignored.
const DONE_ENTRY: usize = 12;

fn done_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.done"))
}

fn encode_done(offset: u64) -> [u8; DONE_ENTRY] {
    let offset = offset.to_le_bytes();
    let mut entry = [0u8; DONE_ENTRY];
    entry[0..8].copy_from_slice(&offset);
    entry[8..12].copy_from_slice(&crc32fast::hash(&offset).to_le_bytes());
    entry
}

/// The offsets a segment's done file lists (none when it has none), and its size.
fn read_done(dir: &Path, seq: u64) -> (BTreeSet<u64>, u64) {
    let bytes = std::fs::read(done_path(dir, seq)).unwrap_or_default();
    let offsets = bytes
        .chunks_exact(DONE_ENTRY)
        .filter_map(|entry| {
            let (offset, crc) = entry.split_at(8);
            let offset: [u8; 8] = offset.try_into().ok()?;
            let crc: [u8; 4] = crc.try_into().ok()?;
            (crc32fast::hash(&offset) == u32::from_le_bytes(crc))
                .then(|| u64::from_le_bytes(offset))
        })
        .collect();
    (offsets, bytes.len() as u64)
}

/// Removes done files whose segment is gone (a crash between the two deletions).
fn remove_orphan_done_files(dir: &Path, segments: &[u64]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let orphan = name
            .to_str()
            .and_then(|n| n.strip_suffix(".done"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|seq| !segments.contains(&seq));
        if orphan {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The numbers of the segment files in `dir`, in order; other files are left alone.
fn segment_numbers(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(seq);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Options for a file of the queue: readable by the agent's user only (0600), as spans may
/// carry prompts and users' data.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `dir` (and its parents) for the agent's user only (0700); an existing one that
/// others can read or enter is kept, with a warning.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "The persistent queue's directory is open to other users; spans may hold prompts and users' data: chmod 700 it"
            );
        }
    }
    Ok(())
}

fn create_segment(dir: &Path, seq: u64, fsync: Fsync) -> io::Result<File> {
    let mut file = private_file()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    file.write_all(MAGIC)?;
    if fsync != Fsync::Never {
        // The new file's name must survive a power loss too.
        file.sync_data()?;
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
