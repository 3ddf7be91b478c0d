mod bpf;
use std::os::fd::AsFd;
fn main() -> anyhow::Result<()> {
    let p = std::path::Path::new("/sys/fs/cgroup/unified/throttle-smoke");
    let _ = std::fs::create_dir(p);
    let dir = std::fs::File::open(p)?;
    let lim = throttle_common::Limit { rate: 1 << 20, burst: 65536 };
    let progs = bpf::Programs::attach(dir.as_fd(), p, [lim, lim])?;
    println!("attached; ids in={:?} eg={:?}", bpf::attached_program_ids(dir.as_fd(), aya::programs::CgroupSkbAttachType::Ingress)?, bpf::attached_program_ids(dir.as_fd(), aya::programs::CgroupSkbAttachType::Egress)?);
    println!("{:?}", progs.counters()?);
    progs.detach(dir.as_fd())?;
    println!("detached ok");
    std::fs::remove_dir(p)?;
    Ok(())
}
