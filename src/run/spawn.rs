//! Starting the command directly inside the run's cgroup with
//! clone3(CLONE_INTO_CGROUP).
//!
//! Forking first and then writing the child into cgroup.procs works too, but
//! the migration takes the kernel's cgroup_threadgroup_rwsem for writing,
//! which waits for an RCU grace period: about 16 ms, half of throttle's
//! start-up. A child born in the cgroup takes no such lock, and is inside
//! the cgroup before its first instruction, so its first socket is too.
//! CLONE_INTO_CGROUP needs Linux 5.7, as the cgroup bpf_links do.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::ffi::OsStrExt as _,
    },
};

use nix::unistd::{Pid, getpid};

use crate::{exit, privilege::identity::Identity};

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2), from
/// include/uapi/linux/sched.h.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts `command` (looked up in the wrapper's PATH) with exactly the
/// environment `env`, as a child born inside the cgroup open at
/// `cgroup_dir`, as `identity` if given. The child dies with SIGKILL if the
/// wrapper's main thread dies (the caller must be the main thread). Returns
/// the child's pid once exec has succeeded, or the error of exec or of the
/// switch of user.
///
/// A command started as another user gets a session of its own, without a
/// controlling terminal: on the caller's terminal it could otherwise push
/// keystrokes into the caller's shell with TIOCSTI (the CVE-2016-2779
/// class), which the kernel allows only to processes whose controlling
/// terminal it is. `su -c` and `runuser -c` call setsid for the same
/// reason; see SECURITY.md, "Threat model".
pub fn spawn_in_cgroup(
    command: &[OsString],
    env: &[(OsString, OsString)],
    cgroup_dir: BorrowedFd<'_>,
    identity: Option<&Identity>,
) -> io::Result<Pid> {
    // Everything the child needs is built here: between clone and exec a
    // child of a multi-threaded process may not allocate.
    let argv_owned = command
        .iter()
        .map(|a| cstring(a))
        .collect::<io::Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp_owned = env
        .iter()
        .map(|(key, value)| {
            let mut entry = key.clone();
            entry.push("=");
            entry.push(value);
            cstring(&entry)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut envp: Vec<*const libc::c_char> = envp_owned.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let switch = identity.map(|id| Switch {
        uid: id.uid.as_raw(),
        gid: id.gid.as_raw(),
        groups: id.groups.iter().map(|g| g.as_raw()).collect(),
    });

    // exec's errno travels back on a close-on-exec pipe: EOF means exec worked.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let wrapper = getpid().as_raw();

    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: a fork-like clone3 (no new stack, no shared memory). The child
    // branch below only makes async-signal-safe calls on memory prepared
    // above, then execs or _exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; this is the child and never returns.
        unsafe { child(&argv, &envp, switch.as_ref(), writer.as_raw_fd(), wrapper) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(writer);
    let pid = Pid::from_raw(pid as i32);
    let mut errno = [0u8; 4];
    let n = loop {
        match nix::unistd::read(&reader, &mut errno) {
            Err(nix::errno::Errno::EINTR) => {}
            read => break read?,
        }
    };
    if n == 0 {
        return Ok(pid);
    }
    // exec failed: the child has _exited; reap it so it leaves no zombie.
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(if n == 4 {
        io::Error::from_raw_os_error(i32::from_ne_bytes(errno))
    } else {
        io::Error::other("the command's child process failed before exec")
    })
}

/// The ids a child takes before exec, prepared before the clone.
struct Switch {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// The child between clone3 and exec.
///
/// # Safety
/// Only to be called in the child of a fork-like clone; `argv` and `envp`
/// are null-terminated arrays of valid C strings.
unsafe fn child(
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    switch: Option<&Switch>,
    report: libc::c_int,
    wrapper: libc::pid_t,
) -> ! {
    /// Sends errno to the parent and exits; the parent reports the errno and
    /// gives its own status, so this one is only seen if the parent is gone.
    unsafe fn fail(report: libc::c_int) -> ! {
        // SAFETY: async-signal-safe calls on a local buffer.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(report, errno.to_ne_bytes().as_ptr().cast(), 4);
            libc::_exit(exit::NOT_FOUND.into())
        }
    }
    // SAFETY: the whole body makes async-signal-safe system calls on memory
    // prepared before the clone.
    unsafe {
        // If the wrapper is SIGKILLed, its bpf_links close and the command
        // would run on unthrottled: take it down too.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(report);
        }
        if libc::getppid() != wrapper {
            *libc::__errno_location() = libc::ESRCH;
            fail(report);
        }
        // The command starts as if the wrapper were not there: Rust ignores
        // SIGPIPE at start-up, and exec keeps ignored signals and the mask.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Raw system calls, not libc's setuid family: those signal every
        // thread glibc knows of to switch them too, and after a raw clone3
        // glibc still counts the wrapper's threads. Groups first, then the
        // group, then the user, which gives up the right to the other two;
        // a change of uid from 0 clears every capability.
        if let Some(switch) = switch {
            let groups = (switch.groups.len(), switch.groups.as_ptr());
            if libc::setsid() < 0
                || libc::syscall(libc::SYS_setgroups, groups.0, groups.1) != 0
                || libc::syscall(libc::SYS_setresgid, switch.gid, switch.gid, switch.gid) != 0
                || libc::syscall(libc::SYS_setresuid, switch.uid, switch.uid, switch.uid) != 0
            {
                fail(report);
            }
            // A change of credentials clears the parent-death signal: set it
            // again, and check again that the wrapper did not die meanwhile.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                fail(report);
            }
            if libc::getppid() != wrapper {
                *libc::__errno_location() = libc::ESRCH;
                fail(report);
            }
        }
        libc::execvpe(argv[0], argv.as_ptr(), envp.as_ptr());
        fail(report)
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", s.to_string_lossy()),
        )
    })
}
