//! The laboratory that the integration tests and xtask's demo, bench and
//! soak share: network namespaces with a server in them, transfers timed by
//! the byte, cgroups holding processes to attach to, what /proc says of
//! runs, and what the kernel holds as bpftool lists it. It only ever touches what it creates, and reads the rest.

pub mod bpftool;
pub mod cgroup;
pub mod netlab;
pub mod procfs;
