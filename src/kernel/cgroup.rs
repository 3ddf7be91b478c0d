//! The cgroup v2 side: finding the hierarchy, choosing where a run's cgroup
//! lives, and creating, emptying and removing it.

use std::{
    fs::{self, File},
    io,
    os::fd::{AsFd, FromRawFd as _},
    path::{Component, Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    sys::signal::Signal,
    unistd::{Pid, Uid},
};

/// Directory under the cgroup2 mount that holds top-level runs.
pub const RUNS_DIR: &str = "throttle";

/// Finds the cgroup2 mount point in /proc/self/mountinfo: /sys/fs/cgroup on
/// a pure v2 system, /sys/fs/cgroup/unified on a hybrid one.
pub fn find_mount() -> Result<PathBuf> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_mountinfo(&text).context(
        "cgroup v2 is not mounted (no cgroup2 line in /proc/self/mountinfo); \
         mount it with: mount -t cgroup2 none /sys/fs/cgroup/unified",
    )
}

fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (head, tail) = line.split_once(" - ")?;
        let fstype = tail.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(head.split_whitespace().nth(4)?)))
    })
}

/// Mount points escape space, tab, newline and backslash as octal (\040).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The calling process's own cgroup v2 directory.
pub fn own_cgroup(mount: &Path) -> Result<PathBuf> {
    cgroup_of(mount, "self")
}

/// The cgroup v2 directory of process `who` (a pid, or `self`).
pub fn cgroup_of(mount: &Path, who: &str) -> Result<PathBuf> {
    let file = format!("/proc/{who}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .with_context(|| format!("{file} has no cgroup v2 (0::) entry"))?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// The name of run `name`'s cgroup: the run's name for root's runs, and
/// `name@UID` for the runs of user UID (sudo runs included), so runs of
/// different users may share a name, as their runtime directories let
/// them. `@` is not allowed in run names: no run of root's is named so.
pub fn leaf(name: &str, owner: Uid) -> String {
    if owner.is_root() {
        name.to_string()
    } else {
        format!("{name}@{owner}")
    }
}

/// The run name and owner a cgroup named `leaf` (see [`leaf`]) is for.
pub fn run_of_leaf(leaf: &str) -> (&str, Uid) {
    match leaf
        .rsplit_once('@')
        .map(|(name, uid)| (name, uid.parse::<u32>()))
    {
        Some((name, Ok(uid))) if uid != 0 => (name, Uid::from_raw(uid)),
        _ => (leaf, Uid::from_raw(0)),
    }
}

/// What a run without root needs when it may not create its cgroup.
pub const NO_CGROUP: &str = "a run without root needs a cgroup delegated to you: with systemd, \
throttle gets one from your user manager, which a login through PAM starts (desktop, ssh, login) \
and 'loginctl enable-linger' keeps running for jobs without a login; none answers here \
($XDG_RUNTIME_DIR/systemd/private); without systemd, see docs/without-root.md for the \
one-time root step; or run throttle as root (sudo)";

/// Where a run's cgroup goes. Inside another run (a nested throttle), it must
/// be a child of that run's cgroup so the outer programs still see its
/// packets. From the root cgroup, runs are gathered under `<mount>/throttle`.
/// Anywhere else (a systemd service, a CI job's cgroup) it stays a child of
/// the caller's cgroup, so the command keeps the caller's resource limits.
pub fn run_parent(mount: &Path, own: &Path) -> PathBuf {
    if own == mount {
        mount.join(RUNS_DIR)
    } else {
        own.to_path_buf()
    }
}

/// The parent for this process's runs: [`run_parent`] of its own cgroup.
pub fn runs_parent(mount: &Path) -> Result<PathBuf> {
    Ok(run_parent(mount, &own_cgroup(mount)?))
}

/// Refuses, for a run as root, a parent cgroup delegated to a user other
/// than the run's `owner`: whoever owns a cgroup's `cgroup.procs` can move
/// every process below it elsewhere, out of the run's limits, and kill them
/// all through `cgroup.kill`. A parent delegated to the owner themselves is
/// allowed: it is where sudo puts any command they start from their desktop
/// session, and they own the run's limits anyway.
pub fn check_delegation(mount: &Path, parent: &Path, owner: Uid) -> Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    for dir in parent.ancestors().take_while(|dir| *dir != mount) {
        let procs = dir.join("cgroup.procs");
        let uid = match fs::metadata(&procs) {
            Ok(meta) => std::os::unix::fs::MetadataExt::uid(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", procs.display())),
        };
        if uid != 0 && uid != owner.as_raw() {
            bail!(
                "cgroup {} is delegated to uid {uid}, who could move the command out of its \
                 limits or kill it; start throttle from a cgroup that user does not control",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The cgroup a dead run's lock file names, if it can be one of throttle's
/// runs: a plain absolute path strictly below the cgroup2 mount, whose last
/// component is `name`, the run's cgroup name ([`leaf`]), and neither the
/// mount nor the directory that gathers runs. Anything else is refused, so
/// that no record, however it came to be written, makes the sweep kill
/// what is not a run.
pub fn recorded_run(mount: &Path, recorded: &str, name: &str) -> Result<PathBuf> {
    let path = Path::new(recorded);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.as_os_str() == path.components().collect::<PathBuf>().as_os_str();
    if !plain {
        bail!("not a plain absolute path");
    }
    let below = path
        .strip_prefix(mount)
        .ok()
        .filter(|rel| rel.components().next().is_some())
        .with_context(|| format!("not below the cgroup2 mount {}", mount.display()))?;
    if below == Path::new(RUNS_DIR) {
        bail!("the directory that gathers runs, not a run");
    }
    if path.file_name() != Some(std::ffi::OsStr::new(name)) {
        bail!("not a cgroup named after the run '{name}'");
    }
    Ok(path.to_path_buf())
}

/// A run's cgroup, removed with everything in it when dropped.
pub struct RunCgroup {
    path: PathBuf,
    dir: File,
    removed: bool,
}

impl RunCgroup {
    /// Creates the cgroup; it must not exist yet.
    pub fn create(path: &Path) -> Result<RunCgroup> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("creating {}; {NO_CGROUP}", parent.display()))?;
        }
        if let Err(e) = fs::create_dir(path) {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => NO_CGROUP,
                io::ErrorKind::AlreadyExists => "another run uses this name; pick one with --name",
                _ => "see 'throttle doctor'",
            };
            return Err(e).with_context(|| format!("creating cgroup {}; {hint}", path.display()));
        }
        let dir = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(RunCgroup {
            path: path.to_path_buf(),
            dir,
            removed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup directory, as the BPF attach and query calls take it.
    pub fn dir(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Removes the cgroup: see [`remove_tree`].
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_tree(&self.path, KILL_WAIT)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = remove_tree(&self.path, KILL_WAIT)
        {
            eprintln!("throttle: {e:#}");
        }
    }
}

/// How long to wait for SIGKILLed processes to leave a cgroup.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// Whether any process is in the cgroup or its descendants.
pub fn is_populated(path: &Path) -> Result<bool> {
    let events = path.join("cgroup.events");
    let text =
        fs::read_to_string(&events).with_context(|| format!("reading {}", events.display()))?;
    Ok(text.lines().any(|line| line == "populated 1"))
}

/// Pids of the processes directly in the cgroup.
pub fn pids(path: &Path) -> Result<Vec<Pid>> {
    let procs = path.join("cgroup.procs");
    let text =
        fs::read_to_string(&procs).with_context(|| format!("reading {}", procs.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect())
}

/// Sends `signal` to every process in the cgroup and its descendants.
///
/// A pid read from `cgroup.procs` may belong to another process by the
/// time it is signalled, if its own exited and the pid was reused: each
/// process is opened as a pidfd first, which names that one process for
/// good, and is signalled through it only if it is still in this cgroup.
pub fn signal_all(path: &Path, signal: Signal) -> Result<()> {
    let mount = find_mount()?;
    for dir in subtree(path)? {
        for pid in pids(&dir)? {
            match signal_member(&mount, path, pid, signal) {
                Ok(()) => {}
                // It exited (or left) since the list was read.
                Err(Errno::ESRCH) => {}
                Err(e) => return Err(e).with_context(|| format!("sending {signal} to {pid}")),
            }
        }
    }
    Ok(())
}

/// Signals `pid` through a pidfd if that process is inside `cgroup`;
/// ESRCH if it is not (any more).
fn signal_member(mount: &Path, cgroup: &Path, pid: Pid, signal: Signal) -> nix::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd's process was alive when opened; if it still is after the
    // read (signal 0 through the pidfd), /proc/PID was its own.
    let inside = cgroup_of(mount, &pid.to_string()).is_ok_and(|of| of.starts_with(cgroup));
    send(&pidfd, 0)?;
    if !inside {
        return Err(Errno::ESRCH);
    }
    send(&pidfd, signal as i32)
}

fn send(pidfd: &std::os::fd::OwnedFd, signal: i32) -> nix::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: pidfd_send_signal takes a pidfd, a signal, no siginfo and no
    // flags; it reads no memory of ours.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(sent).map(drop)
}

/// Freezes (or thaws) every process in the cgroup and its descendants
/// through `cgroup.freeze` (Linux 5.2).
pub fn freeze(path: &Path, frozen: bool) -> Result<()> {
    let file = path.join("cgroup.freeze");
    fs::write(&file, if frozen { "1" } else { "0" })
        .with_context(|| format!("writing {}", file.display()))
}

/// Waits until the cgroup is empty; false on timeout.
pub fn wait_empty(path: &Path, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_populated(path)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(POLL);
    }
}

/// Kills every process in the cgroup and its descendants (cgroup.kill,
/// Linux 5.14+, with a SIGKILL sweep as the fallback) and waits for them to go.
pub fn kill_all(path: &Path, timeout: Duration) -> Result<()> {
    let kill_file = path.join("cgroup.kill");
    if kill_file.exists() {
        fs::write(&kill_file, "1").with_context(|| format!("writing {}", kill_file.display()))?;
    } else {
        signal_all(path, Signal::SIGKILL)?;
    }
    if !wait_empty(path, timeout)? {
        bail!(
            "processes in {} survived SIGKILL for {timeout:?}",
            path.display()
        );
    }
    Ok(())
}

/// Kills what is left in the cgroup, then removes it and any nested cgroups,
/// deepest first. A cgroup that is already gone is not an error.
pub fn remove_tree(path: &Path, timeout: Duration) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if is_populated(path)? {
        kill_all(path, timeout)?;
    }
    for dir in subtree(path)?.into_iter().rev() {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
    Ok(())
}

/// The cgroup and all its descendants, parents before children.
fn subtree(path: &Path) -> Result<Vec<PathBuf>> {
    let mut all = vec![path.to_path_buf()];
    let mut next = 0;
    while next < all.len() {
        let dir = all[next].clone();
        next += 1;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.push(entry.path());
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_inside_the_cgroup_is_signalled() {
        if !Uid::effective().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root under CI"
            );
            eprintln!("SKIPPED: needs root (a scratch cgroup)");
            return;
        }
        let mount = find_mount().unwrap();
        let scratch = mount.join(format!("throttle-unit-signal-{}", std::process::id()));
        fs::create_dir(&scratch).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(sleeper.id() as i32);
        let outside = signal_member(&mount, &scratch, pid, Signal::SIGKILL);
        let untouched = sleeper.try_wait().unwrap().is_none();
        fs::write(scratch.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        let inside = signal_member(&mount, &scratch, pid, Signal::SIGKILL);
        let status = sleeper.wait().unwrap();
        fs::remove_dir(&scratch).unwrap();
        assert_eq!(outside, Err(Errno::ESRCH));
        assert!(untouched, "a process outside the cgroup was killed");
        assert_eq!(inside, Ok(()));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const PURE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
29 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_the_unified_mount_on_hybrid_systems() {
        assert_eq!(
            parse_mountinfo(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_the_mount_on_pure_v2_systems_with_optional_fields() {
        assert_eq!(parse_mountinfo(PURE), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_line_means_none() {
        assert_eq!(
            parse_mountinfo("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
        assert_eq!(parse_mountinfo(""), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let line = "50 1 0:40 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            parse_mountinfo(line),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }

    #[test]
    fn only_records_that_can_name_a_run_are_believed() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let ok = |recorded: &str, name: &str| recorded_run(mount, recorded, name);
        assert_eq!(
            ok("/sys/fs/cgroup/unified/throttle/wget-1", "wget-1").unwrap(),
            mount.join("throttle/wget-1")
        );
        assert!(ok("/sys/fs/cgroup/unified/system.slice/ci.service/job", "job").is_ok());
        for (recorded, name) in [
            ("/sys/fs/cgroup/unified", "unified"),
            ("/sys/fs/cgroup/unified/", "unified"),
            ("/sys/fs/cgroup/unified/throttle", "throttle"),
            ("/sys/fs/cgroup/unified/victim", "evil"),
            ("/sys/fs/cgroup/unified/throttle/../victim", "victim"),
            ("/sys/fs/cgroup/unified/./victim", "victim"),
            ("/sys/fs/cgroup/unified//victim", "victim"),
            ("/sys/fs/cgroup/unified/throttle/x/", "x"),
            ("/sys/fs/cgroup/unifiedx/victim", "victim"),
            ("/etc/victim", "victim"),
            ("sys/fs/cgroup/unified/victim", "victim"),
            ("", "x"),
        ] {
            assert!(ok(recorded, name).is_err(), "{recorded:?} was believed");
        }
    }

    #[test]
    fn runs_from_the_root_cgroup_are_gathered_under_one_directory() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(run_parent(mount, mount), mount.join("throttle"));
        assert_eq!(leaf("build", Uid::from_raw(0)), "build");
        assert_eq!(leaf("build", Uid::from_raw(1000)), "build@1000");
        assert_eq!(run_of_leaf("build@1000"), ("build", Uid::from_raw(1000)));
        assert_eq!(run_of_leaf("build"), ("build", Uid::from_raw(0)));
        assert_eq!(run_of_leaf("a@b"), ("a@b", Uid::from_raw(0)));
        let nested = mount.join("throttle/outer");
        assert_eq!(run_parent(mount, &nested), nested);
        let service = mount.join("system.slice/ci.service");
        assert_eq!(run_parent(mount, &service), service);
    }
}
