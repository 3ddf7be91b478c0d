//! Types and arithmetic shared by the eBPF programs and the `throttle` binary.
//!
//! Everything here is `no_std` and allocation-free so the same code runs in
//! the kernel and in host unit tests.
#![no_std]

pub mod fairness;
pub mod packet;
pub mod policer;
pub mod sockets;
pub mod units;

/// Index of the download (ingress) direction in the per-direction maps.
pub const DOWN: u32 = 0;
/// Index of the upload (egress) direction in the per-direction maps.
pub const UP: u32 = 1;
/// Number of entries in each per-direction map.
pub const DIRECTIONS: u32 = 2;

/// Names of the maps in the eBPF object, shared so neither side can drift.
pub const MAP_LIMITS: &str = "LIMITS";
pub const MAP_CLOCK: &str = "CLOCK";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_SOCKETS: &str = "SOCKETS";
/// Names of the programs in the eBPF object (kernel program names are cut at 15 bytes).
pub const PROG_DOWN: &str = "throttle_down";
pub const PROG_UP: &str = "throttle_up";
pub const PROG_SOCKETS: &str = "throttle_socks";

/// A direction's limit as userspace writes it into the `LIMITS` map.
///
/// `rate == 0` means unlimited: packets pass and are still counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// Bytes per second.
    pub rate: u64,
    /// Bucket depth in bytes: how far ahead of the rate a burst may run.
    pub burst: u64,
}

/// Per-direction traffic counters, kept per CPU in the kernel and summed by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub passed_bytes: u64,
    pub passed_packets: u64,
    pub dropped_bytes: u64,
    pub dropped_packets: u64,
}

impl Counters {
    /// Adds another CPU's counters into these.
    pub fn accumulate(&mut self, other: &Counters) {
        self.passed_bytes += other.passed_bytes;
        self.passed_packets += other.passed_packets;
        self.dropped_bytes += other.dropped_bytes;
        self.dropped_packets += other.dropped_packets;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), made only of u64 fields, with no padding.
    unsafe impl aya::Pod for super::Limit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
}
