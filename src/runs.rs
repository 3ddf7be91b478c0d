//! The registry of runs on this machine: one lock file per live run in the
//! runtime directory, held with flock for the run's whole life.
//!
//! A lock that can be taken belongs to a run whose wrapper is gone, however
//! it died, because the kernel releases flocks with the last fd. That is what
//! makes the sweep safe: it only ever touches runs whose lock it holds.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::CgroupSkbAttachType;
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    unistd::{Uid, getpid},
};

use crate::{bpf, cgroup};

const LOCK_SUFFIX: &str = ".lock";
const STALE_KILL_WAIT: Duration = Duration::from_secs(5);

/// The directory holding run lock files (and, later, control sockets).
pub fn runtime_dir() -> PathBuf {
    if Uid::effective().is_root() {
        return PathBuf::from("/run/throttle");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("throttle"),
        _ => std::env::temp_dir().join(format!("throttle-{}", Uid::effective())),
    }
}

fn ensure_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

pub fn lock_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{LOCK_SUFFIX}"))
}

/// A live run's claim on its name, released (and its file removed) on drop.
pub struct Registration {
    path: PathBuf,
    lock: Flock<File>,
}

impl Registration {
    /// Claims `name` for this process and records its cgroup for the sweep.
    pub fn claim(dir: &Path, name: &str, cgroup: &Path) -> Result<Registration> {
        ensure_dir(dir)?;
        let path = lock_path(dir, name);
        // A sweep in another process may unlink a stale file between our open
        // and our flock; then the lock we hold is on a deleted file. Retry.
        for _ in 0..3 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    let owner = read_record(&mut file).map(|r| r.pid).unwrap_or_default();
                    bail!(
                        "a run named '{name}' is already active (pid {owner}); choose another --name"
                    );
                }
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            };
            if !same_file(&lock, &path) {
                continue;
            }
            lock.set_len(0)?;
            write!(lock, "pid {}\ncgroup {}\n", getpid(), cgroup.display())
                .with_context(|| format!("writing {}", path.display()))?;
            return Ok(Registration { path, lock });
        }
        bail!("could not claim {}: it keeps being removed", path.display())
    }

    /// The fd holding the lock, for the watchdog to inherit.
    pub fn lock_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&*self.lock)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody takes a lock on a
        // file that is about to disappear.
        if same_file(&self.lock, &self.path)
            && let Err(e) = fs::remove_file(&self.path)
        {
            eprintln!("throttle: removing {}: {e}", self.path.display());
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

struct Record {
    pid: i32,
    cgroup: Option<PathBuf>,
}

fn read_record(file: &mut File) -> io::Result<Record> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut record = Record {
        pid: 0,
        cgroup: None,
    };
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("pid", pid)) => record.pid = pid.parse().unwrap_or(0),
            Some(("cgroup", path)) => record.cgroup = Some(PathBuf::from(path)),
            _ => {}
        }
    }
    Ok(record)
}

/// A registered run whose wrapper is gone, locked so nothing else claims it
/// while it is being removed.
struct DeadRun {
    name: String,
    lock: Flock<File>,
}

fn dead_runs(dir: &Path) -> Result<Vec<DeadRun>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut dead = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(LOCK_SUFFIX))
        else {
            continue;
        };
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            dead.push(DeadRun {
                name: name.to_string(),
                lock,
            });
        }
    }
    Ok(dead)
}

/// Names of registered runs whose wrapper is gone.
pub fn stale(dir: &Path) -> Result<Vec<String>> {
    Ok(dead_runs(dir)?.into_iter().map(|run| run.name).collect())
}

/// Removes what dead runs left behind: their cgroups (killing anything still
/// inside), their files in the runtime directory, and cgroups under
/// `<mount>/throttle` that no run has registered and no program is attached
/// to. Returns the names of the runs removed.
pub fn sweep(dir: &Path, mount: &Path) -> Result<Vec<String>> {
    let mut swept = Vec::new();
    for mut run in dead_runs(dir)? {
        let path = lock_path(dir, &run.name);
        let record =
            read_record(&mut run.lock).with_context(|| format!("reading {}", path.display()))?;
        if let Some(cgroup) = &record.cgroup {
            cgroup::remove_tree(cgroup, STALE_KILL_WAIT)
                .with_context(|| format!("removing the cgroup of dead run '{}'", run.name))?;
        }
        remove_run_files(dir, &run.name)?;
        swept.push(run.name);
    }
    sweep_unregistered(dir, mount, swept)
}

fn sweep_unregistered(dir: &Path, mount: &Path, mut swept: Vec<String>) -> Result<Vec<String>> {
    let runs = mount.join(cgroup::RUNS_DIR);
    let entries = match fs::read_dir(&runs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e).with_context(|| format!("listing {}", runs.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", runs.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || lock_path(dir, &name).exists() {
            continue;
        }
        let path = entry.path();
        if has_programs(&path) {
            continue; // a live run registered elsewhere (another user's runtime directory)
        }
        cgroup::remove_tree(&path, STALE_KILL_WAIT)
            .with_context(|| format!("removing unregistered cgroup {}", path.display()))?;
        swept.push(name);
    }
    Ok(swept)
}

fn has_programs(cgroup: &Path) -> bool {
    let Ok(dir) = File::open(cgroup) else {
        return false;
    };
    [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress]
        .into_iter()
        .any(|t| {
            bpf::attached_program_ids(std::os::fd::AsFd::as_fd(&dir), t)
                .is_ok_and(|ids| !ids.is_empty())
        })
}

/// Removes a run's files from the runtime directory; missing ones are fine.
pub fn remove_run_files(dir: &Path, name: &str) -> Result<()> {
    let path = lock_path(dir, name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
