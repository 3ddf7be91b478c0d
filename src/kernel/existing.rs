//! A cgroup throttle did not make, as `throttle attach` holds it: opened
//! once, by a descriptor every later step goes through, so a path swapped
//! after the checks is never what the programs are attached to; never
//! written to, never emptied, never removed.

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    fcntl::{OFlag, openat},
    sys::{
        stat::{Mode, fstatat},
        statfs::{CGROUP2_SUPER_MAGIC, fstatfs},
    },
    unistd::Uid,
};

/// Why a cgroup cannot be attached to.
#[derive(Debug)]
pub enum Refusal {
    /// There is no such cgroup (or it went while it was checked).
    Missing(String),
    /// It exists, but the caller may not limit it.
    Forbidden(String),
}

/// An existing cgroup v2 directory.
pub struct ExistingCgroup {
    path: PathBuf,
    dir: OwnedFd,
}

/// The most bytes of a `cgroup.procs` or `/proc/PID/status` read: a
/// delegated user can fill a cgroup with processes, not make its files
/// endless.
const MAX_READ: u64 = 1 << 20;

impl ExistingCgroup {
    /// Opens `path`, absolute under `mount` or relative to it. `.` and
    /// `..` are refused, so the path cannot leave the hierarchy.
    pub fn open(mount: &Path, path: &Path) -> Result<ExistingCgroup, Refusal> {
        let relative = path.strip_prefix(mount).unwrap_or(path);
        let mut full = mount.to_path_buf();
        for component in relative.components() {
            match component {
                Component::Normal(part) => full.push(part),
                Component::RootDir => {}
                _ => {
                    return Err(Refusal::Forbidden(format!(
                        "{}: '.' and '..' are not accepted; give the cgroup's path under {}",
                        path.display(),
                        mount.display()
                    )));
                }
            }
        }
        if full == mount {
            return Err(Refusal::Forbidden(format!(
                "{} is the root cgroup, which holds every process on the machine; attach to a unit, container or cgroup below it",
                full.display()
            )));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dir = nix::fcntl::open(&full, flags, Mode::empty()).map_err(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => {
                Refusal::Missing(format!("no cgroup {}", full.display()))
            }
            e => Refusal::Forbidden(format!("opening {}: {e}", full.display())),
        })?;
        let on_cgroup2 = fstatfs(&dir).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
        if !on_cgroup2 {
            return Err(Refusal::Forbidden(format!(
                "{} is not a cgroup v2 directory",
                full.display()
            )));
        }
        Ok(ExistingCgroup { path: full, dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, as the BPF attach and query calls take it.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Whether the cgroup has been removed (its unit stopped, its container
    /// ended): its files are gone from the descriptor held.
    pub fn is_gone(&self) -> bool {
        matches!(
            fstatat(&self.dir, "cgroup.procs", nix::fcntl::AtFlags::empty()),
            Err(Errno::ENOENT | Errno::ENODEV)
        )
    }

    /// Refuses the attach unless `caller` may limit the cgroup: root may
    /// (the root cgroup aside, refused on opening); anyone else only a
    /// cgroup delegated to them, whose `cgroup.procs` is theirs and every
    /// process in it or below it theirs by real, effective, saved and
    /// filesystem uid, as `kill` reckons a process one's own.
    pub fn check_caller(&self, caller: Uid) -> Result<(), Refusal> {
        if caller.is_root() {
            return Ok(());
        }
        let forbidden = |why: String| {
            Refusal::Forbidden(format!(
                "{}: {why}; you may attach only to a cgroup delegated to you and holding only your processes (or run throttle as root)",
                self.path.display()
            ))
        };
        let procs = fstatat(&self.dir, "cgroup.procs", nix::fcntl::AtFlags::empty())
            .map_err(|e| forbidden(format!("inspecting cgroup.procs: {e}")))?;
        if procs.st_uid != caller.as_raw() {
            return Err(forbidden(format!(
                "its cgroup.procs belongs to uid {}",
                procs.st_uid
            )));
        }
        for pid in self.pids_below().map_err(|e| forbidden(format!("{e:#}")))? {
            match uids_of(pid) {
                Some(uids) if uids.iter().all(|u| *u == caller.as_raw()) => {}
                // Gone since it was listed: no longer in the way.
                None => {}
                Some(_) => {
                    return Err(forbidden(format!("process {pid} in it is not yours")));
                }
            }
        }
        Ok(())
    }

    /// Every pid in the cgroup and the cgroups below it, read through the
    /// descriptor.
    fn pids_below(&self) -> Result<Vec<u32>> {
        let mut pids = Vec::new();
        let mut pending = vec![openat(
            &self.dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?];
        while let Some(dir) = pending.pop() {
            let procs = openat(
                &dir,
                "cgroup.procs",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .context("opening cgroup.procs")?;
            let mut text = String::new();
            File::from(procs)
                .take(MAX_READ)
                .read_to_string(&mut text)
                .context("reading cgroup.procs")?;
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            let listing = nix::dir::Dir::openat(
                &dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            for entry in listing.into_iter().flatten() {
                let name = entry.file_name();
                if entry.file_type() != Some(nix::dir::Type::Directory)
                    || name.to_bytes() == b"."
                    || name.to_bytes() == b".."
                {
                    continue;
                }
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                pending.push(openat(&dir, name, flags, Mode::empty())?);
            }
        }
        Ok(pids)
    }
}

/// The real, effective, saved and filesystem uids of `pid`, or None once it
/// is gone.
fn uids_of(pid: u32) -> Option<[u32; 4]> {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/status"))
        .ok()?
        .take(MAX_READ)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut uids = line.split_whitespace().filter_map(|u| u.parse().ok());
    Some([uids.next()?, uids.next()?, uids.next()?, uids.next()?])
}
