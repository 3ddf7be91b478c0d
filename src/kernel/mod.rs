//! What throttle asks of the kernel: cgroups (`cgroup`), and the eBPF
//! programs attached to them with their maps (`bpf`, `maps`).

pub(crate) mod bpf;
pub(crate) mod cgroup;
mod maps;

pub(crate) use maps::Maps;
