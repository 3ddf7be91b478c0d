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
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, cgroup_skb::CgroupSkbLinkId,
    },
};
use throttle_common::{
    Counters, DIRECTIONS, DOWN, Limit, MAP_COUNTERS, MAP_LIMITS, PROG_DOWN, PROG_UP, UP,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/throttle"));

/// One program attached to the run's cgroup.
struct Attachment {
    program: &'static str,
    attach_type: CgroupSkbAttachType,
    link: CgroupSkbLinkId,
    /// Kept from attach time so teardown can check the kernel without
    /// asking the (possibly closed) program for it.
    prog_id: u32,
}

/// The run's programs, attached to its cgroup.
pub struct Programs {
    ebpf: Ebpf,
    cgroup: PathBuf,
    attachments: Vec<Attachment>,
}

impl Programs {
    /// Loads the programs, writes `limits` (indexed by direction) into their
    /// maps, and attaches both to the cgroup open at `cgroup_dir`.
    ///
    /// Limits are written before attaching, so the first packet already sees them.
    pub fn attach(
        cgroup_dir: BorrowedFd<'_>,
        cgroup: &Path,
        limits: [Limit; 2],
    ) -> Result<Programs> {
        let ebpf = Ebpf::load(OBJECT).map_err(|e| anyhow!(e)).context(
            "could not load the eBPF object (needs CAP_BPF and CAP_NET_ADMIN; see 'throttle doctor')",
        )?;
        let mut programs = Programs {
            ebpf,
            cgroup: cgroup.to_path_buf(),
            attachments: Vec::with_capacity(2),
        };
        programs.set_limit(DOWN, limits[DOWN as usize])?;
        programs.set_limit(UP, limits[UP as usize])?;
        programs.attach_one(PROG_DOWN, CgroupSkbAttachType::Ingress, cgroup_dir)?;
        programs.attach_one(PROG_UP, CgroupSkbAttachType::Egress, cgroup_dir)?;
        Ok(programs)
    }

    fn attach_one(
        &mut self,
        name: &'static str,
        attach_type: CgroupSkbAttachType,
        cgroup_dir: BorrowedFd<'_>,
    ) -> Result<()> {
        let program: &mut CgroupSkb = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a cgroup_skb program"))?;
        program
            .load()
            .map_err(explain_load)
            .with_context(|| format!("the kernel refused to load the cgroup_skb program {name}"))?;
        let prog_id = program
            .info()
            .context("reading the loaded program's id")?
            .id();
        // The default mode: a cgroup bpf_link already coexists with other
        // programs, and AllowMultiple is refused with EINVAL on some kernels.
        let link = program
            .attach(cgroup_dir, attach_type, CgroupAttachMode::default())
            .map_err(|e| anyhow!(e))
            .with_context(|| {
                format!(
                    "could not attach {name} to {} (cgroup bpf_link needs Linux 5.7+ and CAP_NET_ADMIN)",
                    self.cgroup.display()
                )
            })?;
        self.attachments.push(Attachment {
            program: name,
            attach_type,
            link,
            prog_id,
        });
        Ok(())
    }

    /// Replaces a direction's limit; the programs read it on the next packet.
    pub fn set_limit(&mut self, direction: u32, limit: Limit) -> Result<()> {
        let mut limits: Array<_, Limit> = Array::try_from(
            self.ebpf
                .map_mut(MAP_LIMITS)
                .context("the eBPF object has no LIMITS map")?,
        )?;
        limits
            .set(direction, limit, 0)
            .with_context(|| format!("writing the limit for direction {direction}"))
    }

    /// The counters of both directions, summed over CPUs.
    pub fn counters(&self) -> Result<[Counters; DIRECTIONS as usize]> {
        let map: PerCpuArray<_, Counters> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_COUNTERS)
                .context("the eBPF object has no COUNTERS map")?,
        )?;
        let mut totals = [Counters::default(); DIRECTIONS as usize];
        for (direction, total) in (0..DIRECTIONS).zip(totals.iter_mut()) {
            for cpu in map.get(&direction, 0)?.iter() {
                total.accumulate(cpu);
            }
        }
        Ok(totals)
    }

    /// Detaches both programs and proves with the kernel's own attachment
    /// list that neither is left on the cgroup.
    pub fn detach(mut self, cgroup_dir: BorrowedFd<'_>) -> Result<()> {
        for attachment in std::mem::take(&mut self.attachments) {
            let program: &mut CgroupSkb = self
                .ebpf
                .program_mut(attachment.program)
                .with_context(|| format!("the eBPF object has no program {}", attachment.program))?
                .try_into()?;
            program
                .detach(attachment.link)
                .map_err(|e| anyhow!(e))
                .with_context(|| {
                    format!(
                        "detaching {} from {}",
                        attachment.program,
                        self.cgroup.display()
                    )
                })?;
            let still =
                attached_program_ids(cgroup_dir, attachment.attach_type).with_context(|| {
                    format!("querying programs attached to {}", self.cgroup.display())
                })?;
            if still.contains(&attachment.prog_id) {
                bail!(
                    "{} (id {}) is still attached to {} after detaching it",
                    attachment.program,
                    attachment.prog_id,
                    self.cgroup.display()
                );
            }
        }
        Ok(())
    }
}

/// Keeps the verifier's verdict but only its last lines: the full log is
/// hundreds of lines and the cause is at the end.
fn explain_load(error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                anyhow!("{io_error}")
            } else {
                anyhow!("{io_error}; verifier: {}", tail.join(" | "))
            }
        }
        other => anyhow!(other),
    }
}

/// Ids of the programs attached directly to a cgroup for one attach type,
/// from BPF_PROG_QUERY (aya offers no query for cgroup_skb).
pub fn attached_program_ids(
    cgroup_dir: BorrowedFd<'_>,
    attach_type: CgroupSkbAttachType,
) -> io::Result<Vec<u32>> {
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
    const BPF_CGROUP_INET_INGRESS: u32 = 0;
    const BPF_CGROUP_INET_EGRESS: u32 = 1;
    const MAX_PROGS: usize = 64;

    let mut ids = vec![0u32; MAX_PROGS];
    let mut attr = QueryAttr {
        target_fd: cgroup_dir.as_raw_fd() as u32,
        attach_type: match attach_type {
            CgroupSkbAttachType::Ingress => BPF_CGROUP_INET_INGRESS,
            CgroupSkbAttachType::Egress => BPF_CGROUP_INET_EGRESS,
        },
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
