//! Which capabilities a run needs, checked up front so a missing one is
//! named instead of surfacing as an EPERM from deep inside a BPF call.

use anyhow::{Result, bail};
use caps::{CapSet, Capability};

pub struct Requirement {
    /// Any one of these is enough.
    pub any_of: &'static [Capability],
    pub why: &'static str,
}

pub const REQUIRED: [Requirement; 2] = [
    Requirement {
        any_of: &[Capability::CAP_BPF, Capability::CAP_SYS_ADMIN],
        why: "to load eBPF programs and create their maps",
    },
    Requirement {
        any_of: &[Capability::CAP_NET_ADMIN],
        why: "to attach cgroup_skb programs",
    },
];

pub const FIX: &str = "run throttle as root (sudo), or grant it: \
sudo setcap cap_bpf,cap_net_admin,cap_sys_admin+ep \"$(command -v throttle)\"";

/// Whether the process holds one of `requirement`'s capabilities.
pub fn holds(requirement: &Requirement) -> bool {
    requirement
        .any_of
        .iter()
        .any(|cap| caps::has_cap(None, CapSet::Effective, *cap).unwrap_or(false))
}

/// Fails naming the first missing capability and how to get it.
pub fn check() -> Result<()> {
    for requirement in &REQUIRED {
        if !holds(requirement) {
            bail!(
                "missing capability {} ({}); {FIX}",
                names(requirement),
                requirement.why
            );
        }
    }
    Ok(())
}

pub fn names(requirement: &Requirement) -> String {
    let names: Vec<String> = requirement.any_of.iter().map(|c| c.to_string()).collect();
    names.join(" or ")
}
