//! A cgroup for ordinary users' runs, from their systemd user manager.
//!
//! A user's login session (an SSH or console login, a desktop terminal) sits
//! in a cgroup the user may not write, so a run cannot create its cgroup
//! there. systemd delegates a cgroup to a user only through their own
//! manager (`systemd --user`): a transient scope with `Delegate=yes`, which
//! is what `systemd-run --user --scope -p Delegate=yes` asks for over D-Bus.
//! throttle re-executes itself through exactly that command: systemd-run
//! registers its own process in the new scope and then execs throttle in
//! place, so the pid, the terminal, signals and the exit status stay the
//! caller's, and the run then creates its own cgroup inside the scope as it
//! would anywhere. Running systemd-run rather than speaking D-Bus keeps a
//! D-Bus client and its dependencies out of a binary that holds
//! capabilities; systemd-run gets none of them (an exec of a file without
//! capabilities clears them, and throttle sets no ambient ones).
//!
//! podman's rootless mode does the same (it asks the user manager for a
//! scope when its cgroup is not delegated).

use std::{
    ffi::OsString,
    os::unix::{fs::FileTypeExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use nix::unistd::{AccessFlags, Uid};

/// Where systemd-run is looked for: fixed places, not `$PATH`.
const SYSTEMD_RUN: [&str; 2] = ["/usr/bin/systemd-run", "/bin/systemd-run"];

/// The scope's unit name for this process, e.g. `throttle-4242.scope`: the
/// pid survives systemd-run's exec, so the re-executed throttle knows it
/// has been through here and does not ask again.
fn unit() -> String {
    format!("throttle-{}.scope", std::process::id())
}

/// Whether this process already sits in the scope [`enter`] asked for.
pub fn entered(own: &Path) -> bool {
    own.file_name().is_some_and(|name| *name == *unit())
}

/// The user manager's private socket, which systemd-run --user talks to,
/// if this session has a manager.
fn manager_socket() -> Option<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")?;
    let socket = Path::new(&runtime).join("systemd/private");
    std::fs::symlink_metadata(&socket)
        .is_ok_and(|meta| meta.file_type().is_socket())
        .then_some(socket)
}

/// Moves this process into a delegated scope of the user's systemd manager
/// when it is not root, may not create cgroups under `parent` (the run's
/// parent, [`crate::kernel::cgroup::runs_parent`]), has not been moved already, and
/// a manager answers; then this call does not return. Otherwise it returns
/// and the run goes on where it is (and fails there with the hint of
/// [`crate::kernel::cgroup::NO_CGROUP`] if it may not create its cgroup).
pub fn enter(parent: &Path, own: &Path) -> Result<()> {
    if Uid::effective().is_root() || writable(parent) || entered(own) {
        return Ok(());
    }
    let (Some(systemd_run), Some(manager)) = (
        SYSTEMD_RUN.iter().map(Path::new).find(|p| p.exists()),
        manager_socket(),
    ) else {
        return Ok(());
    };
    // Once exec'd, systemd-run's own failure would be this process's exit
    // status, which the caller would take for the command's: make sure
    // first that the manager is there to answer it.
    answers(&manager)?;
    let exe = std::env::current_exe().context("finding throttle's own executable")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let error = Command::new(systemd_run)
        .args(["--user", "--scope", "--quiet", "--collect"])
        .args(["--property=Delegate=yes", "--unit"])
        .arg(unit())
        .arg("--")
        .arg(&exe)
        .args(&args)
        .exec();
    Err(error).with_context(|| format!("running {}", systemd_run.display()))
}

/// Fails, naming the fix, unless the manager listens at `socket` and accepts
/// a connection within a second (a stale socket refuses; a manager that
/// hangs fills its backlog).
fn answers(socket: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    match crate::connect::within(socket, deadline) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "your systemd user manager does not answer at {} ({e}), and a run needs it for a \
             cgroup of its own; restart it ('systemctl --user daemon-reexec') or log in again",
            socket.display()
        ),
    }
}

/// Whether this user may create a cgroup under `parent`, or under the
/// nearest part of it that exists.
pub fn writable(parent: &Path) -> bool {
    let existing = parent
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    nix::unistd::access(existing, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_process_own_scope_counts_as_entered() {
        let app =
            Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice");
        assert!(entered(&app.join(unit())));
        assert!(!entered(&app.join("throttle-1.scope")));
        assert!(!entered(&app.join("run-r0123.scope")));
        assert!(!entered(Path::new(
            "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope"
        )));
    }

    #[test]
    fn a_manager_that_does_not_answer_is_named_before_systemd_run_could_fail() {
        let dir = std::env::temp_dir().join(format!("throttle-scope-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let socket = dir.join("private");
        // A manager that died: its socket file is there, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let error = answers(&socket).unwrap_err().to_string();
        let listening = std::os::unix::net::UnixListener::bind(dir.join("live")).unwrap();
        let live = answers(&dir.join("live"));
        drop(listening);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(error.contains("does not answer"), "{error}");
        assert!(error.contains("daemon-reexec"), "{error}");
        assert!(live.is_ok());
    }

    #[test]
    fn a_missing_parent_is_judged_by_the_nearest_directory_that_exists() {
        let dir = std::env::temp_dir();
        assert!(writable(&dir.join("no-such-run/deeper")) == writable(&dir));
    }
}
