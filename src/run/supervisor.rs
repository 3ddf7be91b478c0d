//! Starting the command inside the run's cgroup, forwarding signals to it,
//! waiting for it, and dealing with what it leaves behind.

use std::{
    ffi::{OsStr, OsString},
    io,
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill},
        wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid},
    },
    unistd::Pid,
};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP, SIGUSR1, SIGUSR2, SIGWINCH},
    iterator::{
        SignalsInfo,
        exfiltrator::{WithOrigin, origin::Origin},
    },
    low_level::siginfo::Cause,
};

use super::spawn;
use crate::{
    exit,
    kernel::cgroup::{self, RunCgroup},
    privilege::identity::Identity,
};

/// Signals the wrapper passes on to the command.
pub const FORWARDED: [i32; 7] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH];

/// What to do with processes the command leaves in the cgroup.
pub struct Leftovers {
    pub kill_after: Duration,
    pub wait_all: bool,
}

/// Handlers for the forwarded signals, installed before anything is created
/// so that a signal arriving during set-up is held and passed on to the
/// command once it exists rather than killing the wrapper half-way.
pub struct Forwarding {
    signals: SignalsInfo<WithOrigin>,
    own_session: bool,
}

impl Forwarding {
    /// `own_session`: the command will run in a session of its own (as
    /// another user, see [`spawn::spawn_in_cgroup`]), out of reach of the
    /// terminal's signals, so the wrapper passes those on too and stops the
    /// command with itself on Ctrl-Z.
    pub fn install(own_session: bool) -> Result<Forwarding> {
        let mut wanted = FORWARDED.to_vec();
        if own_session {
            wanted.push(SIGTSTP);
        }
        let signals =
            SignalsInfo::<WithOrigin>::new(wanted).context("installing signal handlers")?;
        Ok(Forwarding {
            signals,
            own_session,
        })
    }
}

/// Runs `command` inside `cgroup`, as `identity` if given, calls `started`
/// once it runs and before any signal is forwarded, and returns the exit
/// status the wrapper should mirror.
pub fn run(
    command: &[OsString],
    env: &[(OsString, OsString)],
    identity: Option<&Identity>,
    cgroup: &RunCgroup,
    forwarding: Forwarding,
    leftovers: &Leftovers,
    started: impl FnOnce() -> Result<()>,
) -> Result<i32> {
    let child = match spawn::spawn_in_cgroup(command, env, cgroup.dir(), identity) {
        Ok(child) => child,
        Err(e) => return Ok(exec_failure(&command[0], &e)),
    };
    started()?;

    let exited = Arc::new(Mutex::new(false));
    let handle = forwarding.signals.handle();
    let forwarder = {
        let exited = Arc::clone(&exited);
        let cgroup = cgroup.path().to_path_buf();
        let (mut signals, own_session) = (forwarding.signals, forwarding.own_session);
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || forward(&mut signals, own_session, child, &exited, &cgroup))
            .context("starting the signal forwarding thread")?
    };

    let status = wait(child, &exited);
    let result = status.and_then(|code| {
        deal_with_leftovers(cgroup.path(), leftovers)?;
        Ok(code)
    });
    handle.close();
    let _ = forwarder.join();
    result
}

fn exec_failure(program: &OsStr, error: &io::Error) -> i32 {
    let program = program.to_string_lossy();
    match error.kind() {
        io::ErrorKind::NotFound => {
            eprintln!("throttle: {program}: command not found");
            exit::NOT_FOUND.into()
        }
        _ => {
            eprintln!("throttle: cannot run {program}: {error}");
            exit::NOT_EXECUTABLE.into()
        }
    }
}

/// Waits for the command to exit and returns its status as an exit code.
///
/// The child is reaped only after `exited` is set, under the same lock the
/// forwarder takes, so a signal is never sent to a recycled pid.
fn wait(child: Pid, exited: &Mutex<bool>) -> Result<i32> {
    loop {
        match waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("waiting for the command (pid {child})"));
            }
        }
    }
    let mut exited = exited.lock().unwrap_or_else(|p| p.into_inner());
    *exited = true;
    let status =
        waitpid(child, None).with_context(|| format!("reaping the command (pid {child})"))?;
    Ok(match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => exit::signalled(signal as i32),
        other => unreachable!("waitpid without WUNTRACED returned {other:?}"),
    })
}

fn forward(
    signals: &mut SignalsInfo<WithOrigin>,
    own_session: bool,
    child: Pid,
    exited: &Mutex<bool>,
    cgroup: &Path,
) {
    for Origin { signal, cause, .. } in signals.forever() {
        // A terminal's Ctrl-C, Ctrl-\ and resize are sent by the kernel to
        // the whole foreground process group, the command included; passing
        // them on would deliver them twice. Only signals someone sent to the
        // wrapper itself (kill, timeout, a CI runner) are forwarded, unless
        // the command sits in a session of its own, which the terminal's
        // signals never reach.
        if !own_session && !matches!(cause, Cause::Sent(_)) {
            continue;
        }
        if signal == SIGTSTP {
            stop_with_the_command(cgroup);
            continue;
        }
        let Ok(signal) = Signal::try_from(signal) else {
            continue;
        };
        let exited = exited.lock().unwrap_or_else(|p| p.into_inner());
        let result = if *exited {
            // The command is gone; its leftovers are what the user is waiting on.
            cgroup::signal_all(cgroup, signal)
        } else {
            match kill(child, signal) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(e) => Err(e.into()),
            }
        };
        if let Err(e) = result {
            eprintln!("throttle: forwarding {signal}: {e:#}");
        }
    }
}

/// Ctrl-Z for a command in a session of its own: the run's cgroup is
/// frozen, the wrapper stops as the shell expects, and when the shell
/// continues it (`fg`, `bg`) the cgroup thaws.
fn stop_with_the_command(cgroup: &Path) {
    if let Err(e) = cgroup::freeze(cgroup, true) {
        eprintln!("throttle: stopping the command: {e:#}");
    }
    // SIGSTOP stops every thread of the wrapper, this one included; it
    // returns once the wrapper is continued.
    if let Err(e) = nix::sys::signal::raise(Signal::SIGSTOP) {
        eprintln!("throttle: stopping: {e}");
    }
    if let Err(e) = cgroup::freeze(cgroup, false) {
        eprintln!("throttle: continuing the command: {e:#}");
    }
}

/// Ends (or, with --wait-all, waits for) the processes the command left in
/// the cgroup: SIGTERM, then SIGKILL after `kill_after`.
fn deal_with_leftovers(cgroup: &Path, leftovers: &Leftovers) -> Result<()> {
    if !cgroup::is_populated(cgroup)? {
        return Ok(());
    }
    if leftovers.wait_all {
        while !cgroup::wait_empty(cgroup, Duration::from_secs(3600))? {}
        return Ok(());
    }
    cgroup::signal_all(cgroup, Signal::SIGTERM)?;
    if !cgroup::wait_empty(cgroup, leftovers.kill_after)? {
        cgroup::kill_all(cgroup, Duration::from_secs(5))?;
    }
    Ok(())
}
