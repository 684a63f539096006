//! The uplink's buffer of batches the scheduler has not confirmed yet: in memory, or on disk so
//! that it survives an agent restart.
//!
//! Bounds: at most [`BufferLimits::batches`] batches and [`BufferLimits::bytes`] bytes of
//! encoded batches (defaults [`MAX_BUFFERED_BATCHES`], [`MAX_BUFFERED_BYTES`]). Only when a new
//! batch would exceed either is the oldest dropped, one at a time, each drop logged and
//! counted. Since the scheduler meters energy from counter deltas, a dropped batch loses time
//! resolution, not energy: the next delivered sample's delta covers the gap.
//!
//! Sequences: a batch gets its sequence when it is first sent, so the batches with a sequence
//! are always the oldest ones (a prefix of the buffer) and their sequences increase.
//!
//! On disk, each batch is one file `<index>.batch` in the buffer's directory: a 4-byte magic,
//! the payload length as a little-endian u32, and the protobuf `SampleBatch` (its `sequence`
//! is 0 until one is given). Every write goes to `<index>.tmp` and is renamed over the batch
//! file, so a crash leaves either the old or the new file, never half of one. Opening the
//! directory again loads the batches in index order; a file that fails its checks is removed,
//! logged and counted as lost. One file per batch keeps dropping the oldest and confirming a
//! stream's batches to deleting files, at one or two small writes a second.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use offpeak_proto::v1::SampleBatch;
use prost::Message as _;
use thiserror::Error;
use tracing::{info, warn};

/// The most batches kept while the scheduler is away: one hour at the default 1 s interval,
/// which covers a scheduler rollout or a node drain.
pub const MAX_BUFFERED_BATCHES: usize = 3_600;

/// The most bytes of encoded batches kept: a batch of 8 GPUs encodes to about 0.5 KiB, so an
/// hour of them is about 2 MiB; 16 MiB leaves room for nodes with more devices and curves while
/// staying within the agent's 20 MiB memory budget even held in memory.
pub const MAX_BUFFERED_BYTES: u64 = 16 * 1024 * 1024;

/// Marks a batch file of this format ("offpeak batch, version 1").
const MAGIC: [u8; 4] = *b"OPB1";
const HEADER_LEN: usize = 8;
const BATCH_SUFFIX: &str = "batch";
const TMP_SUFFIX: &str = "tmp";

/// Failure of a buffer operation; each variant is named after the operation that failed.
#[derive(Debug, Error)]
pub enum BufferError {
    #[error("opening the batch buffer {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing buffered batch {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading buffered batch {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("removing buffered batch {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How much the buffer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    pub batches: usize,
    pub bytes: u64,
}

impl Default for BufferLimits {
    fn default() -> Self {
        Self {
            batches: MAX_BUFFERED_BATCHES,
            bytes: MAX_BUFFERED_BYTES,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Position in the buffer's life: names the file, orders the batches.
    index: u64,
    sequence: Option<u64>,
    bytes: u64,
    /// The batch itself in memory mode; on disk it is read back when replayed.
    batch: Option<SampleBatch>,
}

/// What opening an on-disk buffer found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Batches loaded, to be replayed.
    pub batches: usize,
    /// Files that failed their checks and were removed.
    pub corrupt: u64,
    /// Batches dropped because the limits are now lower than what was on disk.
    pub dropped: u64,
}

/// Buffered batches, oldest first.
#[derive(Debug)]
pub struct BatchBuffer {
    entries: VecDeque<Entry>,
    dir: Option<PathBuf>,
    limits: BufferLimits,
    next_index: u64,
    bytes: u64,
    dropped: u64,
}

impl BatchBuffer {
    /// A buffer that lives and dies with the process.
    pub fn in_memory(limits: BufferLimits) -> Self {
        Self {
            entries: VecDeque::new(),
            dir: None,
            limits,
            next_index: 0,
            bytes: 0,
            dropped: 0,
        }
    }

    /// A buffer in `dir` (created if missing), with what an earlier run left there.
    pub fn open(
        dir: impl Into<PathBuf>,
        limits: BufferLimits,
    ) -> Result<(Self, Loaded), BufferError> {
        let dir = dir.into();
        let open_err = |source| BufferError::Open {
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(open_err)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(open_err)? {
            let path = entry.map_err(open_err)?.path();
            match path.extension().and_then(|e| e.to_str()) {
                // A write that a crash interrupted before its rename: the batch file it was
                // replacing (if any) is intact.
                Some(TMP_SUFFIX) => remove(&path)?,
                Some(BATCH_SUFFIX) => {
                    let index = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.parse::<u64>().ok());
                    match index {
                        Some(index) => found.push((index, path)),
                        None => warn!(path = %path.display(), "not a batch file name; left alone"),
                    }
                }
                _ => {}
            }
        }
        found.sort();
        let mut buffer = Self {
            dir: Some(dir),
            ..Self::in_memory(limits)
        };
        let mut loaded = Loaded::default();
        for (index, path) in found {
            match read_batch_file(&path) {
                Ok((batch, bytes)) => {
                    buffer.next_index = index + 1;
                    let sequence = (batch.sequence > 0).then_some(batch.sequence);
                    buffer.bytes += bytes;
                    buffer.entries.push_back(Entry {
                        index,
                        sequence,
                        bytes,
                        batch: None,
                    });
                }
                Err(e) => {
                    warn!(error = %e, "buffered batch unreadable; removed and counted as lost");
                    loaded.corrupt += 1;
                    remove(&path)?;
                }
            }
        }
        buffer.dropped = loaded.corrupt;
        while buffer.over_limits(0) && !buffer.entries.is_empty() {
            buffer.drop_oldest()?;
            loaded.dropped += 1;
        }
        loaded.batches = buffer.entries.len();
        if loaded.batches > 0 || loaded.corrupt > 0 {
            info!(
                ?loaded,
                "batch buffer reopened; its batches will be replayed"
            );
        }
        Ok((buffer, loaded))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of encoded batches held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Batches dropped (full buffer) or lost (unreadable files) so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The highest sequence given to a buffered batch.
    pub fn last_sequence(&self) -> Option<u64> {
        self.entries.iter().rev().find_map(|e| e.sequence)
    }

    /// The sequence of the batch at `position`, if it has one.
    pub fn sequence(&self, position: usize) -> Option<u64> {
        self.entries.get(position).and_then(|e| e.sequence)
    }

    fn over_limits(&self, extra_bytes: u64) -> bool {
        self.entries.len() > self.limits.batches.max(1)
            || self.bytes.saturating_add(extra_bytes) > self.limits.bytes
    }

    fn drop_oldest(&mut self) -> Result<(), BufferError> {
        if let Some(oldest) = self.entries.pop_front() {
            self.bytes -= oldest.bytes;
            self.dropped += 1;
            if let Some(dir) = &self.dir {
                remove(&batch_path(dir, oldest.index))?;
            }
        }
        Ok(())
    }

    /// Appends a batch (its `sequence` set, or 0 for none yet), first dropping the oldest
    /// while the new one would not fit. Returns how many were dropped.
    pub fn push(&mut self, batch: SampleBatch) -> Result<u64, BufferError> {
        let bytes = batch.encoded_len() as u64;
        let mut dropped = 0;
        while !self.entries.is_empty()
            && (self.entries.len() >= self.limits.batches.max(1)
                || self.bytes + bytes > self.limits.bytes)
        {
            self.drop_oldest()?;
            dropped += 1;
        }
        if dropped > 0 {
            warn!(
                dropped,
                dropped_total = self.dropped,
                limit_batches = self.limits.batches,
                limit_bytes = self.limits.bytes,
                "buffer full: dropped the oldest batches (their energy is still in later counters)"
            );
        }
        let index = self.next_index;
        self.next_index += 1;
        let sequence = (batch.sequence > 0).then_some(batch.sequence);
        let batch = match &self.dir {
            Some(dir) => {
                write_batch_file(dir, index, &batch)?;
                None
            }
            None => Some(batch),
        };
        self.bytes += bytes;
        self.entries.push_back(Entry {
            index,
            sequence,
            bytes,
            batch,
        });
        Ok(dropped)
    }

    /// Gives the batch at `position` its sequence (kept on disk, so a restarted agent replays
    /// it under the same number and the scheduler recognises it).
    pub fn assign(&mut self, position: usize, sequence: u64) -> Result<(), BufferError> {
        let dir = self.dir.clone();
        let Some(entry) = self.entries.get_mut(position) else {
            return Ok(());
        };
        entry.sequence = Some(sequence);
        match (&mut entry.batch, dir) {
            (Some(batch), _) => batch.sequence = sequence,
            (None, Some(dir)) => {
                let path = batch_path(&dir, entry.index);
                let (mut batch, _) = read_batch_file(&path)?;
                batch.sequence = sequence;
                write_batch_file(&dir, entry.index, &batch)?;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The batch at `position`, with its sequence (0 for none yet).
    pub fn get(&self, position: usize) -> Result<Option<SampleBatch>, BufferError> {
        let Some(entry) = self.entries.get(position) else {
            return Ok(None);
        };
        match (&entry.batch, &self.dir) {
            (Some(batch), _) => Ok(Some(batch.clone())),
            (None, Some(dir)) => {
                read_batch_file(&batch_path(dir, entry.index)).map(|(b, _)| Some(b))
            }
            (None, None) => Ok(None),
        }
    }

    /// Removes the oldest batches whose sequence is at most `last`: the scheduler confirmed
    /// them. Returns how many.
    pub fn confirm_through(&mut self, last: u64) -> Result<u64, BufferError> {
        let mut confirmed = 0;
        while let Some(front) = self.entries.front() {
            match front.sequence {
                Some(s) if s <= last => {}
                _ => break,
            }
            if let Some(entry) = self.entries.pop_front() {
                self.bytes -= entry.bytes;
                if let Some(dir) = &self.dir {
                    remove(&batch_path(dir, entry.index))?;
                }
                confirmed += 1;
            }
        }
        Ok(confirmed)
    }
}

fn batch_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.{BATCH_SUFFIX}"))
}

fn remove(path: &Path) -> Result<(), BufferError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BufferError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_batch_file(dir: &Path, index: u64, batch: &SampleBatch) -> Result<(), BufferError> {
    let path = batch_path(dir, index);
    let tmp = path.with_extension(TMP_SUFFIX);
    let payload = batch.encode_to_vec();
    let len = u32::try_from(payload.len()).map_err(|_| BufferError::Write {
        path: path.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "batch larger than 4 GiB"),
    })?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&payload);
    let write_err = |source| BufferError::Write {
        path: path.clone(),
        source,
    };
    fs::write(&tmp, &bytes).map_err(write_err)?;
    fs::rename(&tmp, &path).map_err(write_err)
}

/// Reads and checks one batch file; returns the batch and its encoded size.
fn read_batch_file(path: &Path) -> Result<(SampleBatch, u64), BufferError> {
    let fail = |reason: String| BufferError::Read {
        path: path.to_owned(),
        reason,
    };
    let bytes = fs::read(path).map_err(|e| fail(e.to_string()))?;
    let (header, payload) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or_else(|| fail(format!("{} bytes, shorter than the header", bytes.len())))?;
    if header[..4] != MAGIC {
        return Err(fail("not a batch file (bad magic)".into()));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[4..]);
    let len = u32::from_le_bytes(len) as usize;
    if len != payload.len() {
        return Err(fail(format!(
            "header says {len} bytes of batch, the file has {}",
            payload.len()
        )));
    }
    let batch = SampleBatch::decode(payload).map_err(|e| fail(format!("decoding: {e}")))?;
    Ok((batch, payload.len() as u64))
}

#[cfg(test)]
mod tests {
    use offpeak_proto::v1::Sample;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn batch(energy_mj: u64) -> SampleBatch {
        SampleBatch {
            samples: vec![Sample {
                device_uuid: "GPU-0".into(),
                energy_mj,
                power_watts: 100.0,
                ..Sample::default()
            }],
            ..SampleBatch::default()
        }
    }

    fn energies(buffer: &BatchBuffer) -> Result<Vec<u64>, BufferError> {
        (0..buffer.len())
            .map(|i| Ok(buffer.get(i)?.map_or(0, |b| b.samples[0].energy_mj)))
            .collect()
    }

    #[test]
    fn full_buffer_drops_only_the_oldest_and_counts_them() -> TestResult {
        let limits = BufferLimits {
            batches: 3,
            bytes: u64::MAX,
        };
        let mut buffer = BatchBuffer::in_memory(limits);
        for e in 1..=3 {
            assert_eq!(buffer.push(batch(e))?, 0);
        }
        assert_eq!(buffer.push(batch(4))?, 1);
        assert_eq!(buffer.push(batch(5))?, 1);
        assert_eq!(energies(&buffer)?, vec![3, 4, 5]);
        assert_eq!(buffer.dropped(), 2);
        Ok(())
    }

    #[test]
    fn byte_limit_is_kept_too() -> TestResult {
        let one = batch(1).encoded_len() as u64;
        let limits = BufferLimits {
            batches: 100,
            bytes: 2 * one,
        };
        let mut buffer = BatchBuffer::in_memory(limits);
        for e in 1..=4 {
            buffer.push(batch(e))?;
        }
        assert_eq!(energies(&buffer)?, vec![3, 4]);
        assert_eq!(buffer.bytes(), 2 * one);
        Ok(())
    }

    #[test]
    fn disk_buffer_survives_reopening_with_sequences_and_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let limits = BufferLimits::default();
        {
            let (mut buffer, loaded) = BatchBuffer::open(dir.path(), limits)?;
            assert_eq!(loaded, Loaded::default());
            for e in 1..=12 {
                buffer.push(batch(e))?;
            }
            buffer.assign(0, 7)?;
            buffer.assign(1, 8)?;
            buffer.assign(2, 9)?;
            assert_eq!(buffer.confirm_through(7)?, 1);
        }
        let (buffer, loaded) = BatchBuffer::open(dir.path(), limits)?;
        assert_eq!(loaded.batches, 11);
        // Index order, not file-system order: 10 and 11 come after 9.
        assert_eq!(energies(&buffer)?, (2..=12).collect::<Vec<_>>());
        assert_eq!(buffer.sequence(0), Some(8));
        assert_eq!(buffer.sequence(1), Some(9));
        assert_eq!(buffer.sequence(2), None);
        assert_eq!(buffer.last_sequence(), Some(9));
        assert_eq!(buffer.get(0)?.map(|b| b.sequence), Some(8));
        Ok(())
    }

    #[test]
    fn corrupt_and_half_written_files_are_removed_and_counted() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (mut buffer, _) = BatchBuffer::open(dir.path(), BufferLimits::default())?;
            for e in 1..=3 {
                buffer.push(batch(e))?;
            }
        }
        fs::write(batch_path(dir.path(), 1), b"OPB1\xff\xff\xff\xffgarbage")?;
        fs::write(dir.path().join("00000000000000000009.tmp"), b"half")?;
        let (buffer, loaded) = BatchBuffer::open(dir.path(), BufferLimits::default())?;
        assert_eq!(loaded.corrupt, 1);
        assert_eq!(energies(&buffer)?, vec![1, 3]);
        assert_eq!(buffer.dropped(), 1);
        let left: Vec<_> = fs::read_dir(dir.path())?.collect();
        assert_eq!(left.len(), 2);
        Ok(())
    }

    #[test]
    fn reopening_with_lower_limits_drops_the_oldest() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (mut buffer, _) = BatchBuffer::open(dir.path(), BufferLimits::default())?;
            for e in 1..=5 {
                buffer.push(batch(e))?;
            }
        }
        let limits = BufferLimits {
            batches: 2,
            bytes: u64::MAX,
        };
        let (buffer, loaded) = BatchBuffer::open(dir.path(), limits)?;
        assert_eq!((loaded.batches, loaded.dropped), (2, 3));
        assert_eq!(energies(&buffer)?, vec![4, 5]);
        Ok(())
    }
}
