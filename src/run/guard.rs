//! The watchdog that cleans up after a wrapper killed with SIGKILL.
//!
//! Drop guards cover every way the wrapper can end except SIGKILL. For that,
//! the wrapper forks a small watchdog before it creates anything. The
//! watchdog holds the read end of a pipe whose only writer is the wrapper; it
//! sleeps in read(2) until the wrapper either says "done" (it cleaned up
//! itself) or dies, which the kernel reports as end of file. On end of file
//! it kills what is left in the run's cgroup, so nothing the command spawned
//! keeps running unthrottled once the programs' links have died with the
//! wrapper's fds, and removes the cgroup and the run's files.
//!
//! The watchdog inherits the run's lock, so the run counts as live until the
//! watchdog is finished and no sweep races it.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::{
    fcntl::OFlag,
    sys::{
        signal::{SigHandler, Signal, signal},
        wait::waitpid,
    },
    unistd::{ForkResult, Pid, fork, pipe2, setsid},
};

use crate::{
    kernel::cgroup,
    privilege::capabilities,
    registry::rundir::{self, RunDir},
};

const DONE: u8 = b'd';
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The wrapper's end of the watchdog: tell it "done" (or drop it) when the
/// run has been torn down.
pub struct Guard {
    pipe: Option<File>,
    watchdog: Pid,
}

/// What the watchdog removes if the wrapper dies.
pub struct Cleanup {
    /// The run's own cgroup; None for an attached run, whose target is
    /// never the watchdog's to touch.
    cgroup: Option<PathBuf>,
    runtime_dir: RunDir,
    name: String,
}

impl Guard {
    /// Forks the watchdog. Must be called while the process has one thread:
    /// the child runs ordinary Rust code after fork.
    ///
    /// The watchdog keeps open the fds in `keep` (the run's lock, so the run
    /// stays registered until it is done) and the runtime directory; it
    /// closes every other fd it inherited.
    pub fn start(cleanup: Cleanup, keep: &[BorrowedFd<'_>]) -> Result<Guard> {
        let keep: Vec<RawFd> = keep
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain([cleanup.runtime_dir.fd().as_raw_fd()])
            .collect();
        // Close-on-exec: a command that inherited the write end would keep the
        // watchdog from ever seeing the wrapper die, and could dismiss it.
        let (read, write) = pipe2(OFlag::O_CLOEXEC).context("creating the watchdog pipe")?;
        // SAFETY: the wrapper is single-threaded here (see above), so the
        // child may allocate and use std freely.
        match unsafe { fork() }.context("forking the watchdog")? {
            ForkResult::Parent { child } => {
                drop(read);
                Ok(Guard {
                    pipe: Some(File::from(write)),
                    watchdog: child,
                })
            }
            ForkResult::Child => {
                drop(write);
                watch(read, &cleanup, &keep)
            }
        }
    }

    /// Tells the watchdog the run was torn down and waits for it to exit.
    pub fn dismiss(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            // If the watchdog is already gone there is nobody to tell.
            let _ = pipe.write_all(&[DONE]);
            drop(pipe);
            let _ = waitpid(self.watchdog, None);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish();
    }
}

fn watch(pipe: OwnedFd, cleanup: &Cleanup, keep: &[RawFd]) -> ! {
    // It removes a cgroup and two files and may have to kill what is left:
    // every other capability of the wrapper goes first, for the whole run.
    if let Err(e) = capabilities::keep_only(&capabilities::kept_by_watchdog()) {
        eprintln!("throttle: watchdog: {e:#}");
    }
    // Out of the wrapper's session, so a terminal's Ctrl-C or hang-up that
    // ends the wrapper does not end its watchdog before it can clean up.
    let _ = setsid();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    close_other_fds(pipe.as_raw_fd(), keep);
    let _ = nix::unistd::chdir("/");
    let _ = nix::sys::prctl::set_name(c"throttle-guard");

    let mut pipe = File::from(pipe);
    let mut byte = [0u8; 1];
    let wrapper_finished = matches!(pipe.read(&mut byte), Ok(1) if byte[0] == DONE);
    if !wrapper_finished {
        clean(cleanup);
    }
    // SAFETY: _exit skips atexit handlers and destructors that belong to the wrapper.
    unsafe { libc::_exit(0) }
}

fn clean(cleanup: &Cleanup) {
    let result = cleanup
        .cgroup
        .as_ref()
        .map_or(Ok(()), |cgroup| cgroup::remove_tree(cgroup, KILL_WAIT))
        .and_then(|()| rundir::remove_run_files(&cleanup.runtime_dir, &cleanup.name));
    // stderr may be gone with the terminal; if so, the next sweep reports instead.
    if let Err(e) = result {
        eprintln!("throttle: cleaning up after run '{}': {e:#}", cleanup.name);
    }
}

/// Closes every fd except stderr, the pipe and `keep`, so the watchdog holds
/// neither the command's terminal input nor the BPF links open.
fn close_other_fds(pipe: RawFd, keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd != libc::STDERR_FILENO && fd != pipe && !keep.contains(&fd) {
            // The directory iterator's own fd is already closed, and nothing
            // in this process uses the others again.
            let _ = nix::unistd::close(fd);
        }
    }
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

impl Cleanup {
    pub fn new(cgroup: Option<&Path>, runtime_dir: &RunDir, name: &str) -> Result<Cleanup> {
        Ok(Cleanup {
            cgroup: cgroup.map(Path::to_path_buf),
            runtime_dir: runtime_dir.try_clone()?,
            name: name.to_string(),
        })
    }
}
