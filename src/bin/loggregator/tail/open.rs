//! A file open for reading: where it was opened, what of it was read and
//! confirmed, its first bytes (which tell a cut), and its records.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::records::Records;
use super::state::{HEAD_BYTES, Identity, Position};

/// How records are made, the same for every file.
pub struct Reading<'a> {
    /// Longer lines are cut (`--multiline-max-bytes`).
    pub max_line_bytes: usize,
    pub multiline: &'a crate::forward::MultilineArgs,
}

/// A file open for reading.
pub struct Open {
    pub file: File,
    pub device: u64,
    pub inode: u64,
    /// Its first bytes as read (up to [`HEAD_BYTES`]).
    pub head: Vec<u8>,
    /// Where the next read starts.
    pub read: u64,
    /// Up to where the agent confirmed, or will have once it answers for
    /// the batches asked for: the position recorded after them.
    pub confirmed: u64,
    pub records: Records,
}

impl Open {
    /// `file`, to be read from `offset`.
    pub fn at(file: File, offset: u64, reading: &Reading<'_>) -> std::io::Result<Open> {
        let metadata = file.metadata()?;
        let mut head = vec![0; offset.min(HEAD_BYTES as u64) as usize];
        file.read_exact_at(&mut head, 0)?;
        Ok(Open {
            file,
            device: metadata.dev(),
            inode: metadata.ino(),
            head,
            read: offset,
            confirmed: offset,
            records: Records::new(reading.max_line_bytes, reading.multiline.joiner(), offset),
        })
    }

    pub fn position(&self) -> Position {
        let head_len = self.head.len().min(self.confirmed as usize);
        Position {
            identity: Identity {
                device: self.device,
                inode: self.inode,
                head_len,
                head_sha256: openssl::sha::sha256(&self.head[..head_len]),
            },
            confirmed: self.confirmed,
        }
    }

    /// Whether the file was cut since it was read: shorter than what was
    /// read, or its first bytes are not those read.
    pub fn was_cut(&self) -> bool {
        let Ok(metadata) = self.file.metadata() else {
            return false;
        };
        let mut head = vec![0; self.head.len()];
        metadata.len() < self.read
            || self.file.read_exact_at(&mut head, 0).is_err()
            || head != self.head
    }
}
