//! The sweep: removing what dead runs left behind, for every run that
//! starts and for `throttle cleanup`.
//!
//! It only ever touches runs whose lock it holds (see `registration`),
//! which makes it safe against live runs. What makes it safe against other
//! users is where it looks ([`rundir::sweepable`]) and what it believes: a
//! record is read bounded, from a regular file only the run's own uid could
//! have written, and the cgroup it names must pass [`cgroup::recorded_run`]
//! before anything in it is killed.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::{
    fcntl::{Flock, FlockArg},
    unistd::Uid,
};

use super::{
    registration::read_record,
    rundir::{self, Found, LOCK_SUFFIX, RunDir, lock_file, socket_file},
};
use crate::kernel::{bpf, cgroup};

const STALE_KILL_WAIT: Duration = Duration::from_secs(5);

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
            Err(rundir::Error::Missing(_)) => continue,
            Err(e) => {
                sweep.warn(&e.into());
                continue;
            }
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            dead.push(DeadRun { name, lock });
        }
    }
    dead
}

/// A sweep of `found` that begins with the directories it passed over.
fn begin(found: &Found) -> Sweep {
    Sweep {
        runs: Vec::new(),
        warnings: found.refused.clone(),
    }
}

/// Names of registered runs whose wrapper is gone, in `found`.
pub fn stale(found: &Found) -> Sweep {
    let mut sweep = begin(found);
    for dir in &found.dirs {
        let names: Vec<String> = dead_runs(dir, &mut sweep)
            .into_iter()
            .map(|run| run.name)
            .collect();
        sweep.runs.extend(names);
    }
    sweep
}

/// Removes what dead runs in `found` left behind: their cgroups (killing
/// anything still inside) and their files; then, for root, cgroups under
/// `<mount>/throttle` that no run has registered and no program is attached
/// to. A problem with one entry, or a directory passed over, is a warning
/// and never stops the rest.
pub fn sweep(found: &Found, mount: &Path) -> Sweep {
    let mut sweep = begin(found);
    let dirs = &found.dirs;
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
            Some(recorded) => {
                cgroup::recorded_run(mount, &recorded, &cgroup::leaf(&run.name, dir.runs_owner()))
                    .map(Some)
                    .with_context(|| format!("{} names cgroup '{recorded}'", shown.display()))
            }
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
        let (run, owner) = cgroup::run_of_leaf(&name);
        let registered = dirs
            .iter()
            .any(|dir| dir.runs_owner() == owner && dir.contains(&lock_file(run)));
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
