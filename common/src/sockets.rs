//! Per-socket settings that make TCP slow down before the policer has to
//! drop anything: a receive-window clamp for downloads and a pacing cap for
//! uploads. The policer stays the hard limit; these only spare it work.

/// The kernel's `tp->srtt_us` (as `bpf_sock_ops` exposes it) is the
/// smoothed RTT in microseconds shifted left by three.
const SRTT_SHIFT: u32 = 3;

/// Smallest receive window the clamp sets: a few full-size segments, so a
/// low-RTT link (where rate × RTT is a few hundred bytes) still gets a
/// window that keeps the ACK clock running.
pub const MIN_WINDOW: u64 = 4 * 1024;

/// Largest window the clamp sets, and the clamp of an unlimited direction:
/// the kernel's own ceiling (65535 << 14) rounded up, so it clamps nothing.
pub const MAX_WINDOW: u64 = 1 << 30;

/// [`window_gain`] and [`drained`] count in 256ths.
pub const UNIT: u64 = 256;

/// The receive window for a download whose share is `rate` bytes/s, on a
/// socket whose scaled smoothed RTT is `srtt_scaled` and whose segments
/// carry up to `mss` bytes: `gain` (in 256ths, see [`window_gain`]) times
/// one round trip of the share; [`MAX_WINDOW`] when the direction is
/// unlimited, which undoes an earlier clamp.
///
/// A window of one round trip of the share carries exactly the share, and
/// a sender can have at most one window in flight: the window, not the
/// policer, holds the rate, so the policer rarely drops (one drop of a
/// GRO-merged packet on ingress loses dozens of segments). The RTT is the
/// receiver's estimate, mostly from the handshake; the gain corrects it.
///
/// Never less than two segments: a window smaller than one segment makes
/// the sender wait for the persist timer (on loopback, whose MSS is 64 KiB,
/// a 4 KiB window held a 1 MiB/s download to 20 KB/s).
#[inline(always)]
pub fn receive_window(rate: u64, srtt_scaled: u32, mss: u32, gain: u64) -> u32 {
    if rate == 0 {
        return MAX_WINDOW as u32;
    }
    let floor = (2 * u64::from(mss)).max(MIN_WINDOW);
    let srtt_us = u64::from(srtt_scaled >> SRTT_SHIFT);
    let gain = if gain > MAX_GAIN { MAX_GAIN } else { gain };
    // rate ≤ 2^34, srtt_us < 2^29 and gain ≤ 2^10, so the product stays
    // below 2^63.
    let window = rate / 1_000 * srtt_us / 1_000 * gain / UNIT;
    window.clamp(floor.min(MAX_WINDOW), MAX_WINDOW) as u32
}

/// The receive window a new download connection advertises in its
/// handshake, in segments of `mss` bytes (`BPF_SOCK_OPS_RWND_INIT`; the
/// kernel only ever lowers its own choice to it), for a share of `rate`:
/// what the share's bucket starts with (see
/// [`default_starting_credit`](crate::policer::default_starting_credit)),
/// never less than two segments; 0, the kernel's own choice, when unlimited.
///
/// The window clamp only applies from the handshake's end, so without this
/// the sender's first flight is its initial congestion window (ten
/// segments, 14 KiB), which a bucket of a second of a few KiB/s drops
/// nearly whole: at 1 KiB/s the download then stalled for 13 s of
/// retransmission timeouts.
#[inline(always)]
pub fn initial_window(rate: u64, mss: u32) -> u32 {
    if rate == 0 {
        return 0;
    }
    // A request socket (the passive side) reads no MSS; assume Ethernet's.
    let mss = if mss == 0 { 1460 } else { u64::from(mss) };
    let segments = crate::policer::default_starting_credit(rate) / mss;
    if segments < 2 {
        2
    } else if segments > u64::from(u16::MAX) {
        u32::from(u16::MAX)
    } else {
        segments as u32
    }
}

/// The least round trip, in microseconds, the windows of several
/// receiving connections are sized for.
pub const MIN_SHARED_RTT_US: u32 = 500;

/// The scaled smoothed RTT ([`receive_window`]'s `srtt_scaled`) to size a
/// window by when `flows` connections receive: the socket's own, but at
/// least [`MIN_SHARED_RTT_US`] when there are several.
///
/// A receiving socket's estimate is its handshake's (it acknowledges no
/// data of its own), 50 µs over veth. One flow's real round trip stays near
/// that, but eight flows queue it up, and windows sized from the handshake
/// carried 0.30 of 512 MiB/s and 0.27 of 1 GiB/s over veth. With a floor of
/// 250 µs, 500 µs or 1 ms they carried 0.99–1.01; 500 µs leaves a margin
/// and kept eight flows' waste at 128 MiB/s at 2.7–2.9 % (1 ms: 4.1 %).
/// Applied to one flow too, a floor let it overshoot and drop (1 ms: 0.83
/// of 512 MiB/s, waste 0 → 3 % at 128 MiB/s).
#[inline(always)]
pub fn window_rtt(srtt_scaled: u32, flows: u64) -> u32 {
    let floor = MIN_SHARED_RTT_US << SRTT_SHIFT;
    if flows > 1 && srtt_scaled < floor {
        floor
    } else {
        srtt_scaled
    }
}

/// The largest [`window_gain`]: four round trips of the share.
pub const MAX_GAIN: u64 = 4 * UNIT;

/// How far a direction runs ahead of its limit, in 256ths of its burst
/// tolerance: 0 while the whole burst is in credit (`tat` not after `now`),
/// [`UNIT`] when the next packet would be dropped.
#[inline(always)]
pub fn drained(tat: u64, now: u64, tolerance_ns: u64) -> u64 {
    let ahead = tat.saturating_sub(now);
    let step = tolerance_ns / UNIT;
    if step == 0 || ahead >= tolerance_ns {
        return UNIT;
    }
    let d = ahead / step;
    if d > UNIT { UNIT } else { d }
}

/// The gain on the download windows, in 256ths, from how drained the
/// direction's bucket is: 2^(2 − 4·drained), so 4× with the whole burst in
/// credit, 1× at half, ¼× at empty (2^−f between powers is taken as
/// 1 − f/2, which keeps it monotonic).
///
/// This closes a loop through the policer: if the windows carry more than
/// the limit, the bucket drains and every window shrinks; if less (the RTT
/// estimate is high, or some connections are idle), credit builds up and
/// they grow. The bucket settles where the windows carry exactly the limit,
/// with half its burst in hand, so the policer has no cause to drop.
/// Exponential, so the loop reacts the same at every operating point: its
/// time constant is about a third of the burst (83 ms with the default
/// 250 ms), slow enough for an 80 ms round trip not to make it ring.
#[inline(always)]
pub fn window_gain(drained: u64) -> u64 {
    let x = 4 * if drained > UNIT { UNIT } else { drained };
    let (whole, frac) = (x / UNIT, x % UNIT);
    (MAX_GAIN >> whole) * (2 * UNIT - frac) / (2 * UNIT)
}

/// How long a period of download activity lasts: a connection that
/// received data in this period or the last counts as active. Connections
/// that finish or go idle hand their share on within two periods.
pub const EPOCH_NS: u64 = 200_000_000;

/// The period of download activity at a download limit of `rate`:
/// [`EPOCH_NS`], or at limits below 60 KB/s long enough for a connection
/// at the smallest share (an eighth) to receive a full-size segment.
///
/// Otherwise a connection receiving its share of a low limit shows up in
/// a few periods out of many: at 8 KiB/s, eight connections counted as one
/// or two, each was policed at half the limit or more, and four of the
/// eight received nothing in 8 s while the others took it all.
#[inline(always)]
pub fn period_ns(rate: u64) -> u64 {
    let segment_ns = (8 * 1500 * crate::policer::NSEC_PER_SEC)
        .checked_div(rate)
        .unwrap_or(0);
    if segment_ns > EPOCH_NS {
        segment_ns
    } else {
        EPOCH_NS
    }
}

/// A period's tally of the connections that received bulk data in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `now / EPOCH_NS` of the period counted.
    pub epoch: u64,
    pub flows: u64,
}

/// Which of the two tallies a period uses.
#[inline(always)]
pub fn tally_slot(epoch: u64) -> u32 {
    (epoch & 1) as u32
}

/// How many connections are receiving now: the larger of the current
/// period's tally (still filling) and the last one's; 0 when neither is
/// recent.
#[inline(always)]
pub fn active_flows(epoch: u64, tallies: [Tally; 2]) -> u64 {
    let mut flows = 0;
    for t in tallies {
        if (t.epoch == epoch || t.epoch.wrapping_add(1) == epoch) && t.flows > flows {
            flows = t.flows;
        }
    }
    flows
}

/// What a download socket last reported: the period it was counted in and
/// how many bytes it had received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub epoch: u64,
    pub received: u64,
}

/// Whether a socket that has received `received` bytes, and was `last`
/// seen, is to be counted in `epoch`'s tally: it is a bulk download at a
/// limit of `rate` (see [`bulk`]), received something since, and
/// is not counted in this period yet.
#[inline(always)]
pub fn counts_in(epoch: u64, last: Seen, received: u64, rate: u64) -> bool {
    received > bulk(rate) && received > last.received && last.epoch != epoch
}

/// Bytes a connection must have moved one way (received, or sent and
/// acknowledged) before it counts as one of the flows sharing that
/// direction's limit: more than a control connection (iperf3's carries a
/// few hundred bytes until its final report) or a small request, yet
/// reached within a quarter second by a share of 64 KiB/s.
pub const BULK: u64 = 16 * 1024;

/// The least [`bulk`] falls to at low limits: more than the headers of an
/// HTTP reply or a control connection's messages.
pub const MIN_BULK: u64 = 2 * 1024;

/// The bytes a connection must have moved one way to count among the
/// flows sharing a limit of `rate` that way: [`BULK`], or below 64 KiB/s a
/// quarter second of the limit, never less than [`MIN_BULK`]; [`BULK`]
/// when unlimited.
///
/// At 8 KiB/s, where eight connections get 1 KiB/s each, [`BULK`] took
/// 16 s to reach. Until then each was given the whole limit: downloads
/// were policed as if alone and four of eight received nothing in 8 s;
/// uploads were paced at the whole limit, the policer dropped a starved
/// connection's every segment, and after fifteen failed sends (7.5 s) the
/// kernel aborted it ("Connection timed out").
#[inline(always)]
pub fn bulk(rate: u64) -> u64 {
    let quarter = rate / 4;
    if quarter > BULK || rate == 0 {
        BULK
    } else if quarter < MIN_BULK {
        MIN_BULK
    } else {
        quarter
    }
}

/// One connection's share of a direction's `rate` when `flows` connections
/// move bulk data that way (0 before the first one does): an equal split,
/// but never below an eighth of the limit (a counted connection may have
/// gone idle, and the policer still caps the sum); unlimited stays
/// unlimited.
#[inline(always)]
pub fn share(rate: u64, flows: u64) -> u64 {
    // A count beyond any real number of connections is a counter that
    // wrapped below zero. checked_div leaves no division-by-zero panic
    // path, which the BPF target cannot load.
    let flows = if flows > 1 << 20 { 1 } else { flows };
    let equal = rate.checked_div(flows).unwrap_or(rate);
    let floor = rate / 8;
    if equal > floor {
        equal
    } else if floor > 0 {
        floor
    } else {
        rate
    }
}

/// The value for `SO_MAX_PACING_RATE`: the upload limit, or "no cap"
/// (`u32::MAX`, the kernel's ~0U) when unlimited. Rates beyond what the
/// 32-bit option can say are left uncapped; the policer still holds them.
#[inline(always)]
pub fn pacing_rate(rate: u64) -> u32 {
    if rate == 0 || rate >= u64::from(u32::MAX) {
        u32::MAX
    } else {
        rate as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn unlimited_means_no_clamp_and_no_pacing() {
        assert_eq!(
            u64::from(receive_window(0, 8 * 50_000, 1448, UNIT)),
            MAX_WINDOW
        );
        assert_eq!(pacing_rate(0), u32::MAX);
    }

    #[test]
    fn window_is_the_gain_times_one_round_trip_of_the_share() {
        // 1 MiB/s at 50 ms: 52 KB at 1×, 4 × that at most.
        let w = receive_window(MIB, 8 * 50_000, 1448, UNIT);
        assert!((51_000..=53_000).contains(&w), "{w}");
        let w = receive_window(MIB, 8 * 50_000, 1448, 100 * UNIT);
        assert!((204_000..=212_000).contains(&w), "{w}");
    }

    #[test]
    fn low_rtt_gets_the_minimum_window() {
        assert_eq!(
            u64::from(receive_window(MIB, 8 * 40, 1448, MAX_GAIN)),
            MIN_WINDOW
        );
    }

    #[test]
    fn window_holds_two_segments_of_a_large_mss() {
        assert_eq!(receive_window(MIB, 8 * 40, 65483, UNIT), 2 * 65483);
    }

    #[test]
    fn the_initial_window_holds_the_starting_credit_in_segments() {
        assert_eq!(initial_window(0, 1448), 0);
        assert_eq!(initial_window(1024, 1448), 2);
        assert_eq!(initial_window(8 << 10, 1448), 5);
        assert_eq!(initial_window(8 << 10, 0), 5);
        // From 64 KiB/s on it no longer binds ten segments.
        assert!(initial_window(64 << 10, 1448) > 10);
        assert_eq!(
            initial_window(crate::policer::MAX_RATE, 1),
            u32::from(u16::MAX)
        );
    }

    #[test]
    fn several_receiving_flows_size_windows_for_at_least_half_a_millisecond() {
        assert_eq!(window_rtt(8 * 50, 1), 8 * 50);
        assert_eq!(window_rtt(8 * 50, 8), 8 * 500);
        assert_eq!(window_rtt(8 * 20_000, 8), 8 * 20_000);
        assert_eq!(window_rtt(u32::MAX, 2), u32::MAX);
    }

    #[test]
    fn gain_falls_from_four_to_a_quarter_as_the_bucket_drains() {
        assert_eq!(window_gain(0), 4 * UNIT);
        assert_eq!(window_gain(UNIT / 4), 2 * UNIT);
        assert_eq!(window_gain(UNIT / 2), UNIT);
        assert_eq!(window_gain(UNIT), UNIT / 4);
        assert_eq!(window_gain(u64::MAX), UNIT / 4);
        let gains: [u64; 257] = core::array::from_fn(|d| window_gain(d as u64));
        assert!(gains.windows(2).all(|w| w[1] <= w[0]), "{gains:?}");
    }

    #[test]
    fn drained_measures_the_credit_used() {
        let tolerance = 250_000_000;
        assert_eq!(drained(0, 1_000, tolerance), 0);
        assert_eq!(drained(1_000 + tolerance / 2, 1_000, tolerance), UNIT / 2);
        assert_eq!(drained(1_000 + tolerance, 1_000, tolerance), UNIT);
        assert_eq!(drained(u64::MAX, 0, tolerance), UNIT);
        assert_eq!(drained(u64::MAX, 0, u64::MAX), UNIT);
        assert_eq!(drained(10, 0, 100), UNIT);
    }

    #[test]
    fn active_flows_are_the_recent_tallies() {
        let t = |epoch, flows| Tally { epoch, flows };
        assert_eq!(active_flows(10, [t(10, 2), t(9, 5)]), 5);
        assert_eq!(active_flows(10, [t(10, 6), t(9, 5)]), 6);
        assert_eq!(active_flows(11, [t(10, 6), t(9, 5)]), 6);
        assert_eq!(active_flows(12, [t(10, 6), t(9, 5)]), 0);
        assert_eq!(active_flows(0, [Tally::default(); 2]), 0);
    }

    #[test]
    fn a_socket_counts_once_a_period_while_it_receives() {
        let seen = Seen {
            epoch: 4,
            received: 100_000,
        };
        assert!(counts_in(5, seen, 101_000, MIB));
        assert!(!counts_in(4, seen, 101_000, MIB));
        assert!(!counts_in(5, seen, 100_000, MIB));
        assert!(!counts_in(5, Seen::default(), BULK, MIB));
    }

    #[test]
    fn low_limits_count_smaller_flows_over_longer_periods() {
        assert_eq!(bulk(MIB), BULK);
        assert_eq!(bulk(64 * 1024), BULK);
        assert_eq!(bulk(8 * 1024), MIN_BULK);
        assert_eq!(bulk(0), BULK);
        assert_eq!(bulk(1), MIN_BULK);
        assert!(counts_in(1, Seen::default(), MIN_BULK + 1, 8 * 1024));
        assert!(!counts_in(1, Seen::default(), MIN_BULK + 1, MIB));
        assert_eq!(period_ns(MIB), EPOCH_NS);
        assert_eq!(period_ns(64 * 1024), EPOCH_NS);
        assert_eq!(period_ns(0), EPOCH_NS);
        // At 8 KiB/s an eighth of the limit takes 1.46 s per segment.
        assert_eq!(period_ns(8 * 1024), 1_464_843_750);
        assert_eq!(period_ns(1), 8 * 1500 * 1_000_000_000);
    }

    #[test]
    fn flows_share_the_limit_down_to_an_eighth() {
        assert_eq!(share(MIB, 1), MIB);
        assert_eq!(share(MIB, 4), MIB / 4);
        assert_eq!(share(MIB, 100), MIB / 8);
        assert_eq!(share(0, 4), 0);
        // A counter that wrapped below zero counts as one flow.
        assert_eq!(share(MIB, u64::MAX), MIB);
        assert_eq!(share(MIB, 0), MIB);
        assert_eq!(share(5, 8), 5);
    }

    #[test]
    fn extreme_values_saturate() {
        let top = receive_window(crate::policer::MAX_RATE, u32::MAX, u32::MAX, u64::MAX);
        assert_eq!(u64::from(top), MAX_WINDOW);
        assert_eq!(pacing_rate(crate::policer::MAX_RATE), u32::MAX);
        assert_eq!(pacing_rate(u64::from(u32::MAX) - 1), u32::MAX - 1);
    }
}
