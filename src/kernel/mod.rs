//! What throttle asks of the kernel: cgroups, its own (`cgroup`) and those
//! `throttle attach` holds (`existing`), and the eBPF programs attached to
//! them with their maps (`bpf`, `maps`).

pub(crate) mod bpf;
pub(crate) mod cgroup;
pub(crate) mod existing;
mod maps;

pub(crate) use maps::Maps;
