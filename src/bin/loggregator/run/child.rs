//! The child: started as a shell would start it, and its end told as a
//! shell tells it (the code, or 128 + the signal).

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

/// Why the child did not start, and the code a shell exits with then.
pub struct CannotStart {
    pub message: String,
    pub exit_code: u8,
}

/// Starts the command with stdin inherited and stdout and stderr piped,
/// in a process group of its own: a signal is forwarded to the group once
/// (a terminal's Ctrl-C reaches only us, not us and the child), and it
/// reaches what a shell script started too.
pub fn spawn(command: &[OsString]) -> Result<Child, CannotStart> {
    let (program, args) = command.split_first().expect("clap requires a command");
    let spawned = Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    spawned.map_err(|error| {
        let shown = program.to_string_lossy();
        match error.kind() {
            ErrorKind::NotFound => CannotStart {
                message: format!("{shown}: command not found"),
                exit_code: 127,
            },
            ErrorKind::PermissionDenied => CannotStart {
                message: format!("{shown}: permission denied (not executable?)"),
                exit_code: 126,
            },
            _ => CannotStart {
                message: format!("{shown}: cannot run: {error}"),
                exit_code: 126,
            },
        }
    })
}

/// The code a shell reports for the child's end.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}

/// The child's end in words, for the exit line.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("child exited {code}"),
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|signal| signal.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}"));
            format!("child killed by {name}")
        }
        (None, None) => "child ended".into(),
    }
}
