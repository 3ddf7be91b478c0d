//! Types and arithmetic shared by the eBPF programs and the `throttle` binary.
//!
//! Everything here is `no_std` and allocation-free so the same code runs in
//! the kernel and in host unit tests.
#![no_std]

pub mod fairness;
pub mod nested;
pub mod networks;
pub mod packet;
pub mod policer;
pub mod sockets;
pub mod units;

/// One of the two ways a run's traffic goes. Its value is the index of
/// the direction's entry in the per-direction maps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Download: packets delivered to the run's sockets (ingress).
    Down = 0,
    /// Upload: packets the run's sockets send (egress).
    Up = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Down, Direction::Up];

    /// The direction's key in the per-direction maps.
    pub const fn key(self) -> u32 {
        self as u32
    }

    /// The word people and the control protocol use for it.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }
}

/// [`Direction::Down`]'s map key, for the eBPF side.
pub const DOWN: u32 = Direction::Down.key();
/// [`Direction::Up`]'s map key, for the eBPF side.
pub const UP: u32 = Direction::Up.key();
/// Number of entries in each per-direction map.
pub const DIRECTIONS: u32 = Direction::ALL.len() as u32;

/// One value per direction, indexed by [`Direction`]; serialised as
/// `{"down": …, "up": …}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct PerDirection<T> {
    pub down: T,
    pub up: T,
}

impl<T> PerDirection<T> {
    /// Each direction's value from `f`.
    pub fn from_fn(mut f: impl FnMut(Direction) -> T) -> Self {
        PerDirection {
            down: f(Direction::Down),
            up: f(Direction::Up),
        }
    }

    /// The value of each direction, in [`Direction::ALL`]'s order.
    pub fn each(&self) -> [(Direction, &T); 2] {
        [(Direction::Down, &self.down), (Direction::Up, &self.up)]
    }

    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> PerDirection<U> {
        PerDirection {
            down: f(self.down),
            up: f(self.up),
        }
    }
}

impl<T> core::ops::Index<Direction> for PerDirection<T> {
    type Output = T;

    fn index(&self, direction: Direction) -> &T {
        match direction {
            Direction::Down => &self.down,
            Direction::Up => &self.up,
        }
    }
}

impl<T> core::ops::IndexMut<Direction> for PerDirection<T> {
    fn index_mut(&mut self, direction: Direction) -> &mut T {
        match direction {
            Direction::Down => &mut self.down,
            Direction::Up => &mut self.up,
        }
    }
}

/// Names of the maps userspace opens in the eBPF object: the eBPF side's
/// statics of the same names (a host test reads the built object to check).
pub const MAP_LIMITS: &str = "LIMITS";
pub const MAP_CLOCK: &str = "CLOCK";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_TUNING: &str = "TUNING";
pub const MAP_NETWORKS: &str = "NETWORKS";
pub const MAP_SCOPE: &str = "SCOPE";
pub const MAP_EXCLUDED: &str = "EXCLUDED";
/// Names of the programs in the eBPF object, the eBPF side's functions of
/// the same names (kernel program names are cut at 15 bytes).
pub const PROG_DOWN: &str = "throttle_down";
pub const PROG_UP: &str = "throttle_up";
pub const PROG_TUNING: &str = "throttle_tuning";

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
    // The three fields below are what the kernel would otherwise divide
    // for on every packet, precomputed by `Limit::new` on every `set`.
    /// [`transmit_ns`](policer::transmit_ns)`(burst, rate)`: how far the
    /// clock may run ahead of now.
    pub tolerance_ns: u64,
    /// [`period_ns`](sockets::period_ns)`(rate)`: the download tallies'
    /// period.
    pub period_ns: u64,
    /// A packet's cost at `rate`, by multiplying.
    pub per_byte: policer::NsPerByte,
}

impl Limit {
    /// The limit of `rate` bytes/s (0: unlimited) with a bucket of `burst`
    /// bytes, with its derived constants.
    #[cfg(not(target_arch = "bpf"))]
    pub fn new(rate: u64, burst: u64) -> Limit {
        Limit {
            rate,
            burst,
            tolerance_ns: if rate == 0 {
                0
            } else {
                policer::transmit_ns(burst, rate)
            },
            period_ns: sockets::period_ns(rate),
            per_byte: policer::NsPerByte::new(rate),
        }
    }
}

/// Per-direction traffic counters, kept per CPU in the kernel and summed by
/// userspace; the control protocol and `--summary=json` carry them by these
/// field names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
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
