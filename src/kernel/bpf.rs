//! Loading the embedded eBPF object, attaching it to a run's cgroup, and
//! reading and writing its maps.
//!
//! Every run loads its own copy of the object, so its maps hold exactly one
//! run's limits and counters. Attachment uses bpf_link: a cgroup link
//! coexists with programs others attached to the same or an ancestor cgroup
//! (nested runs compose), and closing the link's fd detaches it, so even a
//! killed wrapper leaves nothing attached.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, SockOps,
        cgroup_skb::CgroupSkbLinkId, sock_ops::SockOpsLinkId,
    },
};
use nix::errno::Errno;
use throttle_common::{Counters, PROG_DOWN, PROG_TUNING, PROG_UP, PerDirection};

use super::maps::{Maps, RunMaps};
use crate::{
    limits::{Limits, Scope},
    privilege::capabilities,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/throttle"));

/// Where on the cgroup a program hangs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Every packet delivered to a socket of the cgroup (the download policer).
    Ingress,
    /// Every packet a socket of the cgroup sends (the upload policer).
    Egress,
    /// TCP socket events (window clamp and pacing, see `throttle_common::sockets`).
    Tuning,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Ingress, Hook::Egress, Hook::Tuning];

    fn program(self) -> &'static str {
        match self {
            Hook::Ingress => PROG_DOWN,
            Hook::Egress => PROG_UP,
            Hook::Tuning => PROG_TUNING,
        }
    }

    /// The kernel's `enum bpf_attach_type` value (include/uapi/linux/bpf.h).
    fn attach_type(self) -> u32 {
        match self {
            Hook::Ingress => 0,
            Hook::Egress => 1,
            Hook::Tuning => 3,
        }
    }
}

enum LinkId {
    Skb(CgroupSkbLinkId),
    SockOps(SockOpsLinkId),
}

/// One program attached to the run's cgroup.
struct Attachment {
    hook: Hook,
    link: LinkId,
    /// Kept from attach time so teardown can check the kernel without
    /// asking the (possibly closed) program for it.
    prog_id: u32,
}

/// The run's programs, attached to its cgroup.
pub struct Programs {
    ebpf: Ebpf,
    maps: RunMaps,
    cgroup: PathBuf,
    attachments: Vec<Attachment>,
}

impl Programs {
    /// Loads the programs, writes `limits` into their maps, and attaches all
    /// of them to the cgroup open at `cgroup_dir`.
    ///
    /// Limits are written before attaching, so the first packet already sees them.
    pub fn attach(cgroup_dir: BorrowedFd<'_>, cgroup: &Path, limits: &Limits) -> Result<Programs> {
        // The programs use no kernel types, so the kernel's 9 MB BTF is not
        // parsed (Ebpf::load parses it twice): that was most of throttle's
        // start-up time. See vendor/aya/THROTTLE-PATCH.md.
        let mut ebpf = EbpfLoader::without_kernel_btf()
            .load(OBJECT)
            .map_err(|e| anyhow!(e))
            .with_context(|| {
                format!(
                    "could not load the eBPF object (needs {}; see 'throttle doctor')",
                    capabilities::names()
                )
            })?;
        let mut programs = Programs {
            maps: RunMaps::take(&mut ebpf)?,
            ebpf,
            cgroup: cgroup.to_path_buf(),
            attachments: Vec::with_capacity(Hook::ALL.len()),
        };
        programs.maps.set_limits(limits)?;
        programs.maps.prime_clocks(limits)?;
        // A fresh object's maps already say "no lists".
        if !limits.scope.is_empty() {
            programs.maps.set_scope(&limits.scope)?;
        }
        programs.load_all()?;
        for hook in Hook::ALL {
            programs.attach_one(hook, cgroup_dir)?;
        }
        Ok(programs)
    }

    /// Loads the programs, each on its own thread. Verification is most of
    /// a run's start-up and the kernel verifies privileged loads side by
    /// side, so the start-up waits for the slowest program rather than for
    /// all three.
    fn load_all(&mut self) -> Result<()> {
        std::thread::scope(|scope| {
            let loads = self
                .ebpf
                .programs_mut()
                .map(|(name, program)| {
                    std::thread::Builder::new()
                        .name("load".into())
                        .spawn_scoped(scope, move || load(name, program))
                        .with_context(|| format!("starting a thread to load {name}"))
                })
                .collect::<Result<Vec<_>>>()?;
            loads.into_iter().try_for_each(|load| {
                load.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        })
    }

    fn attach_one(&mut self, hook: Hook, cgroup_dir: BorrowedFd<'_>) -> Result<()> {
        let name = hook.program();
        let program = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?;
        // The default mode: a cgroup bpf_link already coexists with other
        // programs, and AllowMultiple is refused with EINVAL on some kernels.
        let mode = CgroupAttachMode::default();
        let (info, link) = match hook {
            Hook::Ingress | Hook::Egress => {
                let attach_type = if hook == Hook::Ingress {
                    CgroupSkbAttachType::Ingress
                } else {
                    CgroupSkbAttachType::Egress
                };
                let program = <&mut CgroupSkb>::try_from(program)?;
                let info = program.info();
                let link = program.attach(cgroup_dir, attach_type, mode);
                (info, link.map(LinkId::Skb))
            }
            Hook::Tuning => {
                let program = <&mut SockOps>::try_from(program)?;
                let info = program.info();
                (info, program.attach(cgroup_dir, mode).map(LinkId::SockOps))
            }
        };
        let prog_id = info.context("reading the loaded program's id")?.id();
        let link = link.map_err(|e| anyhow!(e));
        let link = link.with_context(|| {
            format!(
                "could not attach {name} to {} (throttle needs Linux 5.10+ and {})",
                self.cgroup.display(),
                capabilities::names()
            )
        })?;
        self.attachments.push(Attachment {
            hook,
            link,
            prog_id,
        });
        Ok(())
    }

    /// Detaches every program and proves with the kernel's own attachment
    /// list that neither is left on the cgroup.
    pub fn detach(mut self, cgroup_dir: BorrowedFd<'_>) -> Result<()> {
        for attachment in std::mem::take(&mut self.attachments) {
            let name = attachment.hook.program();
            let program = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?;
            let detached = match attachment.link {
                LinkId::Skb(link) => <&mut CgroupSkb>::try_from(program)?.detach(link),
                LinkId::SockOps(link) => <&mut SockOps>::try_from(program)?.detach(link),
            };
            detached
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("detaching {name} from {}", self.cgroup.display()))?;
            let still = attached_program_ids(cgroup_dir, attachment.hook).with_context(|| {
                format!("querying programs attached to {}", self.cgroup.display())
            })?;
            if still.contains(&attachment.prog_id) {
                bail!(
                    "{name} (id {}) is still attached to {} after detaching it",
                    attachment.prog_id,
                    self.cgroup.display()
                );
            }
        }
        Ok(())
    }
}

impl Maps for Programs {
    fn counters(&self) -> Result<PerDirection<Counters>> {
        self.maps.counters()
    }

    fn excluded(&self) -> Result<PerDirection<Counters>> {
        self.maps.excluded()
    }

    fn set_limits(&mut self, limits: &Limits) -> Result<()> {
        self.maps.set_limits(limits)
    }

    fn set_scope(&mut self, scope: &Scope) -> Result<()> {
        self.maps.set_scope(scope)
    }
}

/// Loads one program of the object: the kernel verifies it.
fn load(name: &str, program: &mut Program) -> Result<()> {
    let (kind, loaded) = match program {
        Program::CgroupSkb(program) => ("cgroup_skb", program.load()),
        Program::SockOps(program) => ("sock_ops", program.load()),
        _ => bail!("the eBPF object's program {name} is of a type throttle does not attach"),
    };
    loaded
        .map_err(explain_load)
        .with_context(|| format!("the kernel refused to load the {kind} program {name}"))
}

/// Keeps the verifier's verdict but only its last lines: the full log is
/// hundreds of lines and the cause is at the end. A refusal for want of
/// privilege names what is missing instead: its log says nothing of
/// capabilities. The verifier refuses a bad access with EACCES too, so
/// with every capability held the log decides which it was.
fn explain_load(error: ProgramError) -> anyhow::Error {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = error
    else {
        return anyhow!(error);
    };
    let denied = matches!(
        io_error.raw_os_error().map(Errno::from_raw),
        Some(Errno::EACCES | Errno::EPERM)
    );
    if denied && let Some(missing) = capabilities::missing() {
        return anyhow!(
            "{io_error}: missing capability {missing}; {}",
            capabilities::fix()
        );
    }
    let log = verifier_log.to_string();
    let mut tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty() && !is_statistics(l))
        .take(3)
        .collect();
    tail.reverse();
    match (tail.is_empty(), denied) {
        (false, _) => anyhow!("{io_error}; verifier: {}", tail.join(" | ")),
        (true, true) => anyhow!(
            "{io_error}, although {} are held: a security module (SELinux, \
             AppArmor, lockdown) may forbid eBPF here",
            capabilities::names()
        ),
        (true, false) => anyhow!("{io_error}"),
    }
}

/// The lines the verifier ends every log with, whatever its verdict.
fn is_statistics(line: &str) -> bool {
    ["verification time", "stack depth", "processed "]
        .iter()
        .any(|p| line.starts_with(p))
}

/// Ids of the programs attached directly to a cgroup at one hook, from
/// BPF_PROG_QUERY (aya offers no query for cgroup programs).
pub fn attached_program_ids(cgroup_dir: BorrowedFd<'_>, hook: Hook) -> io::Result<Vec<u32>> {
    // The BPF_PROG_QUERY member of union bpf_attr (include/uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const MAX_PROGS: usize = 64;

    let mut ids = vec![0u32; MAX_PROGS];
    let mut attr = QueryAttr {
        target_fd: cgroup_dir.as_raw_fd() as u32,
        attach_type: hook.attach_type(),
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_PROGS as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid, initialised bpf_attr prefix and prog_ids points
    // to prog_cnt writable u32s that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            std::mem::size_of::<QueryAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use throttle_common::{
        MAP_CLOCK, MAP_COUNTERS, MAP_EXCLUDED, MAP_LIMITS, MAP_NETWORKS, MAP_SCOPE, MAP_TUNING,
    };

    use super::*;

    #[test]
    fn every_name_the_host_opens_is_in_the_object() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for hook in Hook::ALL {
            assert!(
                object.programs.contains_key(hook.program()),
                "no program {} in {:?}",
                hook.program(),
                object.programs.keys().collect::<Vec<_>>()
            );
        }
        for map in [
            MAP_LIMITS,
            MAP_CLOCK,
            MAP_COUNTERS,
            MAP_TUNING,
            MAP_NETWORKS,
            MAP_SCOPE,
            MAP_EXCLUDED,
        ] {
            assert!(
                object.maps.contains_key(map),
                "no map {map} in {:?}",
                object.maps.keys().collect::<Vec<_>>()
            );
        }
    }
}
