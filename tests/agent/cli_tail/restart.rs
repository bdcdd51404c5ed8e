//! Across restarts: a `kill -9` between two runs, a state file that
//! cannot be used, the agent away while lines are written (the state file
//! stays at what it confirmed), a joined record open at a stop.

use super::*;
use crate::common::setup;

#[test]
fn after_a_kill_9_every_line_arrives_and_only_unconfirmed_ones_twice() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    let first = numbered("first", 0..2000);
    append(&log, first[..1000].to_vec());
    let mut tailer = tail(&setup, &state, &["--from-start"], &[&log]);
    // Lines still being written while it is killed.
    let writer = {
        let (log, rest) = (log.clone(), first[1000..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(50) {
                append(&log, chunk.to_vec());
            }
        })
    };
    setup.agent.wait_for_envelopes(1000, WAIT);
    tailer.end(Signal::SIGKILL);
    writer.join().unwrap();
    // What the state file says the agent confirmed: those lines must not
    // come twice.
    let offset = confirmed_offset(&state, &log) as usize;
    let written = std::fs::read_to_string(&log).unwrap();
    let confirmed_lines = written[..offset].lines().count();
    let while_down = numbered("while down", 0..500);
    append(&log, while_down.clone());
    let mut tailer = tail(&setup, &state, &[], &[&log]);
    let expected = [first, while_down].concat();
    let counts = wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    for (index, line) in expected.iter().enumerate() {
        let times = counts[line];
        if index < confirmed_lines {
            assert_eq!(
                times, 1,
                "{line:?} was confirmed before the kill, yet came {times} times"
            );
        } else {
            assert!(times <= 2, "{line:?} came {times} times");
        }
    }
}

#[test]
fn a_corrupt_foreign_unwritable_or_busy_state_file_stops_it_with_the_name_and_is_left_as_it_was() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    append(&log, numbered("line", 0..3));
    let state = folder.path("state");
    for text in [
        "{\"format\": \"loggregator tail state\", \"version\": 1, \"fi",
        "{\"some\": \"other program's\"}",
    ] {
        std::fs::write(&state, text).unwrap();
        let mut tailer = tail(&setup, &state, &["--from-start"], &[&log]);
        let status = tailer.exited.recv_timeout(WAIT).expect("exits by itself");
        tailer.status = Some(status);
        let stderr = tailer.stderr();
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("state file {}", state.display())),
            "{stderr}"
        );
        assert!(
            stderr.contains("not a loggregator tail state file"),
            "{stderr}"
        );
        assert_eq!(std::fs::read_to_string(&state).unwrap(), text);
    }
    // A second tailer of a state file in use.
    std::fs::remove_file(&state).unwrap();
    let mut first = tail(&setup, &state, &[], &[&log]);
    wait_until(|| state.exists());
    let mut second = tail(&setup, &state, &["--from-start"], &[&log]);
    let status = second.exited.recv_timeout(WAIT).expect("exits by itself");
    second.status = Some(status);
    let stderr = second.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another loggregator tail is using state file {}",
            state.display()
        )),
        "{stderr}"
    );
    assert!(first.end(Signal::SIGTERM).success(), "{}", first.stderr());
    let unwritable = folder.path("no such folder").join("state");
    let mut tailer = tail(&setup, &unwritable, &["--from-start"], &[&log]);
    let status = tailer.exited.recv_timeout(WAIT).expect("exits by itself");
    tailer.status = Some(status);
    let stderr = tailer.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write state file {}", unwritable.display())),
        "{stderr}"
    );
    assert!(texts(&setup).is_empty(), "nothing sent");
}

#[test]
fn while_the_agent_is_away_the_state_file_stays_at_what_it_confirmed() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    append(&log, numbered("before", 0..10));
    let mut first = tail(&setup, &state, &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("before", 0..10));
    assert!(first.end(Signal::SIGTERM).success(), "{}", first.stderr());
    let confirmed = std::fs::metadata(&log).unwrap().len();
    assert_eq!(confirmed_offset(&state, &log), confirmed);
    // Away before the next run's first send: no batch of it can have
    // reached the agent.
    setup.agent.shutdown();
    let while_away = numbered("while away", 0..300);
    append(&log, while_away.clone());
    let mut tailer = tail(&setup, &state, &[], &[&log]);
    tailer.wait_told("trying again, the state file stays at what the agent confirmed");
    assert_eq!(confirmed_offset(&state, &log), confirmed);
    setup.agent.restart().unwrap();
    tailer.wait_told("the agent confirmed again");
    wait_for_all(&setup, &while_away);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(
        confirmed_offset(&state, &log),
        std::fs::metadata(&log).unwrap().len()
    );
}

#[test]
fn a_joined_record_still_open_at_a_stop_is_read_again_and_joined_whole_after_the_restart() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    // A timeout no loaded machine reaches: only a start line or the end
    // of the file ends a record here.
    let flags = [
        "--from-start",
        "--multiline-start",
        "^START",
        "--multiline-timeout",
        "60s",
    ];
    append(
        &log,
        ["START 1", "  at one", "START 2", "  at two"].map(String::from),
    );
    let mut first = tail(&setup, &state, &flags, &[&log]);
    setup.agent.wait_for_envelopes(1, WAIT);
    assert!(first.end(Signal::SIGTERM).success(), "{}", first.stderr());
    append(&log, ["  at two again", "START 3"].map(String::from));
    let mut second = tail(&setup, &state, &flags, &[&log]);
    setup.agent.wait_for_envelopes(2, WAIT);
    assert!(second.end(Signal::SIGTERM).success(), "{}", second.stderr());
    assert_eq!(
        texts(&setup),
        ["START 1\n  at one", "START 2\n  at two\n  at two again"]
    );
}
