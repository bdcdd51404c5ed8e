//! Rotation: by rename (the old file read to its end, then the new one),
//! by copy-and-truncate (noticed though the file regrew past the old
//! offset; the lines before the cut read from `<name>.1`), and while the
//! tailer was down.

use super::*;
use crate::common::setup;

#[test]
fn rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one_from_its_start() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    append(&log, numbered("before", 0..3));
    let mut tailer = tail(&setup, &folder.path("state"), &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("before", 0..3));
    tailer.signal(Signal::SIGSTOP);
    append(&log, numbered("old", 0..5));
    std::fs::rename(&log, folder.path("job.log.1")).unwrap();
    append(&log, numbered("new", 0..5));
    tailer.signal(Signal::SIGCONT);
    let expected: Vec<String> = [
        numbered("before", 0..3),
        numbered("old", 0..5),
        numbered("new", 0..5),
    ]
    .concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(texts(&setup), expected, "in order, each once");
}

#[test]
fn copytruncate_is_noticed_when_the_file_regrew_past_the_old_offset_and_the_lines_before_the_cut_come_from_the_copy()
 {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    append(&log, numbered("first", 0..3));
    let mut tailer = tail(&setup, &folder.path("state"), &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("first", 0..3));
    tailer.signal(Signal::SIGSTOP);
    // Written after the tailer's last read, before logrotate's copy.
    append(&log, numbered("unread", 0..4));
    std::fs::copy(&log, folder.path("job.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    // More than was there before the cut: the size alone says nothing.
    let regrown = numbered("regrown", 0..20);
    append(&log, regrown.clone());
    assert!(
        std::fs::metadata(&log).unwrap().len()
            > std::fs::metadata(folder.path("job.log.1")).unwrap().len()
    );
    tailer.signal(Signal::SIGCONT);
    let expected: Vec<String> =
        [numbered("first", 0..3), numbered("unread", 0..4), regrown].concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(
        texts(&setup),
        expected,
        "in order, each once, nothing of the new content at the old offset"
    );
}

#[test]
fn a_file_rotated_while_the_tailer_was_down_is_read_on_from_its_copy_then_the_new_one() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    append(&log, numbered("first", 0..5));
    let mut tailer = tail(&setup, &state, &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("first", 0..5));
    let size = std::fs::metadata(&log).unwrap().len();
    wait_until(|| confirmed_offset(&state, &log) == size);
    tailer.end(Signal::SIGKILL);
    // While it is down: more lines, BOSH's copytruncate, then lines in
    // the cut file, more than there were before.
    append(&log, numbered("unread", 0..5));
    std::fs::copy(&log, folder.path("job.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, numbered("after the cut", 0..20));
    let mut tailer = tail(&setup, &state, &[], &[&log]);
    let expected = [
        numbered("first", 0..5),
        numbered("unread", 0..5),
        numbered("after the cut", 0..20),
    ]
    .concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(texts(&setup), expected, "in order, each once");
}
