//! The registry of runs on this machine: one lock file per live run in the
//! runtime directory, held with flock for the run's whole life.
//!
//! A lock that can be taken belongs to a run whose wrapper is gone, however
//! it died, because the kernel releases flocks with the last fd. That is what
//! makes the sweep safe: it only ever touches runs whose lock it holds.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    unistd::{Gid, Uid, getpid},
};

use crate::{bpf, cgroup};

const LOCK_SUFFIX: &str = ".lock";
const STALE_KILL_WAIT: Duration = Duration::from_secs(5);

const SOCKET_SUFFIX: &str = ".sock";
const ROOT_DIR: &str = "/run/throttle";

/// Who a run belongs to: the user who typed the command, which under sudo
/// is SUDO_UID rather than root, so they can manage the run without sudo.
pub fn owner() -> (Uid, Gid) {
    let from_env = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    if Uid::effective().is_root()
        && let Some(uid) = from_env("SUDO_UID").filter(|uid| *uid != 0)
    {
        return (
            Uid::from_raw(uid),
            Gid::from_raw(from_env("SUDO_GID").unwrap_or(uid)),
        );
    }
    (Uid::effective(), Gid::effective())
}

/// The directory holding the lock files and control sockets of `owner`'s runs:
/// /run/throttle for root; otherwise the user's runtime directory
/// ($XDG_RUNTIME_DIR, else /run/user/UID), else /tmp/throttle-UID.
pub fn runtime_dir_of(owner: Uid) -> PathBuf {
    if owner.is_root() {
        return PathBuf::from(ROOT_DIR);
    }
    if owner == Uid::effective()
        && let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())
    {
        return Path::new(&dir).join("throttle");
    }
    let user_run = PathBuf::from(format!("/run/user/{owner}"));
    if user_run.is_dir() {
        user_run.join("throttle")
    } else {
        std::env::temp_dir().join(format!("throttle-{owner}"))
    }
}

pub fn runtime_dir() -> PathBuf {
    runtime_dir_of(owner().0)
}

/// The runtime directories whose runs the caller may see: its own, and for
/// root every user's as well.
pub fn visible_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![runtime_dir_of(Uid::effective())];
    if Uid::effective().is_root() {
        let users = fs::read_dir("/run/user")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("throttle"));
        let tmp = fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("throttle-"))
            .map(|e| e.path());
        dirs.extend(users.chain(tmp).filter(|d| d.is_dir()));
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Creates `dir` (mode 0700) for `owner`, or checks that an existing one
/// belongs to them and nobody else can enter it.
pub fn ensure_dir_for(dir: &Path, owner: (Uid, Gid)) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta =
        fs::symlink_metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    if meta.uid() != owner.0.as_raw() {
        if !Uid::effective().is_root() {
            bail!(
                "{} belongs to uid {}, not to uid {}; remove it",
                dir.display(),
                meta.uid(),
                owner.0
            );
        }
        nix::unistd::chown(dir, Some(owner.0), Some(owner.1))
            .with_context(|| format!("handing {} to uid {}", dir.display(), owner.0))?;
    }
    if !meta.is_dir() || meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {} to 0700", dir.display()))?;
    }
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<()> {
    ensure_dir_for(dir, owner())
}

pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{SOCKET_SUFFIX}"))
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

/// Names of registered runs whose wrapper is gone, in the directories the
/// sweep would clean.
pub fn stale(dirs: &[PathBuf]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for dir in dirs {
        names.extend(dead_runs(dir)?.into_iter().map(|run| run.name));
    }
    Ok(names)
}

/// Removes what dead runs left behind: their cgroups (killing anything still
/// inside), their files in the runtime directory, and cgroups under
/// `<mount>/throttle` that no run has registered and no program is attached
/// to. Returns the names of the runs removed.
pub fn sweep(dirs: &[PathBuf], mount: &Path) -> Result<Vec<String>> {
    let mut swept = Vec::new();
    for dir in dirs {
        for mut run in dead_runs(dir)? {
            let path = lock_path(dir, &run.name);
            let record = read_record(&mut run.lock)
                .with_context(|| format!("reading {}", path.display()))?;
            if let Some(cgroup) = &record.cgroup {
                cgroup::remove_tree(cgroup, STALE_KILL_WAIT)
                    .with_context(|| format!("removing the cgroup of dead run '{}'", run.name))?;
            }
            remove_run_files(dir, &run.name)?;
            swept.push(run.name);
        }
    }
    sweep_unregistered(dirs, mount, swept)
}

fn sweep_unregistered(
    dirs: &[PathBuf],
    mount: &Path,
    mut swept: Vec<String>,
) -> Result<Vec<String>> {
    let runs = mount.join(cgroup::RUNS_DIR);
    let entries = match fs::read_dir(&runs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e).with_context(|| format!("listing {}", runs.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", runs.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let registered = dirs.iter().any(|dir| lock_path(dir, &name).exists());
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || registered {
            continue;
        }
        let path = entry.path();
        if has_programs(&path) {
            continue; // a live run registered where this caller cannot see
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
    bpf::Hook::ALL.into_iter().any(|hook| {
        bpf::attached_program_ids(std::os::fd::AsFd::as_fd(&dir), hook)
            .is_ok_and(|ids| !ids.is_empty())
    })
}

/// Removes a run's files from the runtime directory; missing ones are fine.
pub fn remove_run_files(dir: &Path, name: &str) -> Result<()> {
    for path in [socket_path(dir, name), lock_path(dir, name)] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}
