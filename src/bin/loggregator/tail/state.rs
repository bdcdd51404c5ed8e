//! The state file: per followed path, which file it was (device, inode
//! and a SHA-256 of its first bytes, so a reused inode is told apart) and
//! the offset up to which the agent confirmed delivery. It is written
//! whole to a temporary file, synced, and renamed over the old one, so a
//! `kill -9` leaves either the old state or the new one, never half.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// What the file says it is, so that another program's JSON is refused.
const FORMAT: &str = "loggregator tail state";
const VERSION: u64 = 1;
/// The bytes at a file's start that identify it besides its inode.
pub const HEAD_BYTES: usize = 256;

/// Which file a path named: a reused inode has other first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub device: u64,
    pub inode: u64,
    /// How many first bytes `head_sha256` covers (fewer than
    /// [`HEAD_BYTES`] while the file was shorter).
    pub head_len: usize,
    pub head_sha256: [u8; 32],
}

/// Where a path's delivery stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub identity: Identity,
    /// Every byte before it was confirmed by the agent.
    pub confirmed: u64,
}

impl Identity {
    /// The identity of an open file whose first bytes were `head`.
    #[cfg(test)]
    pub fn new(file: &File, head: &[u8]) -> std::io::Result<Identity> {
        let metadata = file.metadata()?;
        Ok(Identity {
            device: metadata.dev(),
            inode: metadata.ino(),
            head_len: head.len(),
            head_sha256: openssl::sha::sha256(head),
        })
    }

    /// Whether `file` begins with the bytes this identity hashed (its
    /// inode aside: a copy matches too).
    pub fn head_matches(&self, file: &File) -> bool {
        let mut head = vec![0; self.head_len];
        file.read_exact_at(&mut head, 0).is_ok() && openssl::sha::sha256(&head) == self.head_sha256
    }

    /// Whether `file` is the one this identity names: same inode, same first bytes.
    pub fn is(&self, file: &File) -> bool {
        file.metadata()
            .is_ok_and(|m| m.dev() == self.device && m.ino() == self.inode)
            && self.head_matches(file)
    }
}

/// A state file that cannot be used; the tailer stops rather than start
/// from nothing.
#[derive(Debug)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

pub struct StateFile {
    path: PathBuf,
}

/// Held while we run: a second tailer of the same state file would
/// overwrite our positions with its own.
pub struct StateLock {
    _lock: nix::fcntl::Flock<File>,
}

impl StateFile {
    pub fn new(path: &Path) -> StateFile {
        StateFile {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes `<state file>.lock` for as long as the lock lives (the state
    /// file itself is replaced on every write, so it cannot hold a lock).
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let mut name = self.path.as_os_str().to_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| {
                StateError(format!(
                    "cannot write state file {}: cannot open {}: {error}",
                    self.path.display(),
                    path.display()
                ))
            })?;
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(StateLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StateError(format!(
                "another loggregator tail is using state file {} (it holds {})",
                self.path.display(),
                path.display()
            ))),
            Err((_, errno)) => Err(StateError(format!(
                "cannot lock {}: {errno}",
                path.display()
            ))),
        }
    }

    /// The positions recorded; none when the file does not exist yet (a
    /// first start). Anything else that is not our state is an error.
    pub fn load(&self) -> Result<BTreeMap<PathBuf, Position>, StateError> {
        let name = self.path.display();
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BTreeMap::new());
            }
            Err(error) => {
                return Err(StateError(format!(
                    "cannot read state file {name}: {error}"
                )));
            }
        };
        let refuse = |why: &str| {
            StateError(format!(
                "state file {name} is not a loggregator tail state file ({why}); \
                 move it away to start over (files not in it start from their end, \
                 or from their start with --from-start)"
            ))
        };
        let value: Value =
            serde_json::from_slice(&text).map_err(|error| refuse(&format!("{error}")))?;
        if value["format"] != FORMAT {
            return Err(refuse("no \"format\": \"loggregator tail state\""));
        }
        if value["version"] != VERSION {
            return Err(refuse(&format!(
                "version {}, not {VERSION}",
                value["version"]
            )));
        }
        let files = value["files"]
            .as_array()
            .ok_or_else(|| refuse("no \"files\" list"))?;
        let mut positions = BTreeMap::new();
        for (index, file) in files.iter().enumerate() {
            let entry = parse_entry(file)
                .ok_or_else(|| refuse(&format!("entry {index} lacks a field or has a bad one")))?;
            positions.insert(entry.0, entry.1);
        }
        Ok(positions)
    }

    /// Replaces the state file with `positions`: temporary file, fsync,
    /// rename, fsync of the folder.
    pub fn save(&self, positions: &BTreeMap<PathBuf, Position>) -> std::io::Result<()> {
        let files: Vec<Value> = positions
            .iter()
            .map(|(path, position)| {
                let id = &position.identity;
                json!({
                    "path": path.to_string_lossy(),
                    "device": id.device,
                    "inode": id.inode,
                    "head_bytes": id.head_len,
                    "head_sha256": hex(&id.head_sha256),
                    "confirmed_offset": position.confirmed,
                })
            })
            .collect();
        let text = serde_json::to_vec_pretty(&json!({
            "format": FORMAT,
            "version": VERSION,
            "files": files,
        }))?;
        let folder = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut temporary = tempfile::NamedTempFile::new_in(folder)?;
        temporary.write_all(&text)?;
        temporary.as_file().sync_all()?;
        temporary.persist(&self.path).map_err(|error| error.error)?;
        File::open(folder)?.sync_all()
    }
}

fn parse_entry(file: &Value) -> Option<(PathBuf, Position)> {
    let head_sha256 = unhex(file["head_sha256"].as_str()?)?;
    let head_len = usize::try_from(file["head_bytes"].as_u64()?).ok()?;
    if head_len > HEAD_BYTES {
        return None;
    }
    Some((
        PathBuf::from(file["path"].as_str()?),
        Position {
            identity: Identity {
                device: file["device"].as_u64()?,
                inode: file["inode"].as_u64()?,
                head_len,
                head_sha256,
            },
            confirmed: file["confirmed_offset"].as_u64()?,
        },
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut bytes = [0; 32];
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_a_save_and_a_load() {
        let folder = tempfile::tempdir().unwrap();
        let log = folder.path().join("a.log");
        std::fs::write(&log, b"first line\n").unwrap();
        let file = File::open(&log).unwrap();
        let identity = Identity::new(&file, b"first").unwrap();
        assert!(identity.is(&file));
        let state = StateFile::new(&folder.path().join("state.json"));
        assert!(
            state.load().unwrap().is_empty(),
            "no file yet: a first start"
        );
        let positions = BTreeMap::from([(
            log,
            Position {
                identity,
                confirmed: 11,
            },
        )]);
        state.save(&positions).unwrap();
        assert_eq!(state.load().unwrap(), positions);
    }

    #[test]
    fn a_file_with_other_first_bytes_is_another_file() {
        let folder = tempfile::tempdir().unwrap();
        let log = folder.path().join("a.log");
        std::fs::write(&log, b"first line\n").unwrap();
        let identity = Identity::new(&File::open(&log).unwrap(), b"first").unwrap();
        std::fs::write(&log, b"other line\n").unwrap();
        assert!(!identity.is(&File::open(&log).unwrap()));
    }

    #[test]
    fn a_foreign_or_damaged_state_file_is_refused_by_name() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("state.json");
        let state = StateFile::new(&path);
        for text in [
            "",
            "garbage",
            r#"{"files": []}"#,
            r#"{"format": "loggregator tail state", "version": 2, "files": []}"#,
            r#"{"format": "loggregator tail state", "version": 1, "files": [{"path": "a"}]}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            let error = state.load().unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(
                error.contains("not a loggregator tail state file"),
                "{error}"
            );
        }
    }
}
