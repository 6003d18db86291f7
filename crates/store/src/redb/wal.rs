//! The write-ahead log in front of redb (opt-in: `RedbOptions::write_ahead_log`).
//!
//! A redb commit that syncs rewrites several scattered B-tree pages before its one fsync
//! (4–5 ms on our disks); appending one record to a file and syncing it costs about 1 ms. So
//! each commit group is appended here and synced *before* its redb commit, which then runs
//! without a sync; callers are answered after both. Every `checkpoint_bytes` the writer makes
//! redb durable with one synced commit and empties the log. On open, records newer than redb's
//! durable revision are replayed, so every acknowledged write survives a crash.
//!
//! A record: `len: u32 LE`, `crc32(payload): u32 LE`, `payload`. A payload is one commit group:
//! revisions in order, each with the history entries it wrote. A torn or corrupt tail (a record
//! that never finished syncing, so was never acknowledged) ends replay.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::watch::Batch;
use crate::{KeyValue, Revision, StoreError, WatchEvent};

fn io(what: &str, error: std::io::Error) -> StoreError {
    StoreError::Backend(format!("write-ahead log: {what}: {error}"))
}

fn corrupt() -> StoreError {
    StoreError::Backend("write-ahead log: corrupt record".into())
}

/// One revision as replayed: its writes, as (key, new state) with `None` for a delete.
pub(super) struct Replayed {
    pub revision: Revision,
    pub writes: Vec<(String, Option<KeyValue>)>,
}

pub(super) struct Wal {
    file: File,
    bytes: u64,
}

impl Wal {
    /// Opens the log at `path` for appending; it must have been replayed and emptied.
    pub fn open(path: &Path) -> Result<Wal, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| io("open", error))?;
        let bytes = file.metadata().map_err(|error| io("stat", error))?.len();
        Ok(Wal { file, bytes })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends one commit group and syncs it.
    pub fn append(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        let payload = encode(batches);
        let mut record = Vec::with_capacity(payload.len() + 8);
        let len = u32::try_from(payload.len())
            .map_err(|_| StoreError::Backend("write-ahead log: group too large".into()))?;
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        self.file
            .write_all(&record)
            .map_err(|error| io("append", error))?;
        self.file.sync_data().map_err(|error| io("sync", error))?;
        self.bytes += record.len() as u64;
        Ok(())
    }

    /// Empties the log, once redb holds everything in it durably.
    pub fn truncate(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(|error| io("truncate", error))?;
        self.file.sync_all().map_err(|error| io("sync", error))?;
        self.bytes = 0;
        Ok(())
    }
}

/// Every complete, intact record of the log at `path`, in order (none when it is absent).
pub(super) fn replay(path: &Path) -> Result<Vec<Replayed>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io("read", error)),
    };
    let mut revisions = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 8 {
        let (len, tail) = take_u32(rest)?;
        let (crc, tail) = take_u32(tail)?;
        let len = len as usize;
        if tail.len() < len {
            break; // torn tail
        }
        let (payload, tail) = tail.split_at(len);
        if crc32fast::hash(payload) != crc {
            break; // torn tail
        }
        decode(payload, &mut revisions)?;
        rest = tail;
    }
    Ok(revisions)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode(batches: &[Batch]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(batches.len() as u32).to_le_bytes());
    for batch in batches {
        out.extend_from_slice(&batch.revision.to_le_bytes());
        out.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
        for event in &batch.events {
            match event {
                WatchEvent::Put { kv, .. } => {
                    out.push(1);
                    put_bytes(&mut out, kv.key.as_bytes());
                    out.extend_from_slice(&kv.create_revision.to_le_bytes());
                    out.extend_from_slice(&kv.version.to_le_bytes());
                    put_bytes(&mut out, &kv.value);
                }
                WatchEvent::Delete { prev, .. } => {
                    out.push(0);
                    put_bytes(&mut out, prev.key.as_bytes());
                }
                WatchEvent::Progress { .. } => {}
            }
        }
    }
    out
}

fn take_u32(bytes: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    if bytes.len() < 4 {
        return Err(corrupt());
    }
    let (head, tail) = bytes.split_at(4);
    let value = <[u8; 4]>::try_from(head).map_err(|_| corrupt())?;
    Ok((u32::from_le_bytes(value), tail))
}

fn take_i64(bytes: &[u8]) -> Result<(i64, &[u8]), StoreError> {
    if bytes.len() < 8 {
        return Err(corrupt());
    }
    let (head, tail) = bytes.split_at(8);
    let value = <[u8; 8]>::try_from(head).map_err(|_| corrupt())?;
    Ok((i64::from_le_bytes(value), tail))
}

fn take_bytes(bytes: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let (len, tail) = take_u32(bytes)?;
    let len = len as usize;
    if tail.len() < len {
        return Err(corrupt());
    }
    Ok(tail.split_at(len))
}

fn decode(mut bytes: &[u8], out: &mut Vec<Replayed>) -> Result<(), StoreError> {
    let batches;
    (batches, bytes) = take_u32(bytes)?;
    for _ in 0..batches {
        let (revision, rest) = take_i64(bytes)?;
        let (count, mut rest) = take_u32(rest)?;
        let mut writes = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (&kind, tail) = rest.split_first().ok_or_else(corrupt)?;
            let (key, tail) = take_bytes(tail)?;
            let key = std::str::from_utf8(key).map_err(|_| corrupt())?.to_owned();
            if kind == 0 {
                writes.push((key, None));
                rest = tail;
                continue;
            }
            let (create_revision, tail) = take_i64(tail)?;
            let (version, tail) = take_i64(tail)?;
            let (value, tail) = take_bytes(tail)?;
            writes.push((
                key.clone(),
                Some(KeyValue {
                    key,
                    value: bytes::Bytes::copy_from_slice(value),
                    create_revision,
                    mod_revision: revision,
                    version,
                }),
            ));
            rest = tail;
        }
        out.push(Replayed { revision, writes });
        bytes = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(revision: Revision, key: &str, value: &str) -> Batch {
        let kv = KeyValue {
            key: key.to_owned(),
            value: bytes::Bytes::from(value.to_owned()),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        };
        Batch {
            revision,
            events: vec![WatchEvent::Put { kv, prev: None }],
        }
    }

    #[test]
    fn replay_stops_at_a_torn_tail() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|error| io("tempdir", error))?;
        let path = dir.path().join("store.wal");
        let mut wal = Wal::open(&path)?;
        wal.append(&[batch(2, "/a", "1"), batch(3, "/b", "2")])?;
        wal.append(&[batch(4, "/a", "3")])?;
        let whole = std::fs::read(&path).map_err(|error| io("read", error))?;
        let replayed = replay(&path)?;
        let revisions: Vec<_> = replayed.iter().map(|r| r.revision).collect();
        assert_eq!(revisions, [2, 3, 4]);
        let Some((key, Some(kv))) = replayed[2].writes.first() else {
            panic!("a put was replayed as {:?}", replayed[2].writes.len());
        };
        assert_eq!((key.as_str(), kv.value.as_ref()), ("/a", b"3".as_slice()));

        // A record cut short, or with a flipped byte, ends the replay before it.
        std::fs::write(&path, &whole[..whole.len() - 3]).map_err(|error| io("write", error))?;
        assert_eq!(replay(&path)?.len(), 2);
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&path, &flipped).map_err(|error| io("write", error))?;
        assert_eq!(replay(&path)?.len(), 2);

        wal.truncate()?;
        assert!(replay(&path)?.is_empty());
        Ok(())
    }
}
