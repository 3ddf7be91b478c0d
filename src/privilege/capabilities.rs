//! Which capabilities a run needs, checked up front so a missing one is
//! named instead of surfacing as an EPERM, or a verifier log, from deep
//! inside a BPF call; and giving them up once they have done their work.

use std::{fs, sync::OnceLock};

use anyhow::{Result, anyhow, bail};
use caps::{CapSet, Capability, CapsHashSet};

pub struct Requirement {
    pub cap: Capability,
    pub why: &'static str,
}

/// What a run needs (on Linux 5.8 and later, where CAP_BPF and CAP_PERFMON
/// split from CAP_SYS_ADMIN; throttle needs 5.10, see [`check_kernel`]).
/// Without CAP_PERFMON the verifier refuses the programs (EACCES): they
/// read kernel memory through pointers, which it allows only to
/// "perfmon-capable" loaders.
const REQUIRED: [Requirement; 3] = [
    Requirement {
        cap: Capability::CAP_BPF,
        why: "to load eBPF programs and create their maps",
    },
    Requirement {
        cap: Capability::CAP_PERFMON,
        why: "for the verifier to accept programs that read socket and packet fields",
    },
    Requirement {
        cap: Capability::CAP_NET_ADMIN,
        why: "to attach programs to the run's cgroup and query them",
    },
];

/// The capabilities a run needs.
pub fn required() -> &'static [Requirement] {
    &REQUIRED
}

/// The oldest kernel throttle runs on.
const OLDEST_KERNEL: (u32, u32) = (5, 10);

/// Fails on a kernel older than [`OLDEST_KERNEL`], naming it, before any
/// program is loaded: such a kernel would refuse them with a verifier log.
pub fn check_kernel() -> Result<()> {
    if kernel_version() < OLDEST_KERNEL {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        bail!(
            "Linux {} is too old: throttle needs {}.{} or later (cgroup bpf_link, and \
             socket-local storage from sock_ops)",
            release.trim(),
            OLDEST_KERNEL.0,
            OLDEST_KERNEL.1
        );
    }
    Ok(())
}

/// The running kernel's (major, minor); (0, 0) if unreadable. Read once:
/// the preflight, the errors and the drop after start all ask.
pub fn kernel_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    })
}

/// The required capabilities' names, joined: "CAP_BPF, CAP_PERFMON and
/// CAP_NET_ADMIN".
pub fn names() -> String {
    let names: Vec<String> = required().iter().map(|r| r.cap.to_string()).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The one command that grants the capabilities [`required`] names.
pub fn fix() -> String {
    let caps: Vec<String> = required()
        .iter()
        .map(|r| r.cap.to_string().to_lowercase())
        .collect();
    format!(
        "run throttle as root (sudo), or grant it: sudo setcap {}+ep \"$(command -v throttle)\" \
         (a run without root also needs a cgroup of its own; 'throttle doctor' checks both)",
        caps.join(",")
    )
}

/// Whether the calling thread has `cap` in effect.
fn effective(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Whether the process holds `requirement`'s capability.
pub fn holds(requirement: &Requirement) -> bool {
    effective(requirement.cap)
}

/// Whether the process may start the command as another user (`--user`).
pub fn can_switch_user() -> bool {
    effective(Capability::CAP_SETUID) && effective(Capability::CAP_SETGID)
}

/// The names of the required capabilities this process lacks, joined.
pub fn missing() -> Option<String> {
    let missing: Vec<String> = required()
        .iter()
        .filter(|r| !holds(r))
        .map(|r| r.cap.to_string())
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Fails naming the first missing capability and how to get it.
pub fn check() -> Result<()> {
    for requirement in required() {
        if !holds(requirement) {
            bail!(
                "missing capability {} ({}); {}",
                requirement.cap,
                requirement.why,
                fix()
            );
        }
    }
    Ok(())
}

/// What the wrapper keeps once the command runs, to serve `throttle set`
/// and `stats` and to take the run down: CAP_BPF for the maps (before
/// Linux 6.5, with unprivileged eBPF disabled, every bpf() call needs it),
/// CAP_NET_ADMIN to query the cgroup's programs
/// at the end; as root, CAP_KILL for signals to a command that is another
/// user (`--user`, or a setuid program) and CAP_DAC_OVERRIDE to remove the
/// cgroup from a parent delegated to the caller. CAP_PERFMON, CAP_SETUID,
/// CAP_SETGID, CAP_CHOWN, CAP_SYS_ADMIN and the rest go: a flaw
/// in the threads that parse what clients send cannot use them.
pub fn kept_after_start() -> Vec<Capability> {
    vec![
        Capability::CAP_BPF,
        Capability::CAP_NET_ADMIN,
        Capability::CAP_KILL,
        Capability::CAP_DAC_OVERRIDE,
    ]
}

/// What the watchdog keeps (see `guard`): as root, CAP_KILL for what a
/// command running as another user left, and CAP_DAC_OVERRIDE to remove the
/// cgroup from a parent delegated to the caller. Its links die with the
/// wrapper, so it needs nothing for BPF.
pub fn kept_by_watchdog() -> Vec<Capability> {
    vec![Capability::CAP_KILL, Capability::CAP_DAC_OVERRIDE]
}

/// Gives up every capability except `keep`, for good: the permitted set
/// is cut, so they cannot be raised again, and the ambient and inheritable
/// sets are cleared. Capabilities are per thread, and threads started
/// later inherit the caller's: call it before starting any that serve.
pub fn keep_only(keep: &[Capability]) -> Result<()> {
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| anyhow!("clearing the {set:?} capabilities: {e}"))?;
    }
    let keep: CapsHashSet = keep.iter().copied().collect();
    let kept: CapsHashSet = caps::read(None, CapSet::Permitted)
        .map_err(|e| anyhow!("reading the permitted capabilities: {e}"))?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &kept)
        .map_err(|e| anyhow!("lowering the effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &kept)
        .map_err(|e| anyhow!("lowering the permitted capabilities: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_names_the_same_capabilities() {
        let names = names();
        let fix = fix();
        for requirement in required() {
            let cap = requirement.cap.to_string();
            assert!(names.contains(&cap), "{names}");
            assert!(fix.contains(&cap.to_lowercase()), "{fix}");
        }
        assert_eq!(names, "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN");
        assert!(!fix.contains("sys_admin"), "{fix}");
    }
}
