//! Lines of one stream to logs: read on a thread of their own, copied
//! with `--tee`, joined into records with `--multiline-start`, and handed
//! to a send function. `pipe` forwards its standard input, `run` each of
//! its child's two streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use regex::bytes::Regex;

use crate::multiline::Multiline;

/// The default `--multiline-max-bytes`: the size of the largest log
/// envelope Diego sends, which every agent and reader downstream takes.
const DEFAULT_MULTILINE_MAX_BYTES: usize = 61_440;
/// The largest `--multiline-max-bytes`: what fits the client's batches
/// (1 MiB) with room left for the envelope's tags.
const MAX_MULTILINE_MAX_BYTES: usize = 1_000_000;
/// Lines read ahead of the sender: a bound on what the reader holds.
const LINES_AHEAD: usize = 64;
/// Bytes read from a stream at a time.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How lines join into records.
#[derive(clap::Args, Debug)]
pub struct MultilineArgs {
    /// A line matching this regular expression begins a new log; every
    /// other line joins the log before it, after a newline (for example
    /// `'^\d{4}-\d{2}-\d{2} '` for lines that begin with a date).
    #[arg(long, value_name = "REGEX")]
    pub multiline_start: Option<Regex>,
    /// How long a log waits for its next line before it is sent.
    #[arg(
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
        requires = "multiline_start"
    )]
    pub multiline_timeout: Duration,
    /// The longest a joined log grows, in bytes; the line that would make
    /// it longer begins the next log (counted as split at exit).
    #[arg(
        long,
        default_value_t = DEFAULT_MULTILINE_MAX_BYTES,
        value_parser = parse_max_bytes,
        requires = "multiline_start"
    )]
    pub multiline_max_bytes: usize,
}

fn parse_max_bytes(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(bytes) if (1..=MAX_MULTILINE_MAX_BYTES).contains(&bytes) => Ok(bytes),
        _ => Err(format!(
            "{text:?} is not a number of bytes from 1 to {MAX_MULTILINE_MAX_BYTES}"
        )),
    }
}

impl MultilineArgs {
    /// A joiner for one stream, if joining was asked for.
    pub fn joiner(&self) -> Option<Multiline> {
        self.multiline_start
            .clone()
            .map(|start| Multiline::new(start, self.multiline_timeout, self.multiline_max_bytes))
    }
}

/// Lines as read, each with its line ending and when it was read; an
/// error ends the stream.
pub type Lines = Receiver<std::io::Result<(Vec<u8>, Instant)>>;

/// What one stream carried.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub lines: u64,
    /// Logs sent, when lines were joined.
    pub records: Option<u64>,
    /// Records ended early by `--multiline-max-bytes`.
    pub split: u64,
    /// Whether the stream was read to its end without an error.
    pub read_ok: bool,
}

impl Forwarded {
    /// The stream's part of the exit line.
    pub fn summary(&self) -> String {
        match self.records {
            Some(records) => format!(
                "lines {} records {records} split {}",
                self.lines, self.split
            ),
            None => format!("lines {}", self.lines),
        }
    }
}

/// Sends each line (or joined record) of `lines` through `send`, copying
/// the bytes to `tee` as they come; returns at the end of the stream.
/// `program` begins the error message of a failed read.
pub fn forward(
    program: &str,
    lines: Lines,
    mut joiner: Option<Multiline>,
    mut tee: Option<&mut dyn Write>,
    send: &dyn Fn(&[u8]),
) -> Forwarded {
    let mut forwarded = Forwarded {
        read_ok: true,
        ..Forwarded::default()
    };
    let mut records: u64 = 0;
    let mut send_record = |record: &[u8]| {
        records += 1;
        send(record);
    };
    loop {
        let next = match joiner.as_ref().and_then(Multiline::deadline) {
            Some(deadline) => lines.recv_deadline(deadline),
            None => lines.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let (mut line, read_at) = match next {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                // Still close and report: what was read is not lost.
                eprintln!("{program}: reading input: {error}");
                forwarded.read_ok = false;
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(record) = joiner.as_mut().and_then(|j| j.expire(Instant::now())) {
                    send_record(&record);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        forwarded.lines += 1;
        if let Some(out) = &mut tee {
            // Flushed per line so that the copy keeps up with the logs;
            // a reader downstream that went away (`| head`) stops the
            // copying, not the sending.
            if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                tee = None;
            }
        }
        strip_line_ending(&mut line);
        match &mut joiner {
            Some(joiner) => {
                // Timed by when it was read, not when this loop got to it:
                // a blocked emit must not make a late line join the record
                // its timeout had already ended.
                let ended = joiner.expire(read_at);
                let completed = joiner.push(line, read_at);
                for record in ended.into_iter().chain(completed) {
                    send_record(&record);
                }
            }
            None => send(&line),
        }
    }
    if let Some(record) = joiner.as_mut().and_then(Multiline::finish) {
        send_record(&record);
    }
    if let Some(joiner) = &joiner {
        forwarded.records = Some(records);
        forwarded.split = joiner.split;
    }
    forwarded
}

/// Reads `input` on a thread of its own, so that a joined log can be sent
/// when its time is up while no line comes, and so that each line is
/// timed when it is read (up to [`LINES_AHEAD`] lines ahead of an emit
/// that waits for room). Each line keeps its line ending (for `--tee`);
/// the channel ends with the input, after an error if reading failed.
pub fn read_lines(name: &str, input: impl Read + Send + 'static) -> std::io::Result<Lines> {
    let (lines, received) = crossbeam_channel::bounded(LINES_AHEAD);
    let mut input = BufReader::with_capacity(READ_BUFFER_BYTES, input);
    std::thread::Builder::new()
        .name(format!("read {name}"))
        .spawn(move || {
            loop {
                let mut line = Vec::new();
                let read = match input.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => Ok((line, Instant::now())),
                    Err(error) => Err(error),
                };
                let failed = read.is_err();
                if lines.send(read).is_err() || failed {
                    return;
                }
            }
        })?;
    Ok(received)
}

fn strip_line_ending(line: &mut Vec<u8>) {
    for ending in [b'\n', b'\r'] {
        if line.last() == Some(&ending) {
            line.pop();
        }
    }
}
