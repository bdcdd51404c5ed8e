//! `loggregator tail [FLAGS] --state-file PATH FILE_OR_GLOB...`: follows
//! log files as `tail -F` does, a line a log, through rotation by rename,
//! by copy-and-truncate (BOSH's logrotate) and deletion, with nothing lost
//! across its own restarts: the state file records, per file, the offset
//! up to which the agent confirmed delivery, and a restart resumes there.
//!
//! Files are looked at every `--poll-interval` rather than watched with
//! inotify: a look is one `stat` and one 256-byte read per file, rotation
//! needs those looks anyway, and polling works alike on every file system
//! (inotify misses changes on network and some overlay file systems, and
//! loses events when its queue overflows). A file with data is read to
//! its end before the next pause.

mod deliver;
mod follower;
mod open;
mod order;
mod records;
mod state;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use glob::Pattern;

use crate::connection::ConnectionArgs;
use crate::forward::MultilineArgs;
use deliver::{Delivery, Marking};
use follower::Follower;
use open::Reading;
use state::StateFile;

const PROGRAM: &str = "loggregator tail";

/// Follows log files, each line sent as a log, resuming after a restart
/// where the agent's confirmation left off.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Where the offsets the agent confirmed are kept, per file (JSON,
    /// replaced atomically); created on the first start.
    #[arg(long, env = "LOGGREGATOR_TAIL_STATE_FILE", value_name = "PATH")]
    pub state_file: PathBuf,
    /// Read files the state file does not know from their start, not
    /// their end (files that appear later are always read from their start).
    #[arg(long)]
    pub from_start: bool,
    /// The tag that names the file each log came from.
    #[arg(long, default_value = "file", value_name = "NAME")]
    pub file_tag: String,
    /// Do not tag logs with their file.
    #[arg(long, conflicts_with = "file_tag")]
    pub no_file_tag: bool,
    /// Files whose name matches this glob are sent as stderr (ERR) logs,
    /// the others as OUT; may be repeated (for bpm: '*.stderr.log').
    #[arg(long, value_name = "GLOB")]
    pub stderr_glob: Vec<Pattern>,
    /// How often files are looked at for new lines, new files and rotation.
    #[arg(long, default_value = "250ms", value_parser = parse_poll_interval)]
    pub poll_interval: Duration,
    /// How long to wait at exit for the client to close.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,
    #[command(flatten)]
    pub multiline: MultilineArgs,
    /// Files to follow, or globs (quoted) that also pick up files created later.
    #[arg(required = true, value_name = "FILE_OR_GLOB")]
    pub files: Vec<String>,
}

/// A poll interval of at least a millisecond: none would spin.
fn parse_poll_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(interval) if interval >= Duration::from_millis(1) => Ok(interval),
        Ok(_) => Err("at least 1ms".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// Follows until SIGTERM or SIGINT, then exits 0, or 1 if the client
/// refused a log; 2 when the flags, the certificates or the state file
/// are wrong.
pub fn tail(args: &TailArgs) -> ExitCode {
    match follow(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_refused) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("{PROGRAM}: {error}");
            ExitCode::from(2)
        }
    }
}

/// Returns how many logs the client refused.
fn follow(args: &TailArgs) -> Result<u64, Box<dyn std::error::Error>> {
    for pattern in args
        .files
        .iter()
        .filter(|file| Pattern::escape(file) != **file)
    {
        Pattern::new(pattern).map_err(|error| format!("{pattern:?}: {error}"))?;
    }
    let state = StateFile::new(&args.state_file);
    let _lock = state.lock()?;
    // Before anything else: a state file we cannot use stops us here.
    let positions = state.load()?;
    // A state file that cannot be written stops us now, not after the
    // first lines are sent with nothing to resume from.
    state.save(&positions).map_err(|error| {
        format!(
            "cannot write state file {}: {error}",
            args.state_file.display()
        )
    })?;
    let stop = stop_on_signals()?;
    let marking = Marking {
        source: args.connection.source()?,
        file_tag: (!args.no_file_tag).then(|| args.file_tag.clone()),
        // A map entry: its key, its length, and each string's key and length.
        client_tag_bytes: args
            .connection
            .all_tags()?
            .iter()
            .map(|(key, value)| key.len() + value.len() + 12)
            .sum(),
    };
    let client = args.connection.client(false)?;
    let mut delivery =
        Delivery::start(client, marking, stop, state, positions, args.close_timeout)?;
    let reading = Reading {
        max_line_bytes: args.multiline.multiline_max_bytes,
        multiline: &args.multiline,
    };
    let mut followers: Vec<Follower> = Vec::new();
    let mut followed = BTreeSet::new();
    for path in expand(&args.files) {
        if followed.insert(path.clone()) {
            let stderr = is_stderr(&args.stderr_glob, &path);
            followers.push(Follower::start(
                path,
                stderr,
                args.from_start,
                &reading,
                &mut delivery,
            ));
        }
    }
    // The starting offsets (a file's end) are in the state file before
    // any line is read: a restart sends what was written meanwhile.
    let _ = delivery.save();
    eprintln!(
        "{PROGRAM}: following {} files; state file {}",
        followers.len(),
        args.state_file.display()
    );
    let mut last_look = Instant::now();
    loop {
        if last_look.elapsed() >= args.poll_interval {
            last_look = Instant::now();
            for path in expand(&args.files) {
                if followed.insert(path.clone()) {
                    let stderr = is_stderr(&args.stderr_glob, &path);
                    // Created since we started, unless the state file
                    // knows it: from its start.
                    followers.push(Follower::start(path, stderr, true, &reading, &mut delivery));
                }
            }
        }
        let mut progress = false;
        let mut stopped = false;
        for follower in &mut followers {
            match follower.poll(&reading, &mut delivery) {
                Ok(read) => progress |= read,
                Err(deliver::Stopped) => stopped = true,
            }
            if stopped || delivery.stopping() {
                stopped = true;
                break;
            }
        }
        if stopped {
            break;
        }
        if !progress {
            let next_look = last_look + args.poll_interval;
            let wake = followers
                .iter()
                .filter_map(Follower::deadline)
                .fold(next_look, Instant::min);
            if delivery.wait_for_stop(wake.saturating_duration_since(Instant::now())) {
                break;
            }
        }
    }
    let files = followers.len();
    let (lines, split) = followers
        .iter()
        .map(Follower::counts)
        .fold((0, 0), |(l, s), c| (l + c.lines, s + c.split));
    // The batches asked for are confirmed (or given up on a stop) first.
    let (delivered, stats) = delivery.finish();
    eprintln!(
        "{PROGRAM}: files {} lines {lines} split {split} confirmed {} refused {} failed sends {} (errors {})",
        files, delivered.confirmed, delivered.refused, delivered.failed_sends, stats.errors
    );
    Ok(delivered.refused)
}

/// The paths named: a pattern with `*`, `?` or `[` is expanded (files
/// only, sorted); any other argument is a path, followed even while it
/// does not exist.
fn expand(files: &[String]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for file in files {
        if Pattern::escape(file) == *file {
            paths.push(PathBuf::from(file));
            continue;
        }
        match glob::glob(file) {
            Ok(matches) => paths.extend(matches.flatten().filter(|path| path.is_file())),
            Err(error) => eprintln!("{PROGRAM}: {file:?}: {error}"),
        }
    }
    paths
}

fn is_stderr(patterns: &[Pattern], path: &std::path::Path) -> bool {
    let name = path.file_name().map(std::path::Path::new).unwrap_or(path);
    patterns.iter().any(|pattern| {
        if pattern.as_str().contains('/') {
            pattern.matches_path(path)
        } else {
            pattern.matches_path(name)
        }
    })
}

/// A channel closed on SIGTERM or SIGINT, which the reading and the
/// delivering threads both see.
fn stop_on_signals() -> std::io::Result<deliver::Stop> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let mut stop = Some(stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Still taken after the first, so a second does not kill us
            // while the last batch is confirmed.
            for _ in signals.forever() {
                stop.take();
            }
        })?;
    Ok(stopped)
}
