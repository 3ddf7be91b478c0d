//! The registry of live runs: one lock file per run in its runtime
//! directory, held with flock for the run's whole life, recording the
//! wrapper's pid and the run's cgroup for the sweep.
//!
//! A lock that can be taken belongs to a run whose wrapper is gone, however
//! it died, because the kernel releases flocks with the last fd.

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    unistd::getpid,
};

use super::rundir::{self, RunDir};

/// A record is two short lines; anything longer was not written by a run.
const MAX_RECORD: u64 = 4096;

/// A live run's claim on its name, released (and its file removed) on drop.
pub struct Registration {
    dir: RunDir,
    file: String,
    lock: Flock<File>,
}

impl Registration {
    /// Claims `name` for this process and records its cgroup for the
    /// sweep; an attached run records none, so no sweep ever empties or
    /// removes what it held.
    pub fn claim(dir: &RunDir, name: &str, cgroup: Option<&Path>) -> Result<Registration> {
        let file = rundir::lock_file(name);
        let shown = dir.path().join(&file);
        let record = match cgroup {
            Some(cgroup) => format!("pid {}\ncgroup {}\n", getpid(), cgroup.display()),
            None => format!("pid {}\n", getpid()),
        };
        for _ in 0..3 {
            match dir.create_locked(&file, record.as_bytes()) {
                Ok(lock) => {
                    return Ok(Registration {
                        dir: dir.try_clone()?,
                        file,
                        lock,
                    });
                }
                Err(rundir::Error::Exists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            // Taken: by a live run, or by a dead one no sweep has removed yet.
            let existing = match dir.open_lock(&file) {
                Ok(existing) => existing,
                Err(rundir::Error::Missing(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            match Flock::lock(existing, FlockArg::LockExclusiveNonblock) {
                Ok(dead) => {
                    if dir.holds(&file, &dead) {
                        dir.remove(&file)?;
                    }
                }
                Err((mut live, Errno::EWOULDBLOCK)) => {
                    let owner = read_record(&mut live).map(|r| r.pid).unwrap_or_default();
                    bail!(
                        "a run named '{name}' is already active (pid {owner}); choose another --name"
                    );
                }
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", shown.display()));
                }
            }
        }
        bail!("could not claim {}: it keeps being taken", shown.display())
    }

    /// The fd holding the lock, for the watchdog to inherit.
    pub fn lock_fd(&self) -> BorrowedFd<'_> {
        self.lock.as_fd()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody takes a lock on a
        // file that is about to disappear.
        if self.dir.holds(&self.file, &self.lock)
            && let Err(e) = self.dir.remove(&self.file)
        {
            eprintln!("throttle: {e:#}");
        }
    }
}

/// What a lock file says about its run.
pub struct Record {
    pub pid: i32,
    pub cgroup: Option<String>,
}

/// Reads a lock file's record, at most [`MAX_RECORD`] bytes of UTF-8.
pub fn read_record(file: &mut File) -> Result<Record> {
    let mut bytes = Vec::new();
    file.take(MAX_RECORD + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD {
        bail!("longer than {MAX_RECORD} bytes");
    }
    let text = std::str::from_utf8(&bytes).context("not UTF-8")?;
    let mut record = Record {
        pid: 0,
        cgroup: None,
    };
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("pid", pid)) => record.pid = pid.parse().unwrap_or(0),
            Some(("cgroup", path)) => record.cgroup = Some(path.to_string()),
            _ => {}
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek as _, Write as _};

    use super::*;

    fn record_of(bytes: &[u8]) -> Result<Record> {
        let mut file = tempfile();
        file.write_all(bytes).unwrap();
        file.rewind().unwrap();
        read_record(&mut file)
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!("throttle-record-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn a_record_is_read_bounded_and_only_for_what_it_names() {
        let record = record_of(b"pid 42\ncgroup /sys/fs/cgroup/throttle/a\nother x\n").unwrap();
        assert_eq!(record.pid, 42);
        assert_eq!(record.cgroup.as_deref(), Some("/sys/fs/cgroup/throttle/a"));
        let empty = record_of(b"").unwrap();
        assert_eq!((empty.pid, empty.cgroup), (0, None));
        assert_eq!(record_of(b"pid many\n").unwrap().pid, 0);
        let long = vec![b'x'; MAX_RECORD as usize + 1];
        assert!(record_of(&long).is_err());
        assert!(record_of(b"pid 1\n\xff\n").is_err());
    }
}
