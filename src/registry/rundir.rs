//! Runtime directories: where runs keep their lock files and control
//! sockets, and the one way throttle reaches into them.
//!
//! A privileged throttle must not be turned against the machine through a
//! path another user can write (SECURITY.md, "Threat model"). So a directory is
//! reached from `/` one component at a time with O_NOFOLLOW, every step
//! owned by root or by the directory's expected owner and writable by nobody
//! else unless sticky (the checks systemd-tmpfiles and sudo make on their
//! paths), and is then held open: every file in it is created, opened,
//! inspected, bound, connected to and removed relative to that descriptor,
//! never through a path that could be swapped in between.

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Component, Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    dir::Dir,
    errno::Errno,
    fcntl::{AT_FDCWD, AtFlags, Flock, FlockArg, OFlag, openat, renameat},
    sys::{
        socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, getsockopt, listen, socket,
            sockopt::PeerCredentials,
        },
        stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat},
    },
    unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, unlinkat},
};

use crate::connect;

/// Root's runs; the runs of users who started throttle with sudo live in
/// `user-UID` directories below it.
pub const ROOT_DIR: &str = "/run/throttle";
const USER_DIR_PREFIX: &str = "user-";
pub const LOCK_SUFFIX: &str = ".lock";
pub const SOCKET_SUFFIX: &str = ".sock";

/// Why an entry of a runtime directory could not be reached, typed where
/// callers branch on it: a missing entry or a taken name is routine, an
/// untrusted one is another user's doing. Each carries its message with
/// context, and context added on the way never changes the variant.
#[derive(Debug)]
pub enum Error {
    /// Nothing by that name: removed since it was listed, or never made.
    Missing(anyhow::Error),
    /// The name is taken.
    Exists(anyhow::Error),
    /// Not what it must be: a link, another user's, or writable by others.
    Untrusted(anyhow::Error),
    /// Any other failure.
    Io(anyhow::Error),
}

impl Error {
    /// A failed call on `what`, by its errno.
    fn of(errno: Errno, what: String) -> Error {
        let error = anyhow!(errno).context(what);
        match errno {
            Errno::ENOENT => Error::Missing(error),
            Errno::EEXIST => Error::Exists(error),
            _ => Error::Io(error),
        }
    }

    fn untrusted(message: String) -> Error {
        Error::Untrusted(anyhow!(message))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Missing(e) | Error::Exists(e) | Error::Untrusted(e) | Error::Io(e) => {
                write!(f, "{e:#}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The file run `name` holds its lock in (see `registration`).
pub fn lock_file(name: &str) -> String {
    format!("{name}{LOCK_SUFFIX}")
}

/// The file run `name` serves its control socket at (see `control`).
pub fn socket_file(name: &str) -> String {
    format!("{name}{SOCKET_SUFFIX}")
}

/// Removes run `name`'s files from `dir`; missing ones are fine.
pub fn remove_run_files(dir: &RunDir, name: &str) -> Result<()> {
    dir.remove(&socket_file(name))?;
    dir.remove(&lock_file(name))
}

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

/// Who may write a runtime directory, which decides what is trusted in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keeper {
    /// Root alone: /run/throttle and the sudo runs' directories below it.
    Root,
    /// One user, in their own 0700 directory.
    User(Uid),
}

impl Keeper {
    /// The uid of the wrappers that write records and serve sockets here.
    fn uid(self) -> Uid {
        match self {
            Keeper::Root => Uid::from_raw(0),
            Keeper::User(uid) => uid,
        }
    }
}

/// An open, verified runtime directory.
pub struct RunDir {
    path: PathBuf,
    fd: OwnedFd,
    keeper: Keeper,
}

impl RunDir {
    /// The directory a new run of `owner` registers in, created if missing:
    /// as root, /run/throttle (root 0711) or, under sudo, its `user-UID`
    /// (root:GID 0750, so only that user may list it and nobody but root may
    /// write it); otherwise the user's own runtime directory (0700).
    pub fn for_runs_of(owner: (Uid, Gid)) -> Result<RunDir> {
        if Uid::effective().is_root() {
            let root = root_dir_child(Path::new("/run"), "throttle", 0o711, Gid::from_raw(0))?;
            if owner.0.is_root() {
                return Ok(root);
            }
            return root_dir_child(
                &root.path,
                &format!("{USER_DIR_PREFIX}{}", owner.0),
                0o750,
                owner.1,
            );
        }
        let path = match user_dir(owner.0) {
            UserDir::Fixed(path) => path,
            UserDir::InTmp => return tmp_dir_for(owner.0),
        };
        let (parent, name) = split(&path)?;
        let parent = walk(parent, owner.0)?;
        make_dir(&parent, name, 0o700, &path)?;
        RunDir::open(&path, Keeper::User(owner.0))?
            .with_context(|| format!("{} vanished as it was created", path.display()))
    }

    /// Opens an existing directory kept by `keeper`; None if it does not exist.
    fn open(path: &Path, keeper: Keeper) -> Result<Option<RunDir>> {
        let fd = match walk(path, keeper.uid()) {
            Ok(fd) => fd,
            Err(Error::Missing(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let dir = RunDir {
            path: path.to_path_buf(),
            fd,
            keeper,
        };
        dir.verify()?;
        Ok(Some(dir))
    }

    /// The directory holding the socket at `socket` (THROTTLE_SOCKET), kept
    /// by whoever owns it, and the socket's file name.
    pub fn of_socket(socket: &Path) -> Result<(RunDir, String)> {
        let (parent, file) = split(socket)?;
        let file = file
            .to_str()
            .filter(|f| f.strip_suffix(SOCKET_SUFFIX).is_some_and(valid_name))
            .with_context(|| format!("{} is not a run's control socket", socket.display()))?;
        // The owner read here only says which checks to make; the walk
        // and verify() re-check it on the descriptor.
        let uid = std::fs::symlink_metadata(parent)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .with_context(|| format!("inspecting {}", parent.display()))?;
        let keeper = if uid == 0 {
            Keeper::Root
        } else {
            Keeper::User(Uid::from_raw(uid))
        };
        let dir = RunDir::open(parent, keeper)?
            .with_context(|| format!("{} does not exist", parent.display()))?;
        Ok((dir, file.to_string()))
    }

    fn verify(&self) -> Result<()> {
        let stat =
            fstat(&self.fd).with_context(|| format!("inspecting {}", self.path.display()))?;
        let (uid, mode) = (stat.st_uid, stat.st_mode & 0o7777);
        let open_to = match self.keeper {
            Keeper::Root => 0o022,
            Keeper::User(_) => 0o077,
        };
        if uid != self.keeper.uid().as_raw() {
            bail!(
                "{} belongs to uid {uid}, not uid {}; throttle never adopts a directory: {}",
                self.path.display(),
                self.keeper.uid(),
                not_adopted_hint(&self.path, uid)
            );
        }
        if mode & open_to != 0 {
            bail!(
                "{} is open to other users (mode {mode:04o}); remove it or make it {}",
                self.path.display(),
                if open_to == 0o022 { "0755" } else { "0700" }
            );
        }
        Ok(())
    }

    /// This directory opened for reading.
    fn reopen(&self) -> Result<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        openat(&self.fd, ".", flags, Mode::empty())
            .with_context(|| format!("opening {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The user whose runs register here: root in /run/throttle, UID in
    /// its `user-UID` directory below it, the user in their own.
    pub fn runs_owner(&self) -> Uid {
        match self.keeper {
            Keeper::User(uid) => uid,
            Keeper::Root => self
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(USER_DIR_PREFIX))
                .and_then(|uid| uid.parse::<u32>().ok())
                .map_or(Uid::from_raw(0), Uid::from_raw),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn try_clone(&self) -> Result<RunDir> {
        Ok(RunDir {
            path: self.path.clone(),
            fd: self.fd.try_clone().with_context(|| {
                format!("duplicating the descriptor of {}", self.path.display())
            })?,
            keeper: self.keeper,
        })
    }

    /// The uid of the wrappers whose sockets are here (root in root's
    /// directories, sudo runs included).
    pub fn server_uid(&self) -> Uid {
        self.keeper.uid()
    }

    /// Names of the runs with a `suffix` file here; entries that are not
    /// run names, and `.sock` entries that are not sockets (a FIFO, a
    /// link), are not throttle's and are passed over.
    pub fn names(&self, suffix: &str) -> Result<Vec<String>> {
        let mut dir = Dir::from_fd(self.reopen()?)
            .with_context(|| format!("listing {}", self.path.display()))?;
        let mut names: Vec<String> = dir
            .iter()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().to_str().ok()?.strip_suffix(suffix)?;
                valid_name(name).then(|| name.to_string())
            })
            .filter(|name| suffix != SOCKET_SUFFIX || self.is_socket(&socket_file(name)))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates the lock file `file` (0600) already locked and holding
    /// `record`: it is made without a name (O_TMPFILE), locked and written,
    /// and only then linked in, so no other process ever finds it unlocked
    /// or empty and takes it for a dead run's. Fails with EEXIST if `file`
    /// exists.
    pub fn create_locked(&self, file: &str, record: &[u8]) -> Result<Flock<File>, Error> {
        let shown = self.path.join(file);
        let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, ".", flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::of(e, format!("creating a file in {}", self.path.display())))?;
        let mut lock = Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::of(e, format!("locking the new {}", shown.display())))?;
        lock.write_all(record)
            .with_context(|| format!("writing {}", shown.display()))
            .map_err(Error::Io)?;
        let unnamed = format!("/proc/self/fd/{}", lock.as_raw_fd());
        linkat(
            AT_FDCWD,
            unnamed.as_str(),
            &self.fd,
            file,
            AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(|e| Error::of(e, format!("creating {}", shown.display())))?;
        Ok(lock)
    }

    /// Opens the existing lock file `file` without following a link or
    /// blocking. It must be a regular file with one link, written by the uid
    /// whose runs live here.
    pub fn open_lock(&self, file: &str) -> Result<File, Error> {
        let shown = self.path.join(file);
        let flags = OFlag::O_RDWR
            | OFlag::O_CLOEXEC
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY;
        // Checked before opening as well as after, so that no FIFO or device
        // planted under a lock's name is ever opened.
        let stat = self
            .stat(file)
            .map_err(|e| Error::of(e, format!("inspecting {}", shown.display())))?;
        self.check_lock(&stat, &shown)?;
        let fd = openat(&self.fd, file, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::of(e, format!("opening {}", shown.display())))?;
        let file_handle = File::from(fd);
        let stat = fstat(&file_handle)
            .map_err(|e| Error::of(e, format!("inspecting {}", shown.display())))?;
        self.check_lock(&stat, &shown)?;
        Ok(file_handle)
    }

    fn check_lock(&self, stat: &FileStat, shown: &Path) -> Result<(), Error> {
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(Error::untrusted(format!(
                "{} is not a regular file; ignoring it",
                shown.display()
            )));
        }
        if stat.st_nlink != 1 {
            return Err(Error::untrusted(format!(
                "{} has {} hard links; ignoring it",
                shown.display(),
                stat.st_nlink
            )));
        }
        if stat.st_uid != self.server_uid().as_raw() {
            return Err(Error::untrusted(format!(
                "{} belongs to uid {}, not uid {}; ignoring it",
                shown.display(),
                stat.st_uid,
                self.server_uid()
            )));
        }
        Ok(())
    }

    fn stat(&self, file: &str) -> nix::Result<FileStat> {
        fstatat(&self.fd, file, AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    /// Whether `file` here is still the file open as `open`.
    pub fn holds(&self, file: &str, open: &File) -> bool {
        match (self.stat(file), fstat(open)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    fn is_socket(&self, file: &str) -> bool {
        self.stat(file).is_ok_and(|stat| {
            SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK
        })
    }

    pub fn contains(&self, file: &str) -> bool {
        self.stat(file).is_ok()
    }

    /// Removes the entry `file` (a link is removed, never followed); a
    /// missing one is fine.
    pub fn remove(&self, file: &str) -> Result<()> {
        match unlinkat(&self.fd, file, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("removing {}", self.path.join(file).display()))
            }
        }
    }

    /// `file` reached through this descriptor, for bind and connect, which
    /// take paths: /proc/self/fd/N/FILE resolves to this very directory.
    fn through_fd(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{file}", self.fd.as_raw_fd()))
    }

    /// Creates the listening socket `file`, mode 0600 from the start and
    /// owned by `owner`. It is bound under a staging name (never a run's:
    /// it starts with a dot) and renamed into place once it listens, so a
    /// client that finds the socket can always connect to it.
    pub fn bind(&self, file: &str, owner: (Uid, Gid)) -> Result<UnixListener> {
        let shown = self.path.join(file);
        let staging = format!(".{file}.new");
        self.remove(&staging)?;
        let socket = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("creating a Unix socket")?;
        // Linux gives the socket file the mode of the socket's inode (less
        // the umask) at bind, so it never exists with a wider one.
        fchmod(&socket, Mode::from_bits_truncate(0o600))
            .context("setting the control socket's mode")?;
        let address = UnixAddr::new(&self.through_fd(&staging))
            .with_context(|| format!("addressing {}", shown.display()))?;
        bind(socket.as_raw_fd(), &address)
            .with_context(|| format!("binding control socket {}", shown.display()))?;
        if owner.0 != Uid::effective() {
            // Only root hands a socket to another user, and only in a
            // directory nobody else can write, so the entry cannot have
            // been swapped since bind.
            if self.keeper != Keeper::Root || !Uid::effective().is_root() {
                bail!(
                    "refusing to hand {} to uid {}: {} is not root's",
                    shown.display(),
                    owner.0,
                    self.path.display()
                );
            }
            fchownat(
                &self.fd,
                staging.as_str(),
                Some(owner.0),
                Some(owner.1),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("handing {} to uid {}", shown.display(), owner.0))?;
        }
        listen(&socket, Backlog::new(64).unwrap_or(Backlog::MAXCONN))
            .with_context(|| format!("listening on {}", shown.display()))?;
        renameat(&self.fd, staging.as_str(), &self.fd, file)
            .with_context(|| format!("putting {} in place", shown.display()))?;
        Ok(UnixListener::from(socket))
    }

    /// Connects to the socket `file` by `deadline`: only a socket, never a
    /// link, served by the uid whose runs live here; anything else is
    /// refused before a byte is sent.
    /// Returns the stream and the server's pid, as the kernel recorded it
    /// when the socket began to listen.
    pub fn connect(&self, file: &str, deadline: Instant) -> io::Result<(UnixStream, u32)> {
        let shown = self.path.join(file);
        let stat = self.stat(file).map_err(io::Error::from)?;
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a socket", shown.display()),
            ));
        }
        let stream = connect::within(&self.through_fd(file), deadline)?;
        let peer = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        if peer.uid() != self.server_uid().as_raw() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is served by uid {}, not by uid {} whose runs live there; not talking to it",
                    shown.display(),
                    peer.uid(),
                    self.server_uid()
                ),
            ));
        }
        let pid = u32::try_from(peer.pid()).unwrap_or_default();
        Ok((stream, pid))
    }
}

fn valid_name(name: &str) -> bool {
    throttle_cli::run_name(name).is_ok()
}

fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => bail!("{} has no parent directory", path.display()),
    }
}

/// Where a non-root user's runs register.
enum UserDir {
    /// `$XDG_RUNTIME_DIR/throttle` or `/run/user/UID/throttle`: inside a
    /// directory only the user (and root) may write.
    Fixed(PathBuf),
    /// Neither exists (no logind: cron, `su`, containers): a directory of
    /// the user's own in /tmp, see [`tmp_dir_for`].
    InTmp,
}

/// A non-root user's runtime directory: $XDG_RUNTIME_DIR/throttle, else
/// /run/user/UID/throttle, else one in /tmp.
fn user_dir(uid: Uid) -> UserDir {
    if uid == Uid::effective()
        && let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())
    {
        return UserDir::Fixed(Path::new(&dir).join("throttle"));
    }
    let user_run = PathBuf::from(format!("/run/user/{uid}"));
    if user_run.is_dir() {
        UserDir::Fixed(user_run.join("throttle"))
    } else {
        UserDir::InTmp
    }
}

/// What to do about a directory another uid made where a user's runs would
/// go: only its maker or root can remove it from a directory like /run.
fn not_adopted_hint(path: &Path, maker: u32) -> String {
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR")
        && path.starts_with(&xdg)
    {
        return format!(
            "XDG_RUNTIME_DIR={} is not your own runtime directory: unset it or set it to yours",
            Path::new(&xdg).display()
        );
    }
    if maker == 0 {
        "it is root's: ask root to remove it".into()
    } else {
        format!("uid {maker} made it: ask them or root to remove it")
    }
}

const TMP: &str = "/tmp";

/// The prefix of uid's directories in /tmp: `throttle-UID-`, then a
/// creation stamp, so that the oldest sorts first.
fn tmp_prefix(uid: Uid) -> String {
    format!("throttle-{uid}-")
}

/// uid's directories in /tmp that pass every check, oldest first, and the
/// entries of theirs that do not. An entry of that name made by anyone else
/// is not theirs and not a failure: anybody may create names in /tmp, so a
/// name alone never makes a directory a user's, and no name another user
/// takes first can stop that user's runs (a fixed name such as
/// `/tmp/throttle-UID` could).
fn tmp_dirs_of(uid: Uid) -> (Vec<RunDir>, Vec<String>) {
    let prefix = tmp_prefix(uid);
    let (mut dirs, mut refused) = (Vec::new(), Vec::new());
    for (path, owner) in tmp_entries(|name| {
        name.strip_prefix(&prefix).is_some_and(|stamp| {
            !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    }) {
        if owner != uid.as_raw() {
            continue;
        }
        match RunDir::open(&path, Keeper::User(uid)) {
            Ok(Some(dir)) => dirs.push(dir),
            Ok(None) => {}
            Err(e) => refused.push(format!("passing over {}: {e:#}", path.display())),
        }
    }
    (dirs, refused)
}

/// Entries of /tmp named as uid's directories (or as the fixed
/// `/tmp/throttle-UID` earlier builds used) that another user made: they
/// stop nothing, but `doctor` names them, with their makers.
pub fn planted_for(uid: Uid) -> Vec<(PathBuf, u32)> {
    let (fixed, prefix) = (format!("throttle-{uid}"), tmp_prefix(uid));
    tmp_entries(|name| name == fixed || name.starts_with(&prefix))
        .into_iter()
        .filter(|(_, owner)| *owner != uid.as_raw())
        .collect()
}

/// Entries of /tmp whose names `wanted` accepts, with their owners, sorted
/// by name; links are not followed.
fn tmp_entries(wanted: impl Fn(&str) -> bool) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(TMP) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u32)> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(&wanted))
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((entry.path(), std::os::unix::fs::MetadataExt::uid(&meta)))
        })
        .collect();
    found.sort();
    found
}

/// The runtime directory in /tmp of the caller `uid`: the oldest of theirs,
/// or a new one (0700, with a fresh name) if they have none. Two first runs
/// that race both create one; each then keeps the oldest and removes its
/// own if that is not it, so both end in the same directory.
fn tmp_dir_for(uid: Uid) -> Result<RunDir> {
    if let Some(dir) = tmp_dirs_of(uid).0.into_iter().next() {
        return Ok(dir);
    }
    let tmp = walk(Path::new(TMP), uid)?;
    let name = fresh_tmp_name(&tmp, uid)?;
    let path = Path::new(TMP).join(&name);
    let mine = RunDir::open(&path, Keeper::User(uid))?
        .with_context(|| format!("{} vanished as it was created", path.display()))?;
    let oldest = tmp_dirs_of(uid).0.into_iter().next();
    match oldest {
        Some(oldest) if oldest.path != mine.path => {
            // Ours is empty: nothing has registered in it yet.
            let _ = unlinkat(&tmp, name.as_str(), UnlinkatFlags::RemoveDir);
            Ok(oldest)
        }
        _ => Ok(mine),
    }
}

/// Creates a new directory of uid's in /tmp, 0700, named after the time so
/// that names sort by age; a name someone took first is passed over.
fn fresh_tmp_name(tmp: &OwnedFd, uid: Uid) -> Result<String> {
    for attempt in 0..16u32 {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "{}{stamp:024}{:08x}{attempt:x}",
            tmp_prefix(uid),
            std::process::id()
        );
        match mkdirat(tmp, name.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {
                // The umask may have taken more than group and others' bits.
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
                let fd = openat(tmp, name.as_str(), flags, Mode::empty())
                    .with_context(|| format!("opening {TMP}/{name}"))?;
                fchmod(&fd, Mode::from_bits_truncate(0o700))
                    .with_context(|| format!("setting the mode of {TMP}/{name}"))?;
                return Ok(name);
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {TMP}/{name}")),
        }
    }
    bail!("could not create a directory of uid {uid}'s in {TMP}: every name was taken")
}

/// Creates (or checks) root's directory `name` in `parent`: owned by root
/// and `group`, exactly `mode`. An existing one that anybody but root could
/// have written is refused, never repaired.
fn root_dir_child(parent: &Path, name: &str, mode: u32, group: Gid) -> Result<RunDir> {
    let path = parent.join(name);
    let parent_fd = walk(parent, Uid::from_raw(0))?;
    make_dir(&parent_fd, OsStr::new(name), mode, &path)?;
    let dir = RunDir::open(&path, Keeper::Root)?
        .with_context(|| format!("{} vanished as it was created", path.display()))?;
    // fchown and fchmod need a descriptor opened for reading, not O_PATH.
    let readable = dir.reopen()?;
    let stat = fstat(&readable).with_context(|| format!("inspecting {}", path.display()))?;
    if stat.st_gid != group.as_raw() {
        fchown(&readable, None, Some(group))
            .with_context(|| format!("setting the group of {} to {group}", path.display()))?;
    }
    if stat.st_mode & 0o7777 != mode {
        fchmod(&readable, Mode::from_bits_truncate(mode))
            .with_context(|| format!("setting the mode of {} to {mode:04o}", path.display()))?;
    }
    Ok(dir)
}

fn make_dir(parent: &OwnedFd, name: &OsStr, mode: u32, shown: &Path) -> Result<()> {
    match mkdirat(parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", shown.display())),
    }
}

/// Opens the directory `path` from `/` one component at a time without
/// following links. Every component must be owned by root or `owner`, and
/// one that others may write must be sticky (as /tmp is), so nobody else can
/// have put or swapped anything on the way.
fn walk(path: &Path, owner: Uid) -> Result<OwnedFd, Error> {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(Error::untrusted(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    // O_PATH needs only search permission, as for a user passing through
    // /run/throttle (0711); listing reopens the directory for reading.
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let mut reached = PathBuf::from("/");
    let mut fd = nix::fcntl::open("/", flags, Mode::empty())
        .map_err(|e| Error::of(e, "opening /".into()))?;
    check_step(&fd, &reached, owner)?;
    for component in components {
        let Component::Normal(part) = component else {
            return Err(Error::untrusted(format!(
                "{} has '.' or '..' in it",
                path.display()
            )));
        };
        reached.push(part);
        fd = match openat(&fd, part, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let what = match fstatat(&fd, part, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(s) if s.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() => {
                        "a symbolic link"
                    }
                    _ => "not a directory",
                };
                return Err(Error::untrusted(format!(
                    "{} is {what}; throttle does not follow links in its paths: remove it",
                    reached.display()
                )));
            }
            Err(e) => return Err(Error::of(e, format!("opening {}", reached.display()))),
        };
        check_step(&fd, &reached, owner)?;
    }
    Ok(fd)
}

fn check_step(fd: &OwnedFd, path: &Path, owner: Uid) -> Result<(), Error> {
    let stat = fstat(fd).map_err(|e| Error::of(e, format!("inspecting {}", path.display())))?;
    if stat.st_uid != 0 && stat.st_uid != owner.as_raw() {
        return Err(Error::untrusted(format!(
            "{} belongs to uid {}, neither root nor uid {owner}; refusing a path another user controls",
            path.display(),
            stat.st_uid
        )));
    }
    let sticky = stat.st_mode & Mode::S_ISVTX.bits() != 0;
    if stat.st_mode & 0o022 != 0 && !sticky {
        return Err(Error::untrusted(format!(
            "{} may be written by other users (mode {:04o}); refusing a path another user controls",
            path.display(),
            stat.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Runtime directories found: those that passed their checks, and a line
/// for each that did not (a warning; the listing or sweep is incomplete).
#[derive(Default)]
pub struct Found {
    pub dirs: Vec<RunDir>,
    pub refused: Vec<String>,
}

impl Found {
    fn open(&mut self, path: PathBuf, keeper: Keeper) {
        match RunDir::open(&path, keeper) {
            Ok(Some(dir)) => self.dirs.push(dir),
            Ok(None) => {}
            Err(e) => self
                .refused
                .push(format!("passing over {}: {e:#}", path.display())),
        }
    }

    fn own_dirs_of(&mut self, uid: Uid, fixed: UserDir) {
        match fixed {
            UserDir::Fixed(path) => self.open(path, Keeper::User(uid)),
            UserDir::InTmp => self.tmp_dirs_of(uid),
        }
    }

    fn tmp_dirs_of(&mut self, uid: Uid) {
        let (dirs, refused) = tmp_dirs_of(uid);
        self.dirs.extend(dirs);
        self.refused.extend(refused);
    }

    /// Root's runtime directory and those of its sudo users' runs.
    fn root_dirs(&mut self) {
        self.open(PathBuf::from(ROOT_DIR), Keeper::Root);
        for path in sudo_dirs() {
            self.open(path, Keeper::Root);
        }
    }
}

/// The directories whose runs this process may list and manage: its own,
/// its sudo runs', and for root everyone's.
pub fn visible() -> Found {
    let me = Uid::effective();
    let mut found = Found::default();
    if me.is_root() {
        found.root_dirs();
        for (uid, entry) in numbered_entries(Path::new("/run/user"), "") {
            found.open(entry.join("throttle"), Keeper::User(uid));
        }
        let mut uids: Vec<Uid> = tmp_entries(|name| tmp_uid(name).is_some())
            .into_iter()
            .filter_map(|(path, owner)| {
                let uid = tmp_uid(path.file_name()?.to_str()?)?;
                (uid.as_raw() == owner).then_some(uid)
            })
            .collect();
        uids.dedup();
        for uid in uids {
            found.tmp_dirs_of(uid);
        }
    } else {
        found.own_dirs_of(me, user_dir(me));
        found.open(
            Path::new(ROOT_DIR).join(format!("{USER_DIR_PREFIX}{me}")),
            Keeper::Root,
        );
    }
    found
}

/// The uid in the name of a user's directory in /tmp, `throttle-UID-STAMP`.
fn tmp_uid(name: &str) -> Option<Uid> {
    let (uid, stamp) = name.strip_prefix("throttle-")?.split_once('-')?;
    (!stamp.is_empty()).then_some(())?;
    uid.parse().ok().map(Uid::from_raw)
}

/// The directories whose dead runs this process cleans up: for root, its
/// own and its sudo runs' (other users' directories are left to their
/// owners); for anyone else, their own.
pub fn sweepable() -> Found {
    let me = Uid::effective();
    let mut found = Found::default();
    if me.is_root() {
        found.root_dirs();
    } else {
        found.own_dirs_of(me, user_dir(me));
    }
    found
}

fn sudo_dirs() -> Vec<PathBuf> {
    numbered_entries(Path::new(ROOT_DIR), USER_DIR_PREFIX)
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// Entries of `parent` named `prefix` + a uid, with that uid.
fn numbered_entries(parent: &Path, prefix: &str) -> Vec<(Uid, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Uid, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let uid = std::str::from_utf8(name.as_bytes())
                .ok()?
                .strip_prefix(prefix)?
                .parse::<u32>()
                .ok()?;
            Some((Uid::from_raw(uid), entry.path()))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}
