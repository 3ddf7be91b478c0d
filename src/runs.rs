//! The registry of runs on this machine: one lock file per live run in its
//! runtime directory, held with flock for the run's whole life, and the
//! sweep that removes what dead runs left behind.
//!
//! A lock that can be taken belongs to a run whose wrapper is gone, however
//! it died, because the kernel releases flocks with the last fd. That is what
//! makes the sweep safe against live runs: it only ever touches runs whose
//! lock it holds. What makes it safe against other users is where it looks
//! ([`rundir::sweepable`]) and what it believes: a record is read bounded,
//! from a regular file only the run's own uid could have written, and the
//! cgroup it names must pass [`cgroup::recorded_run`] before anything in it
//! is killed.

use std::{
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    unistd::{Uid, getpid},
};

use crate::{
    bpf, cgroup,
    rundir::{LOCK_SUFFIX, RunDir, SOCKET_SUFFIX},
};

const STALE_KILL_WAIT: Duration = Duration::from_secs(5);
/// A record is two short lines; anything longer was not written by a run.
const MAX_RECORD: u64 = 4096;

pub fn lock_file(name: &str) -> String {
    format!("{name}{LOCK_SUFFIX}")
}

pub fn socket_file(name: &str) -> String {
    format!("{name}{SOCKET_SUFFIX}")
}

/// A live run's claim on its name, released (and its file removed) on drop.
pub struct Registration {
    dir: RunDir,
    file: String,
    lock: Flock<File>,
}

impl Registration {
    /// Claims `name` for this process and records its cgroup for the sweep.
    pub fn claim(dir: &RunDir, name: &str, cgroup: &Path) -> Result<Registration> {
        let file = lock_file(name);
        let shown = dir.path().join(&file);
        let record = format!("pid {}\ncgroup {}\n", getpid(), cgroup.display());
        for _ in 0..3 {
            match dir.create_locked(&file, record.as_bytes()) {
                Ok(lock) => {
                    return Ok(Registration {
                        dir: dir.try_clone()?,
                        file,
                        lock,
                    });
                }
                Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            // Taken: by a live run, or by a dead one no sweep has removed yet.
            let existing = match dir.open_lock(&file) {
                Ok(existing) => existing,
                Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::ENOENT) => continue,
                Err(e) => return Err(e),
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
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&*self.lock)
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

struct Record {
    pid: i32,
    cgroup: Option<String>,
}

/// Reads a lock file's record, at most [`MAX_RECORD`] bytes of UTF-8.
fn read_record(file: &mut File) -> Result<Record> {
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

/// What a sweep did, and what it passed over.
#[derive(Default)]
pub struct Sweep {
    /// Dead runs: those found by [`stale`], or removed by [`sweep`].
    pub runs: Vec<String>,
    pub warnings: Vec<String>,
}

impl Sweep {
    fn warn(&mut self, error: &anyhow::Error) {
        self.warnings.push(format!("{error:#}"));
    }
}

/// A registered run whose wrapper is gone, locked so nothing else claims it
/// while it is being removed.
struct DeadRun {
    name: String,
    lock: Flock<File>,
}

fn dead_runs(dir: &RunDir, sweep: &mut Sweep) -> Vec<DeadRun> {
    let names = match dir.names(LOCK_SUFFIX) {
        Ok(names) => names,
        Err(e) => {
            sweep.warn(&e);
            return Vec::new();
        }
    };
    let mut dead = Vec::new();
    for name in names {
        let file = match dir.open_lock(&lock_file(&name)) {
            Ok(file) => file,
            // Removed by its run or another sweep since the listing.
            Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::ENOENT) => continue,
            Err(e) => {
                sweep.warn(&e);
                continue;
            }
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            dead.push(DeadRun { name, lock });
        }
    }
    dead
}

/// Names of registered runs whose wrapper is gone, in `dirs`.
pub fn stale(dirs: &[RunDir]) -> Sweep {
    let mut sweep = Sweep::default();
    for dir in dirs {
        let names: Vec<String> = dead_runs(dir, &mut sweep)
            .into_iter()
            .map(|run| run.name)
            .collect();
        sweep.runs.extend(names);
    }
    sweep
}

/// Removes what dead runs in `dirs` left behind: their cgroups (killing
/// anything still inside) and their files; then, for root, cgroups under
/// `<mount>/throttle` that no run has registered and no program is attached
/// to. A problem with one entry is a warning and never stops the rest.
pub fn sweep(dirs: &[RunDir], mount: &Path) -> Sweep {
    let mut sweep = Sweep::default();
    for dir in dirs {
        for mut run in dead_runs(dir, &mut sweep) {
            if let Err(e) = remove_dead(dir, &mut run, mount) {
                sweep.warn(&e.context(format!("cleaning up dead run '{}'", run.name)));
                continue;
            }
            sweep.runs.push(run.name);
        }
    }
    if Uid::effective().is_root() {
        sweep_unregistered(dirs, mount, &mut sweep);
    }
    sweep
}

fn remove_dead(dir: &RunDir, run: &mut DeadRun, mount: &Path) -> Result<()> {
    let file = lock_file(&run.name);
    let shown = dir.path().join(&file);
    // An empty record is a run that died before it wrote one, and so before
    // it created its cgroup: there is nothing to kill.
    let cgroup = read_record(&mut run.lock)
        .with_context(|| format!("reading {}", shown.display()))
        .and_then(|record| match record.cgroup {
            None => Ok(None),
            Some(recorded) => cgroup::recorded_run(mount, &recorded, &run.name)
                .map(Some)
                .with_context(|| format!("{} names cgroup '{recorded}'", shown.display())),
        });
    // A record that cannot be trusted names nothing to kill; the files of
    // the dead run are removed either way, so the warning is given once.
    let result = cgroup.and_then(|path| match path {
        Some(path) => cgroup::remove_tree(&path, STALE_KILL_WAIT)
            .with_context(|| format!("removing {}", path.display())),
        None => Ok(()),
    });
    dir.remove(&socket_file(&run.name))?;
    if dir.holds(&file, &run.lock) {
        dir.remove(&file)?;
    }
    result
}

fn sweep_unregistered(dirs: &[RunDir], mount: &Path, sweep: &mut Sweep) {
    let runs = mount.join(cgroup::RUNS_DIR);
    let entries = match std::fs::read_dir(&runs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            return sweep
                .warn(&anyhow::Error::new(e).context(format!("listing {}", runs.display())));
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let registered = dirs.iter().any(|dir| dir.contains(&lock_file(&name)));
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || registered {
            continue;
        }
        let path: PathBuf = entry.path();
        if has_programs(&path) {
            continue; // a live run registered where this caller cannot see
        }
        match cgroup::remove_tree(&path, STALE_KILL_WAIT) {
            Ok(()) => sweep.runs.push(name),
            Err(e) => {
                sweep.warn(&e.context(format!("removing unregistered cgroup {}", path.display())))
            }
        }
    }
}

fn has_programs(cgroup: &Path) -> bool {
    let Ok(dir) = File::open(cgroup) else {
        return false;
    };
    bpf::Hook::ALL.into_iter().any(|hook| {
        bpf::attached_program_ids(std::os::fd::AsFd::as_fd(&dir), hook)
            .is_ok_and(|ids| !ids.is_empty())
    })
}

/// Removes a run's files from its runtime directory; missing ones are fine.
pub fn remove_run_files(dir: &RunDir, name: &str) -> Result<()> {
    dir.remove(&socket_file(name))?;
    dir.remove(&lock_file(name))
}
