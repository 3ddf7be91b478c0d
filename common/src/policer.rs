//! The policer: a GCRA (generic cell rate algorithm) token bucket.
//!
//! The bucket is one number per direction, the theoretical arrival time
//! (`tat`): the moment, in nanoseconds of the kernel's monotonic clock, at
//! which everything admitted so far would have finished at exactly the
//! limit. A packet passes when the flow is no further ahead of the limit
//! than the burst allows. One number instead of (tokens, timestamp) matters
//! in the kernel: the common case is a single atomic add, so CPUs policing
//! the same direction at once never lose each other's updates, with no lock.
//!
//! Properties the tests pin down:
//! - a packet larger than the whole bucket still passes once the flow is not
//!   ahead of the limit, and the debt it leaves is paid off by waiting: a
//!   64 KiB GSO packet is never starved at a low rate;
//! - after a long idle gap the bucket holds one burst, never more;
//! - a clock that steps backwards only delays admission, it never grants credit;
//! - every product and sum saturates instead of wrapping, up to `MAX_RATE`.

use crate::Limit;

pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Highest accepted rate: 16 GiB/s (about 137 Gbit/s). It keeps
/// `(bytes % rate) * NSEC_PER_SEC` below `u64::MAX` in [`transmit_ns`].
pub const MAX_RATE: u64 = 1 << 34;

/// Smallest default bucket: a dozen full-size segments. Big GSO packets at
/// low rates are rare now that the socket hooks clamp download windows and
/// pace uploads, and a deep bucket at a low rate lets a flow run seconds
/// ahead after every retransmission pause (256 KiB was 4 s of 64 KiB/s,
/// and a 64 KiB/s download averaged 1.47 of its limit over 8 s).
pub const MIN_DEFAULT_BURST: u64 = 16 * 1024;

/// The default bucket depth for `rate` bytes/s: 250 ms of traffic, and never
/// less than [`MIN_DEFAULT_BURST`].
///
/// Measured over veth with TCP: a TCP sender that lost packets is silent for
/// about one minimum retransmission timeout (200 ms) while it recovers. A
/// bucket that covers that gap lets the flow catch up afterwards; with 50 ms
/// buckets a 1 MiB/s download reached 0.35 of its limit, with 250 ms 0.98.
pub fn default_burst(rate: u64) -> u64 {
    floored(rate / 4)
}

/// The smallest bucket that holds `rate`: 125 ms of traffic, and never
/// less than [`MIN_DEFAULT_BURST`]. Smaller ones are refused.
///
/// Measured with iperf3 at 1 MiB/s over veth and loopback: 128 KiB held
/// 0.98–1.00 down and up; 64 KiB gave 0.72–0.81 down, 16 KiB 0.30–0.75 and
/// 4 KiB 0.15–0.51, as drops make TCP senders wait out retransmission
/// timeouts the bucket cannot cover.
pub fn min_burst(rate: u64) -> u64 {
    floored(rate / 8)
}

/// The credit a run's default bucket starts with: one second of `rate`,
/// or the whole bucket if that is less.
///
/// Only limits below [`MIN_DEFAULT_BURST`] per second start with less than
/// a full bucket. A full 16 KiB bucket is 16 s of 1 KiB/s: a download at
/// that limit averaged 1.5 of it over its first 30 s.
pub fn default_starting_credit(rate: u64) -> u64 {
    let burst = default_burst(rate);
    if rate < burst { rate } else { burst }
}

/// The clock that leaves `credit` bytes (at most the burst) in the bucket
/// at `now`: a full bucket is a clock at `now` (or earlier), an empty one a
/// clock one burst tolerance ahead.
pub fn primed_tat(now: u64, limit: &Limit, credit: u64) -> u64 {
    if limit.rate == 0 {
        return now;
    }
    credited_tat(now, limit.tolerance_ns, transmit_ns(credit, limit.rate))
}

/// [`primed_tat`] in time: the clock of a bucket whose burst tolerance is
/// `tolerance_ns`, holding `credit_ns` of it (at most the whole) at `now`.
#[inline(always)]
fn credited_tat(now: u64, tolerance_ns: u64, credit_ns: u64) -> u64 {
    let credit_ns = if credit_ns > tolerance_ns {
        tolerance_ns
    } else {
        credit_ns
    };
    now.saturating_add(tolerance_ns - credit_ns)
}

/// A bucket of `span` bytes, or [`MIN_DEFAULT_BURST`] if that is deeper.
fn floored(span: u64) -> u64 {
    if span > MIN_DEFAULT_BURST {
        span
    } else {
        MIN_DEFAULT_BURST
    }
}

/// Nanoseconds that `bytes` take at `rate` bytes/s. Saturates at `u64::MAX`.
///
/// `rate` must be non-zero; rates above [`MAX_RATE`] are treated as `MAX_RATE`
/// so that the arithmetic cannot overflow whatever a map holds.
#[inline(always)]
pub fn transmit_ns(bytes: u64, rate: u64) -> u64 {
    let rate = if rate > MAX_RATE { MAX_RATE } else { rate };
    let secs = bytes / rate;
    // Not saturating_mul: its overflow check is a 128-bit multiply, which the
    // BPF backend cannot emit.
    if secs > u64::MAX / NSEC_PER_SEC {
        return u64::MAX;
    }
    let whole = secs * NSEC_PER_SEC;
    let part = (bytes % rate) * NSEC_PER_SEC / rate;
    whole.saturating_add(part)
}

/// `transmit_ns(len, rate)` for a packet's `len` by a multiply and shifts:
/// `M = ceil(NSEC_PER_SEC · 2^66 / rate)`, as three 32-bit limbs (least
/// significant first; the fourth is 0), and `floor(len · M / 2^66)`.
///
/// That equals `floor(len · NSEC_PER_SEC / rate)` for every `len < 2^32`
/// and `rate ≤ MAX_RATE`: with `M = NSEC_PER_SEC · 2^66 / rate + e`,
/// `0 ≤ e < 1`, the product is the exact quotient plus `len · e / 2^66`,
/// less than `1 / rate` as `len · rate < 2^32 · 2^34`; and the exact
/// quotient's fraction is a multiple of `1 / rate` below 1, so adding
/// less than `1 / rate` never carries into the whole part.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsPerByte {
    pub limbs: [u32; 4],
}

/// The shift of [`NsPerByte`]'s fixed point.
const NS_PER_BYTE_SHIFT: u32 = 66;

impl NsPerByte {
    /// The constant for `rate` bytes/s (above [`MAX_RATE`]: as
    /// `MAX_RATE`); all zero, which makes every packet free, for 0.
    #[cfg(not(target_arch = "bpf"))]
    pub fn new(rate: u64) -> NsPerByte {
        let rate = rate.min(MAX_RATE);
        let Some(m) = (u128::from(NSEC_PER_SEC) << NS_PER_BYTE_SHIFT).checked_div(u128::from(rate))
        else {
            return NsPerByte::default();
        };
        // Rounded up; below 2^96 as NSEC_PER_SEC < 2^30.
        let m = if m * u128::from(rate) == u128::from(NSEC_PER_SEC) << NS_PER_BYTE_SHIFT {
            m
        } else {
            m + 1
        };
        NsPerByte {
            limbs: [m as u32, (m >> 32) as u32, (m >> 64) as u32, 0],
        }
    }

    /// The nanoseconds `len` bytes take at the rate: `transmit_ns(len,
    /// rate)`, exactly. Each partial product of a 32-bit `len` and a 32-bit
    /// limb fits 64 bits, and so does each sum below (the middle one is at
    /// most `(2^32 − 1)^2 + 2^32 − 1`).
    #[inline(always)]
    pub fn ns(self, len: u32) -> u64 {
        let len = u64::from(len);
        let [m0, m1, m2, _] = self.limbs.map(u64::from);
        let low = len * m0;
        let middle = len * m1 + (low >> 32);
        let high = len * m2 + (middle >> 32);
        high >> (NS_PER_BYTE_SHIFT - 64)
    }
}

/// What the policer does with one packet, expressed as the update it makes to
/// the direction's `tat`, so the kernel can apply it atomically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The direction is unlimited: pass, and leave the clock alone.
    Unlimited,
    /// Over the limit: drop, and leave the clock alone.
    Drop,
    /// Pass; the flow was idle, so the clock restarts at this value.
    Restart(u64),
    /// Pass; add this many nanoseconds to the clock.
    Advance(u64),
}

impl Step {
    pub fn passes(self) -> bool {
        !matches!(self, Step::Drop)
    }
}

/// Decides the fate of a `len`-byte packet arriving at `now`, given the
/// direction's current `tat` and limit.
#[inline(always)]
pub fn police(tat: u64, now: u64, len: u32, limit: &Limit) -> Step {
    if limit.rate == 0 {
        return Step::Unlimited;
    }
    if tat > now.saturating_add(limit.tolerance_ns) {
        return Step::Drop;
    }
    let cost = limit.per_byte.ns(len);
    if tat < now {
        Step::Restart(now.saturating_add(cost))
    } else {
        Step::Advance(cost)
    }
}

/// Applies a step to a clock held in a plain variable (the kernel applies it
/// with an atomic add instead).
pub fn apply(tat: u64, step: Step) -> u64 {
    match step {
        Step::Unlimited | Step::Drop => tat,
        Step::Restart(t) => t,
        Step::Advance(d) => tat.saturating_add(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limit(rate: u64, burst: u64) -> Limit {
        Limit::new(rate, burst)
    }

    /// Offers `len`-byte packets every `gap` ns for `duration` ns and returns the bytes passed.
    fn run(lim: &Limit, len: u32, gap: u64, start: u64, duration: u64) -> u64 {
        run_from(0, lim, len, gap, start, duration)
    }

    /// [`run`] from a clock of `tat`.
    fn run_from(mut tat: u64, lim: &Limit, len: u32, gap: u64, start: u64, duration: u64) -> u64 {
        let mut passed = 0;
        let mut now = start;
        while now < start + duration {
            let step = police(tat, now, len, lim);
            if step.passes() {
                passed += u64::from(len);
            }
            tat = apply(tat, step);
            now += gap;
        }
        passed
    }

    #[test]
    fn transmit_time_is_exact_for_round_numbers() {
        assert_eq!(transmit_ns(1024, 1024), NSEC_PER_SEC);
        assert_eq!(transmit_ns(512, 1024), NSEC_PER_SEC / 2);
        assert_eq!(transmit_ns(0, 1), 0);
        assert_eq!(transmit_ns(1, 1_000_000_000), 1);
    }

    #[test]
    fn transmit_time_matches_wide_arithmetic_up_to_100_gbit() {
        let reference = |bytes: u64, rate: u64| {
            let exact = bytes as u128 * NSEC_PER_SEC as u128 / rate as u128;
            exact.min(u64::MAX as u128) as u64
        };
        let rates = [1, 1000, 1 << 20, 100_000_000_000 / 8, MAX_RATE];
        let sizes = [0, 1, 1500, 65536, 1 << 40, u64::MAX / 3, u64::MAX];
        for rate in rates {
            for bytes in sizes {
                assert_eq!(
                    transmit_ns(bytes, rate),
                    reference(bytes, rate),
                    "{bytes} B at {rate} B/s"
                );
            }
        }
        // Rates above the maximum are clamped, not overflowed.
        assert_eq!(
            transmit_ns(MAX_RATE - 1, u64::MAX),
            transmit_ns(MAX_RATE - 1, MAX_RATE)
        );
    }

    #[test]
    fn steady_overload_is_held_to_the_rate() {
        let lim = limit(1024 * 1024, 64 * 1024);
        // 1500-byte packets every 100 us = 15 MB/s offered, for 10 s.
        let passed = run(&lim, 1500, 100_000, 1_000 * MS, 10_000 * MS);
        let expected = 10 * 1024 * 1024 + 64 * 1024;
        let ratio = passed as f64 / expected as f64;
        assert!((0.99..=1.01).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn traffic_under_the_limit_all_passes() {
        let lim = limit(1024 * 1024, 64 * 1024);
        // 1000 bytes every 10 ms = 100 KB/s.
        let passed = run(&lim, 1000, 10 * MS, 0, 10_000 * MS);
        assert_eq!(passed, 1000 * 1000);
    }

    #[test]
    fn packet_larger_than_the_bucket_is_never_starved() {
        // 64 KiB GSO packets against a 4 KiB bucket at 8 KiB/s.
        let lim = limit(8 * 1024, 4 * 1024);
        let passed = run(&lim, 65536, MS, 0, 80_000 * MS);
        // 80 s at 8 KiB/s is 10 packets' worth; each passes as soon as the
        // previous one's debt is paid.
        let packets = passed / 65536;
        assert!((10..=11).contains(&packets), "{packets} packets passed");
    }

    #[test]
    fn long_idle_gap_refills_exactly_one_burst() {
        let lim = limit(1000, 5000);
        let mut tat = 0;
        // Drain: a first packet at t=1 s.
        tat = apply(tat, police(tat, NSEC_PER_SEC, 1000, &lim));
        // A day later, a burst of back-to-back 1000-byte packets.
        let later = NSEC_PER_SEC + 86_400 * NSEC_PER_SEC;
        let mut passed = 0;
        for _ in 0..100 {
            let step = police(tat, later, 1000, &lim);
            if step.passes() {
                passed += 1;
            }
            tat = apply(tat, step);
        }
        // Burst tolerance of 5 s at 1000 B/s: the packet at the clock plus five more.
        assert_eq!(passed, 6);
    }

    #[test]
    fn clock_going_backwards_grants_no_credit() {
        let lim = limit(1000, 1000);
        let t0 = 100 * NSEC_PER_SEC;
        let mut tat = apply(0, police(0, t0, 2000, &lim));
        assert_eq!(tat, t0 + 2 * NSEC_PER_SEC);
        // The clock steps back 50 s: still ahead of the limit, so dropped.
        assert_eq!(police(tat, t0 - 50 * NSEC_PER_SEC, 10, &lim), Step::Drop);
        // Forward again past the debt: admitted, and only one burst's worth.
        let step = police(tat, t0 + NSEC_PER_SEC, 10, &lim);
        assert!(step.passes());
        tat = apply(tat, step);
        assert!(tat > t0 + 2 * NSEC_PER_SEC);
    }

    /// The fast form equals the division form: at every edge of both
    /// ranges (1 B/s, MAX_RATE, BIG TCP's 512 KiB packets, `u32::MAX`),
    /// and at a million pseudorandom pairs, half of them with rates near
    /// a power of two, where rounding `M` up matters most.
    #[test]
    fn the_multiply_equals_the_division_over_the_whole_range() {
        let check = |len: u32, rate: u64| {
            assert_eq!(
                NsPerByte::new(rate).ns(len),
                transmit_ns(u64::from(len), rate),
                "{len} B at {rate} B/s"
            );
        };
        let lens = [
            0,
            1,
            2,
            1499,
            1500,
            65_535,
            65_536,
            512 * 1024,
            u32::MAX - 1,
            u32::MAX,
        ];
        let powers = (0..=34).flat_map(|bit| {
            let p = 1u64 << bit;
            [p - 1, p, p + 1]
        });
        let rates = [1, 2, 3, 7, 1000, 1024, 999_999_937, NSEC_PER_SEC]
            .into_iter()
            .chain(powers)
            .chain([MAX_RATE - 1, MAX_RATE, MAX_RATE + 1, u64::MAX]);
        for rate in rates.filter(|&r| r > 0) {
            for len in lens {
                check(len, rate);
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..1_000_000 {
            let len = next() as u32 >> (next() % 32);
            let rate = if i % 2 == 0 {
                1 + next() % MAX_RATE
            } else {
                (1u64 << (next() % 35)).saturating_sub(next() % 3).max(1)
            };
            check(len, rate);
        }
    }

    #[test]
    fn no_rate_makes_every_packet_free() {
        assert_eq!(NsPerByte::new(0).ns(u32::MAX), 0);
        assert_eq!(Limit::new(0, 0).tolerance_ns, 0);
    }

    #[test]
    fn clock_near_u64_max_saturates() {
        let lim = limit(1, u64::MAX);
        let step = police(u64::MAX - 5, u64::MAX - 10, u32::MAX, &lim);
        assert_eq!(apply(u64::MAX - 5, step), u64::MAX);
    }

    #[test]
    fn unlimited_passes_everything_and_keeps_the_clock() {
        let lim = limit(0, 0);
        assert_eq!(police(42, 0, u32::MAX, &lim), Step::Unlimited);
        assert_eq!(apply(42, Step::Unlimited), 42);
    }

    #[test]
    fn credit_saved_at_a_high_rate_is_no_loophole_after_lowering_it() {
        // Idle at 128 MiB/s with a 6.4 MB bucket, then the limit drops to 64 KiB/s.
        let fast = limit(128 << 20, (128 << 20) / 20);
        let mut tat = apply(0, police(0, NSEC_PER_SEC, 1500, &fast));
        let slow = limit(64 << 10, 64 << 10);
        let now = 100 * NSEC_PER_SEC;
        let mut passed = 0;
        for _ in 0..1000 {
            let step = police(tat, now, 1500, &slow);
            if step.passes() {
                passed += 1500;
            }
            tat = apply(tat, step);
        }
        // One new bucket plus the packet that crossed it, not megabytes.
        assert!(passed <= (64 << 10) + 1500, "{passed} bytes passed");
    }

    #[test]
    fn a_primed_clock_passes_exactly_the_starting_credit() {
        let lim = limit(1024, default_burst(1024));
        let credit = default_starting_credit(1024);
        assert_eq!(credit, 1024);
        let start = 5 * NSEC_PER_SEC;
        let mut tat = primed_tat(start, &lim, credit);
        // 64-byte packets at one instant: the credit, plus the packet that
        // crosses the edge (as after any idle gap).
        let mut passed = 0;
        for _ in 0..1000 {
            let step = police(tat, start, 64, &lim);
            if step.passes() {
                passed += 64;
            }
            tat = apply(tat, step);
        }
        assert_eq!(passed, 1024 + 64);
        // 30 s of overload from a primed clock: 1/30 over the rate, not the
        // 16 s a full bucket would add.
        let passed = run_from(primed_tat(0, &lim, credit), &lim, 64, MS, 0, 30_000 * MS);
        assert!((30 * 1024..=31 * 1024 + 64).contains(&passed), "{passed}");
    }

    #[test]
    fn the_starting_credit_is_the_whole_bucket_from_sixteen_kib_per_second() {
        for rate in [16 << 10, 64 << 10, 1 << 20, MAX_RATE] {
            assert_eq!(default_starting_credit(rate), default_burst(rate), "{rate}");
            let lim = limit(rate, default_burst(rate));
            assert_eq!(
                primed_tat(NSEC_PER_SEC, &lim, default_burst(rate)),
                NSEC_PER_SEC
            );
        }
        assert_eq!(default_starting_credit(8 << 10), 8 << 10);
        // A credit beyond the bucket is one bucket; no credit is a clock one
        // tolerance ahead; unlimited leaves the clock at now.
        let lim = limit(1000, 5000);
        assert_eq!(primed_tat(0, &lim, 1 << 40), 0);
        assert_eq!(primed_tat(0, &lim, 0), 5 * NSEC_PER_SEC);
        assert_eq!(primed_tat(7, &limit(0, 0), 0), 7);
    }

    #[test]
    fn default_burst_is_a_quarter_second_with_a_floor() {
        assert_eq!(default_burst(1024), MIN_DEFAULT_BURST);
        assert_eq!(min_burst(1 << 20), 128 << 10);
        assert_eq!(min_burst(1024), MIN_DEFAULT_BURST);
        for rate in [1, 1024, 64 << 10, 1 << 20, 1 << 30, MAX_RATE] {
            assert!(default_burst(rate) >= min_burst(rate), "{rate}");
        }
        assert_eq!(default_burst(1024 * 1024), 256 << 10);
        assert_eq!(default_burst(128 << 20), (128 << 20) / 4);
        assert_eq!(default_burst(MAX_RATE), MAX_RATE / 4);
    }
}
