//! A file's bytes to records, each with the offset just past its last
//! byte: what the state file may advance to once the agent confirms it.
//! Lines longer than the limit are cut; with `--multiline-start` lines
//! join into records (the joining of `pipe`, [`Multiline`]).

use std::time::Instant;

use crate::multiline::Multiline;

/// A record and the file offset just past it.
pub type Record = (Vec<u8>, u64);

/// Cuts one file's bytes into lines and joins them into records.
pub struct Records {
    max_line_bytes: usize,
    joiner: Option<Multiline>,
    /// Bytes of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// Where `partial` begins in the file.
    partial_start: u64,
    /// Just past the last line in the joiner's open record.
    joined_end: u64,
    pub lines: u64,
    /// Lines cut at `max_line_bytes`, and joined records ended by it.
    pub split: u64,
}

impl Records {
    /// Records of a file read from `offset`.
    pub fn new(max_line_bytes: usize, joiner: Option<Multiline>, offset: u64) -> Records {
        Records {
            max_line_bytes,
            joiner,
            partial: Vec::new(),
            partial_start: offset,
            joined_end: offset,
            lines: 0,
            split: 0,
        }
    }

    /// Takes the next bytes of the file, read at `now`; completed records
    /// go to `out`.
    pub fn push(&mut self, mut bytes: &[u8], now: Instant, out: &mut Vec<Record>) {
        while let Some(newline) = bytes.iter().position(|&byte| byte == b'\n') {
            self.partial.extend_from_slice(&bytes[..=newline]);
            bytes = &bytes[newline + 1..];
            self.end_line(now, out);
        }
        self.partial.extend_from_slice(bytes);
        // A line that never ends must not grow without bound: its first
        // part goes now, the rest begins the next line.
        while self.partial.len() > self.max_line_bytes {
            let rest = self.partial.split_off(self.max_line_bytes);
            let end = self.partial_start + self.max_line_bytes as u64;
            let piece = std::mem::replace(&mut self.partial, rest);
            self.split += 1;
            self.line(piece, end, now, out);
            self.partial_start = end;
        }
    }

    /// The end of the file: a last line without a newline is a line, and
    /// the open record is complete.
    pub fn finish(&mut self, now: Instant, out: &mut Vec<Record>) {
        if !self.partial.is_empty() {
            self.end_line(now, out);
        }
        if let Some(record) = self.joiner.as_mut().and_then(Multiline::finish) {
            out.push((record, self.joined_end));
        }
    }

    /// The open record, if no line came for `--multiline-timeout`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Record>) {
        if let Some(record) = self.joiner.as_mut().and_then(|j| j.expire(now)) {
            out.push((record, self.joined_end));
        }
    }

    /// When the open record is complete if no line comes before.
    pub fn deadline(&self) -> Option<Instant> {
        self.joiner.as_ref().and_then(Multiline::deadline)
    }

    /// Joined records ended early by the size limit.
    pub fn joined_split(&self) -> u64 {
        self.joiner.as_ref().map_or(0, |joiner| joiner.split)
    }

    fn end_line(&mut self, now: Instant, out: &mut Vec<Record>) {
        let start = self.partial_start;
        let end = start + self.partial.len() as u64;
        let mut line = std::mem::take(&mut self.partial);
        self.partial_start = end;
        for ending in [b'\n', b'\r'] {
            if line.last() == Some(&ending) {
                line.pop();
            }
        }
        // A long line whose newline came in the same read as its end is
        // cut here.
        let mut piece_end = start;
        while line.len() > self.max_line_bytes {
            let rest = line.split_off(self.max_line_bytes);
            piece_end += self.max_line_bytes as u64;
            self.split += 1;
            let piece = std::mem::replace(&mut line, rest);
            self.line(piece, piece_end, now, out);
        }
        self.line(line, end, now, out);
    }

    fn line(&mut self, line: Vec<u8>, end: u64, now: Instant, out: &mut Vec<Record>) {
        self.lines += 1;
        match &mut self.joiner {
            None => out.push((line, end)),
            Some(joiner) => {
                let ended = joiner.expire(now);
                let completed = joiner.push(line, now);
                for record in ended.into_iter().chain(completed) {
                    out.push((record, self.joined_end));
                }
                self.joined_end = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use regex::bytes::Regex;

    use super::*;

    fn records(records: &mut Records, chunks: &[&[u8]]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let now = Instant::now();
        for chunk in chunks {
            records.push(chunk, now, &mut out);
        }
        records.finish(now, &mut out);
        out.into_iter()
            .map(|(bytes, end)| (String::from_utf8_lossy(&bytes).into_owned(), end))
            .collect()
    }

    #[test]
    fn each_line_ends_at_the_offset_past_its_newline_whatever_the_reads() {
        let mut lines = Records::new(100, None, 10);
        assert_eq!(
            records(&mut lines, &[b"ab", b"c\r\nde", b"f\n\ng"]),
            [
                ("abc".into(), 15),
                ("def".into(), 19),
                ("".into(), 20),
                ("g".into(), 21)
            ]
        );
        assert_eq!((lines.lines, lines.split), (4, 0));
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_and_counted_whether_or_not_it_ended() {
        let mut lines = Records::new(4, None, 0);
        assert_eq!(
            records(&mut lines, &[b"0123456789\nabcdef"]),
            [
                ("0123".into(), 4),
                ("4567".into(), 8),
                ("89".into(), 11),
                ("abcd".into(), 15),
                ("ef".into(), 17)
            ]
        );
        assert_eq!(lines.split, 3);
    }

    #[test]
    fn a_joined_record_ends_past_its_last_line_and_an_open_one_is_not_out() {
        let joiner = Multiline::new(Regex::new("^S").unwrap(), Duration::from_secs(60), 100);
        let mut lines = Records::new(100, Some(joiner), 0);
        let mut out = Vec::new();
        lines.push(b"S1\n more\nS2\n", Instant::now(), &mut out);
        assert_eq!(out, [(b"S1\n more".to_vec(), 9)]);
        lines.finish(Instant::now(), &mut out);
        assert_eq!(out[1], (b"S2".to_vec(), 12));
    }
}
