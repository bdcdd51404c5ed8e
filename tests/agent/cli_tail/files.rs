//! Which files and what of them: globs, a missing file, bytes as they
//! are and long lines cut, several files side by side each in order, a
//! log too large for any batch.

use super::*;
use crate::common::setup;

#[test]
fn a_glob_picks_up_a_file_created_later_tagged_with_its_name_and_typed_by_pattern() {
    let setup = setup();
    let folder = Folder::new();
    let pattern = folder.path("*.log");
    let mut tailer = tail(
        &setup,
        &folder.path("state"),
        &["--stderr-glob", "*.stderr.log", "--file-tag", "path"],
        &[&pattern],
    );
    // Once the files there at the start are known, what comes is new,
    // read from its start.
    tailer.wait_told("following 0 files");
    let out = folder.path("web.stdout.log");
    let err = folder.path("web.stderr.log");
    append(&out, vec!["to stdout".to_string()]);
    append(&err, vec!["to stderr".to_string()]);
    let received = setup.agent.wait_for_envelopes(2, WAIT);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    let mut got: Vec<(String, bool, String)> = received
        .iter()
        .map(|log| {
            (
                log.text().unwrap().into_owned(),
                log.is_stderr().unwrap(),
                log.tag("path").unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("to stderr".into(), true, err.display().to_string()),
            ("to stdout".into(), false, out.display().to_string()),
        ]
    );
}

#[test]
fn a_missing_file_is_told_once_the_others_are_followed_and_it_is_read_whole_when_it_appears() {
    let setup = setup();
    let folder = Folder::new();
    let present = folder.path("present.log");
    let missing = folder.path("later.log");
    append(&present, numbered("present", 0..3));
    let mut tailer = tail(
        &setup,
        &folder.path("state"),
        &["--from-start"],
        &[&present, &missing],
    );
    tailer.wait_told(&format!("{}: No such file", missing.display()));
    wait_for_all(&setup, &numbered("present", 0..3));
    append(&missing, numbered("later", 0..3));
    tailer.wait_told(&format!("{} is there now", missing.display()));
    let expected = [numbered("present", 0..3), numbered("later", 0..3)].concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(texts(&setup), expected);
    let told = tailer.stderr();
    assert_eq!(told.matches("No such file").count(), 1, "{told}");
}

#[test]
fn bytes_go_as_they_are_a_long_line_is_cut_and_counted_and_a_deleted_file_is_read_to_its_end() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let long = vec![b'x'; 150_000];
    let mut bytes = b"caf\xc3\xa9 \xff\xfe\n".to_vec();
    bytes.extend_from_slice(&long);
    bytes.push(b'\n');
    std::fs::write(&log, &bytes).unwrap();
    let mut tailer = tail(&setup, &folder.path("state"), &["--from-start"], &[&log]);
    // 61,440 bytes at most (--multiline-max-bytes' default): two cuts.
    setup.agent.wait_for_envelopes(4, WAIT);
    tailer.signal(Signal::SIGSTOP);
    append(&log, vec!["last of the deleted".to_string()]);
    std::fs::remove_file(&log).unwrap();
    tailer.signal(Signal::SIGCONT);
    tailer.wait_told("was deleted or moved");
    append(&log, vec!["in the new file".to_string()]);
    let received = setup.agent.wait_for_envelopes(6, WAIT);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    let payloads: Vec<&[u8]> = received.iter().map(|log| log.payload().unwrap()).collect();
    assert_eq!(
        payloads,
        [
            &b"caf\xc3\xa9 \xff\xfe"[..],
            &long[..61_440],
            &long[61_440..122_880],
            &long[122_880..],
            b"last of the deleted",
            b"in the new file",
        ]
    );
    let stderr = tailer.stderr();
    assert!(
        stderr.contains("files 1 lines 6 split 2 confirmed 6"),
        "{stderr}"
    );
}

#[test]
fn several_files_are_sent_side_by_side_each_file_in_order_every_line_once() {
    let setup = setup();
    let folder = Folder::new();
    let names = ["a", "b", "c", "d", "e"];
    let paths = names.map(|name| folder.path(&format!("{name}.log")));
    // More lines than a batch holds (10,000): each file takes several
    // sends, and a file's next batch may not pass its first.
    const LINES: u32 = 25_000;
    for (path, name) in paths.iter().zip(names) {
        append(path, numbered(name, 0..LINES));
    }
    let state = folder.path("state");
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mut tailer = tail(&setup, &state, &["--from-start"], &files);
    let total = paths.len() * LINES as usize;
    let received = setup.agent.wait_for_envelopes(total, WAIT);
    for path in &paths {
        let size = std::fs::metadata(path).unwrap().len();
        wait_until(|| confirmed_offset(&state, path) == size);
    }
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for log in &received {
        by_file
            .entry(log.tag("file").unwrap().to_string())
            .or_default()
            .push(log.text().unwrap().into_owned());
    }
    for (path, name) in paths.iter().zip(names) {
        let got = &by_file[&path.display().to_string()];
        assert!(
            *got == numbered(name, 0..LINES),
            "{name}.log: {} logs, not each line once in order",
            got.len()
        );
    }
    let stderr = tailer.stderr();
    assert!(
        stderr.contains(&format!("files 5 lines {total} split 0 confirmed {total}")),
        "{stderr}"
    );
}

#[test]
fn a_log_too_large_for_any_batch_is_refused_alone_and_counted_and_the_lines_around_it_arrive() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    // A record of 999,000 bytes, each line its own record, and a client
    // tag of 60,000 bytes: that log alone passes the client's 1 MiB.
    let long = "L".repeat(999_000);
    append(&log, ["before".to_string(), long, "after".to_string()]);
    let tag = format!("big={}", "v".repeat(60_000));
    let flags = [
        "--from-start",
        "--multiline-start",
        "^",
        "--multiline-max-bytes",
        "1000000",
        "--tag",
        &tag,
    ];
    let mut tailer = tail(&setup, &state, &flags, &[&log]);
    wait_for_all(&setup, &["before".to_string(), "after".to_string()]);
    let size = std::fs::metadata(&log).unwrap().len();
    wait_until(|| confirmed_offset(&state, &log) == size);
    let status = tailer.end(Signal::SIGTERM);
    let stderr = tailer.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(texts(&setup), ["before", "after"]);
    assert!(
        stderr.contains("a log was refused and is not sent"),
        "{stderr}"
    );
    assert!(
        stderr.contains("lines 3 split 0 confirmed 2 refused 1"),
        "{stderr}"
    );
}
