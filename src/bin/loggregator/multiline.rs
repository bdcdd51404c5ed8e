//! Lines joined into records: a line that matches the start pattern begins
//! a record, every other line joins the one before it (a stack trace stays
//! one log), as log shippers such as Filebeat and Fluent Bit do. Time is
//! passed in, so the joining is tested without waiting.

use std::time::{Duration, Instant};

use regex::bytes::Regex;

/// Joins lines into records of at most `max_bytes`.
pub struct Multiline {
    start: Regex,
    timeout: Duration,
    max_bytes: usize,
    open: Option<Open>,
    /// Records ended because the next line would have made them larger
    /// than `max_bytes`; that line began the next record.
    pub split: u64,
}

/// The record being joined.
struct Open {
    bytes: Vec<u8>,
    /// When its last line came: it is complete once `timeout` has passed
    /// with no next line.
    last_line: Instant,
}

impl Multiline {
    pub fn new(start: Regex, timeout: Duration, max_bytes: usize) -> Multiline {
        Multiline {
            start,
            timeout,
            max_bytes,
            open: None,
            split: 0,
        }
    }

    /// Takes the next line (without its line ending), read at `now`; returns
    /// the record it completed, if it began a new one. The first line
    /// begins a record whatever it is, and a line longer than `max_bytes`
    /// is a record of its own, not cut.
    pub fn push(&mut self, line: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        let begin = |line| Open {
            bytes: line,
            last_line: now,
        };
        let Some(mut open) = self.open.take() else {
            self.open = Some(begin(line));
            return None;
        };
        if self.start.is_match(&line) {
            self.open = Some(begin(line));
            return Some(open.bytes);
        }
        if open.bytes.len() + 1 + line.len() > self.max_bytes {
            self.split += 1;
            self.open = Some(begin(line));
            return Some(open.bytes);
        }
        open.bytes.push(b'\n');
        open.bytes.extend_from_slice(&line);
        open.last_line = now;
        self.open = Some(open);
        None
    }

    /// When the open record is complete if no line comes before.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|open| {
            open.last_line
                .checked_add(self.timeout)
                .unwrap_or(open.last_line)
        })
    }

    /// The open record, if its time is up at `now`.
    pub fn expire(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.deadline().is_some_and(|deadline| deadline <= now) {
            return self.finish();
        }
        None
    }

    /// The open record, at the end of input.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.open.take().map(|open| open.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn joiner(start: &str, max_bytes: usize) -> Multiline {
        Multiline::new(Regex::new(start).unwrap(), TIMEOUT, max_bytes)
    }

    /// Every record, pushing each line at `at`, then the end of input.
    fn records(joiner: &mut Multiline, lines: &[&str], at: Instant) -> Vec<String> {
        let mut records: Vec<Vec<u8>> = lines
            .iter()
            .filter_map(|line| joiner.push(line.as_bytes().to_vec(), at))
            .collect();
        records.extend(joiner.finish());
        records
            .into_iter()
            .map(|record| String::from_utf8(record).unwrap())
            .collect()
    }

    #[test]
    fn a_java_stack_trace_is_one_record_between_timestamped_lines() {
        let lines = [
            "2024-05-01 12:00:00 INFO started",
            "2024-05-01 12:00:01 ERROR request failed",
            "java.lang.IllegalStateException: boom",
            "\tat com.example.Orders.place(Orders.java:42)",
            "Caused by: java.lang.NullPointerException",
            "\t... 3 more",
            "2024-05-01 12:00:02 INFO next",
        ];
        let mut joiner = joiner(r"^\d{4}-\d{2}-\d{2} ", 1 << 20);
        assert_eq!(
            records(&mut joiner, &lines, Instant::now()),
            [
                lines[0].to_string(),
                lines[1..6].join("\n"),
                lines[6].to_string()
            ]
        );
        assert_eq!(joiner.split, 0);
    }

    #[test]
    fn lines_before_any_start_make_one_record() {
        let mut joiner = joiner("^START", 1 << 20);
        assert_eq!(
            records(&mut joiner, &["a", "b", "START c", "d"], Instant::now()),
            ["a\nb", "START c\nd"]
        );
    }

    #[test]
    fn a_record_with_no_next_line_is_complete_after_the_timeout_since_its_last_line() {
        let mut joiner = joiner("^START", 1 << 20);
        let t0 = Instant::now();
        assert_eq!(joiner.deadline(), None);
        assert_eq!(joiner.push(b"START".to_vec(), t0), None);
        assert_eq!(joiner.push(b"more".to_vec(), t0 + TIMEOUT / 2), None);
        assert_eq!(joiner.deadline(), Some(t0 + TIMEOUT / 2 + TIMEOUT));
        assert_eq!(
            joiner.expire(t0 + TIMEOUT),
            None,
            "the last line renewed it"
        );
        assert_eq!(
            joiner.expire(t0 + TIMEOUT / 2 + TIMEOUT),
            Some(b"START\nmore".to_vec())
        );
        assert_eq!((joiner.deadline(), joiner.finish()), (None, None));
        // A line after the timeout begins a record even if it does not match.
        assert_eq!(joiner.push(b"late".to_vec(), t0 + TIMEOUT * 3), None);
        assert_eq!(joiner.finish(), Some(b"late".to_vec()));
    }

    #[test]
    fn a_record_stops_at_max_bytes_and_the_line_that_would_pass_it_begins_the_next() {
        let mut joiner = joiner("^START", 12);
        let at = Instant::now();
        assert_eq!(
            records(
                &mut joiner,
                &["START", "123456", "x", "a-line-longer-than-max", "y"],
                at
            ),
            ["START\n123456", "x", "a-line-longer-than-max", "y"]
        );
        assert_eq!(joiner.split, 3);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_joined_as_they_are() {
        let mut joiner = joiner("^S", 100);
        let at = Instant::now();
        assert_eq!(joiner.push(b"S \xff".to_vec(), at), None);
        assert_eq!(joiner.push(b"\xfe".to_vec(), at), None);
        assert_eq!(joiner.finish(), Some(b"S \xff\n\xfe".to_vec()));
    }
}
