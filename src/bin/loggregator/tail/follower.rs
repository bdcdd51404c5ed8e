//! One path followed as `tail -F` does: the file it names is read as it
//! grows; when the name moves to another file (rotation by rename, or
//! deletion) the old file is read to its end first, then the new one
//! from its start; when the file is cut (copytruncate), what was written
//! between the last read and the copy is read from `<name>.1`.
//!
//! A cut is noticed by the first bytes (up to [`HEAD_BYTES`]) changing,
//! not only by the size falling below what was read: BOSH cuts every few
//! minutes, and the file can grow past the old offset before the next
//! look.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::PROGRAM;
use super::deliver::{Delivery, Stopped};
use super::open::{Open, Reading};
use super::records::Record;
use super::state::{HEAD_BYTES, Position};

/// Bytes read at a time.
const READ_BYTES: usize = 256 * 1024;
/// A batch is sent once it holds this many records, or this many
/// encoded bytes: large batches mean fewer round trips and state file
/// writes, and the client refuses a batch over its 1 MiB. A line is at
/// most 1,000,000 bytes (`--multiline-max-bytes`), so one alone fits.
const BATCH_RECORDS: usize = 10_000;
const BATCH_BYTES: usize = 768 * 1024;

/// The counts of a finished file, kept for the exit line.
#[derive(Debug, Default)]
pub struct Counted {
    pub lines: u64,
    pub split: u64,
}

pub struct Follower {
    pub path: PathBuf,
    stderr: bool,
    current: Option<Open>,
    /// The file the name left, read to its end before `current`.
    draining: Option<Open>,
    /// Why the path could not be opened, told once until it opens.
    told: Option<ErrorKind>,
    batch: Vec<Record>,
    /// What `batch` encodes to, about (see `overhead`).
    batch_bytes: usize,
    /// What a record adds to a batch beyond its bytes, at most.
    overhead: usize,
    pub counted: Counted,
}

impl Follower {
    /// Follows `path`, resuming where the state file left it; a file it
    /// does not know starts at its end, or its start with `from_start`.
    pub fn start(
        path: PathBuf,
        stderr: bool,
        from_start: bool,
        reading: &Reading<'_>,
        delivery: &mut Delivery,
    ) -> Follower {
        let overhead = delivery.overhead(&path, stderr);
        let mut follower = Follower::new(path, stderr, overhead);
        let known = delivery.position(&follower.path).cloned();
        let Some(file) = follower.open() else {
            // Renamed away while we were down, its successor not there
            // yet: the rest of it is still read.
            if let Some(position) = known {
                follower.draining = follower.rotated_copy(&position, reading);
            }
            return follower;
        };
        let opened = match known {
            Some(position) => follower.resume(file, &position, reading),
            None => {
                let offset = if from_start {
                    Ok(0)
                } else {
                    file.metadata().map(|m| m.len())
                };
                offset.and_then(|offset| Open::at(file, offset, reading))
            }
        };
        follower.took(opened, delivery);
        follower
    }

    fn new(path: PathBuf, stderr: bool, overhead: usize) -> Follower {
        Follower {
            path,
            stderr,
            overhead,
            current: None,
            draining: None,
            told: None,
            batch: Vec::new(),
            batch_bytes: 0,
            counted: Counted::default(),
        }
    }

    /// The file the state file named, or what became of it: the same
    /// file, resumed; its rotated copy `<name>.1`, read from the offset
    /// before the new file; else the file is new since and read whole.
    fn resume(
        &mut self,
        file: File,
        position: &Position,
        reading: &Reading<'_>,
    ) -> std::io::Result<Open> {
        let long_enough =
            |file: &File| file.metadata().is_ok_and(|m| m.len() >= position.confirmed);
        if position.identity.is(&file) && long_enough(&file) {
            return Open::at(file, position.confirmed, reading);
        }
        self.draining = self.rotated_copy(position, reading);
        if self.draining.is_none() {
            eprintln!(
                "{PROGRAM}: {} is not the file the state file recorded; reading it from its start",
                self.path.display()
            );
        }
        Open::at(file, 0, reading)
    }

    /// `<name>.1` opened at the recorded offset, if it begins as the
    /// recorded file did and is long enough to be it or its copy.
    fn rotated_copy(&self, position: &Position, reading: &Reading<'_>) -> Option<Open> {
        let copy = self.copy(|copy| {
            position.identity.head_matches(copy)
                && copy.metadata().is_ok_and(|m| m.len() >= position.confirmed)
        })?;
        eprintln!(
            "{PROGRAM}: {} was rotated while we were away; reading {} from offset {} first",
            self.path.display(),
            copy_path(&self.path).display(),
            position.confirmed
        );
        let mut old = Open::at(copy, position.confirmed, reading).ok()?;
        // Recorded as the file it was copied from, so that a restart
        // before its end finds it the same way.
        (old.device, old.inode) = (position.identity.device, position.identity.inode);
        Some(old)
    }

    /// `<name>.1` if it is there and `is_ours` says it is our file's copy.
    fn copy(&self, is_ours: impl Fn(&File) -> bool) -> Option<File> {
        File::open(copy_path(&self.path)).ok().filter(is_ours)
    }

    /// Opens the path, telling once why it cannot.
    fn open(&mut self) -> Option<File> {
        match File::open(&self.path) {
            Ok(file) => {
                if self.told.take().is_some() {
                    eprintln!(
                        "{PROGRAM}: {} is there now; following it",
                        self.path.display()
                    );
                }
                Some(file)
            }
            Err(error) => {
                if self.told != Some(error.kind()) {
                    eprintln!(
                        "{PROGRAM}: {}: {error}; following the others, and this one when it can be read",
                        self.path.display()
                    );
                    self.told = Some(error.kind());
                }
                None
            }
        }
    }

    fn took(&mut self, opened: std::io::Result<Open>, delivery: &mut Delivery) {
        match opened {
            Ok(open) => {
                let recorded = self.draining.as_ref().unwrap_or(&open).position();
                // A stop asked meanwhile ends the loop at its next turn.
                let _ = delivery.confirm(&self.path, recorded);
                self.current = Some(open);
            }
            Err(error) => eprintln!("{PROGRAM}: {}: {error}", self.path.display()),
        }
    }

    /// Reads what is new, sends it, and looks for rotation; returns
    /// whether anything was read.
    pub fn poll(
        &mut self,
        reading: &Reading<'_>,
        delivery: &mut Delivery,
    ) -> Result<bool, Stopped> {
        let mut progress = false;
        if self.draining.is_none() {
            self.notice_rotation(delivery)?;
        }
        if let Some(mut old) = self.draining.take() {
            self.read(&mut old, delivery)?;
            self.end_of_file(&mut old, delivery)?;
            progress = true;
            if let Some(new) = &self.current {
                delivery.confirm(&self.path, new.position())?;
            }
        }
        if self.current.is_none() {
            if let Some(file) = self.open() {
                self.took(Open::at(file, 0, reading), delivery);
            }
        }
        if let Some(mut open) = self.current.take() {
            let read = self.read(&mut open, delivery);
            let expired = read.and_then(|read| {
                open.records.expire(Instant::now(), &mut self.batch);
                self.send(&mut open, delivery).map(|()| read)
            });
            self.current = Some(open);
            progress |= expired?;
        }
        Ok(progress)
    }

    /// When the open record is complete if no line comes before.
    pub fn deadline(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .and_then(|open| open.records.deadline())
    }

    /// Moves `current` to `draining` if the name now names another file
    /// or none; reads a cut file's lost part from its copy.
    fn notice_rotation(&mut self, delivery: &mut Delivery) -> Result<(), Stopped> {
        let Some(open) = &self.current else {
            return Ok(());
        };
        match std::fs::metadata(&self.path) {
            Ok(named) if (named.dev(), named.ino()) == (open.device, open.inode) => {
                if open.was_cut() {
                    return self.cut(delivery);
                }
            }
            Ok(_) => self.draining = self.current.take(),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                eprintln!(
                    "{PROGRAM}: {} was deleted or moved; reading it to its end, then following the name",
                    self.path.display()
                );
                self.draining = self.current.take();
            }
            // Unreadable for now: keep reading the file we have.
            Err(_) => {}
        }
        Ok(())
    }

    /// The file was cut: what followed our last read is in `<name>.1` if
    /// the cut was a copytruncate; then the file again from its start.
    fn cut(&mut self, delivery: &mut Delivery) -> Result<(), Stopped> {
        let mut old = self.current.take().expect("a file to have been cut");
        let copied = self.copy(|copy| {
            let mut head = vec![0; old.head.len()];
            copy.read_exact_at(&mut head, 0).is_ok()
                && head == old.head
                && copy.metadata().is_ok_and(|m| m.len() >= old.read)
        });
        match copied {
            Some(copy) => {
                old.file = copy;
                self.draining = Some(old);
            }
            None => {
                eprintln!(
                    "{PROGRAM}: {} was truncated and {} is not its copy: what was written \
                     between the last read and the truncation is lost",
                    self.path.display(),
                    copy_path(&self.path).display()
                );
                self.end_of_file(&mut old, delivery)?;
            }
        }
        Ok(())
    }

    /// Reads `open` to its current end, sending full batches.
    fn read(&mut self, open: &mut Open, delivery: &mut Delivery) -> Result<bool, Stopped> {
        let mut buffer = vec![0; READ_BYTES];
        let mut progress = false;
        loop {
            let count = match open.file.read_at(&mut buffer, open.read) {
                Ok(0) => return Ok(progress),
                Ok(count) => count,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    eprintln!("{PROGRAM}: reading {}: {error}", self.path.display());
                    return Ok(progress);
                }
            };
            // Cut between the look for rotation and this read: these
            // bytes are the new content at the old offset. The next look
            // handles the cut.
            if open.was_cut() {
                return Ok(progress);
            }
            progress = true;
            let bytes = &buffer[..count];
            if open.head.len() < HEAD_BYTES && open.read < HEAD_BYTES as u64 {
                let wanted = (HEAD_BYTES - open.head.len()).min(count);
                open.head.extend_from_slice(&bytes[..wanted]);
            }
            open.read += count as u64;
            let before = self.batch.len();
            open.records.push(bytes, Instant::now(), &mut self.batch);
            self.batch_bytes += self.batch[before..]
                .iter()
                .map(|(payload, _)| payload.len() + self.overhead)
                .sum::<usize>();
            // One read can hold many batches of short lines.
            if self.batch.len() >= BATCH_RECORDS || self.batch_bytes >= BATCH_BYTES {
                self.send_batches(open, delivery, true)?;
            }
        }
    }

    /// The end of a file the name left: its last line and record go too.
    fn end_of_file(&mut self, open: &mut Open, delivery: &mut Delivery) -> Result<(), Stopped> {
        open.records.finish(Instant::now(), &mut self.batch);
        self.send(open, delivery)?;
        self.counted.lines += open.records.lines;
        self.counted.split += open.records.split + open.records.joined_split();
        Ok(())
    }

    /// Sends the batch; once the agent confirms it, the state file moves
    /// past it.
    fn send(&mut self, open: &mut Open, delivery: &mut Delivery) -> Result<(), Stopped> {
        self.send_batches(open, delivery, false)
    }

    /// Sends the records read in batches within the caps: all of them, or
    /// with `only_full` the full batches, the rest waiting for more.
    fn send_batches(
        &mut self,
        open: &mut Open,
        delivery: &mut Delivery,
        only_full: bool,
    ) -> Result<(), Stopped> {
        while !self.batch.is_empty() {
            let (mut bytes, mut fit) = (0, 0);
            for (payload, _) in &self.batch {
                let size = payload.len() + self.overhead;
                if fit == BATCH_RECORDS || (fit > 0 && bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                fit += 1;
            }
            let full = fit < self.batch.len() || fit == BATCH_RECORDS || bytes >= BATCH_BYTES;
            if only_full && !full {
                self.batch_bytes = bytes;
                return Ok(());
            }
            open.confirmed = self.batch[fit - 1].1;
            delivery.send(&self.path, self.stderr, &self.batch[..fit], open.position())?;
            self.batch.drain(..fit);
        }
        self.batch_bytes = 0;
        Ok(())
    }

    /// Lines and splits so far, the open file's included.
    pub fn counts(&self) -> Counted {
        let open = self.current.as_ref().map(|open| &open.records);
        Counted {
            lines: self.counted.lines + open.map_or(0, |r| r.lines),
            split: self.counted.split + open.map_or(0, |r| r.split + r.joined_split()),
        }
    }
}

/// Where logrotate puts the copy of a rotated file.
fn copy_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}
