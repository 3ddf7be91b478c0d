//! Per-socket settings that make TCP slow down before the policer has to
//! drop anything: a receive-window clamp for downloads and a pacing cap for
//! uploads. The policer stays the hard limit; these only spare it work.

/// The kernel's `tp->srtt_us` (as `bpf_sock_ops` exposes it) is the
/// smoothed RTT in microseconds shifted left by three.
const SRTT_SHIFT: u32 = 3;

/// How many round trips of the download limit the receive window holds.
/// One would stall the flow as soon as the RTT grows past the handshake's.
pub const WINDOW_RTTS: u64 = 4;

/// Smallest receive window the clamp sets: a few full-size segments, so a
/// low-RTT link (where rate × RTT is a few hundred bytes) still gets a
/// window that keeps the ACK clock running.
pub const MIN_WINDOW: u64 = 4 * 1024;

/// Largest window the clamp sets, and the clamp of an unlimited direction:
/// the kernel's own ceiling (65535 << 14) rounded up, so it clamps nothing.
pub const MAX_WINDOW: u64 = 1 << 30;

/// The receive window for a download limited to `rate` bytes/s on a socket
/// whose scaled smoothed RTT is `srtt_scaled` and whose segments carry up
/// to `mss` bytes; [`MAX_WINDOW`] when the direction is unlimited, which
/// undoes an earlier clamp.
///
/// Never less than two segments: a window smaller than one segment makes
/// the sender wait for the persist timer (on loopback, whose MSS is 64 KiB,
/// a 4 KiB window held a 1 MiB/s download to 20 KB/s).
///
/// A sender can have at most one window in flight, so a window of a few
/// RTTs of the limit caps how much it can send into an empty bucket: when
/// the policer does drop, it drops a few segments instead of a whole
/// congestion window of 64 KiB GSO packets.
#[inline(always)]
pub fn receive_window(rate: u64, srtt_scaled: u32, mss: u32) -> u32 {
    if rate == 0 {
        return MAX_WINDOW as u32;
    }
    let floor = (2 * u64::from(mss)).max(MIN_WINDOW);
    let srtt_us = u64::from(srtt_scaled >> SRTT_SHIFT);
    // rate ≤ 2^34 and srtt_us < 2^29, so the product stays below 2^63.
    let window = WINDOW_RTTS * rate / 1_000 * srtt_us / 1_000;
    window.clamp(floor.min(MAX_WINDOW), MAX_WINDOW) as u32
}

/// Bytes a connection must have moved (either way) before it counts as one
/// of the flows sharing the limit: more than a control connection (iperf3's
/// carries a few hundred bytes until its final report) or a small request,
/// yet reached within a quarter second by a share of 64 KiB/s.
pub const BULK: u64 = 16 * 1024;

/// Whether a connection that moved `bytes` one way (received, or sent and
/// acknowledged) is a bulk flow that way.
#[inline(always)]
pub fn is_bulk(bytes: u64) -> bool {
    bytes > BULK
}

/// One connection's share of a direction's `rate` when `flows` bulk
/// connections are established (0 before the first one is): an equal split,
/// but never below an eighth of the limit (a bulk connection may have gone
/// idle, and the policer still caps the sum); unlimited stays unlimited.
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
        assert_eq!(u64::from(receive_window(0, 8 * 50_000, 1448)), MAX_WINDOW);
        assert_eq!(pacing_rate(0), u32::MAX);
    }

    #[test]
    fn window_is_a_few_round_trips_of_the_limit() {
        // 1 MiB/s at 50 ms: 4 × 52 KB.
        let w = receive_window(MIB, 8 * 50_000, 1448);
        assert!((200_000..=210_000).contains(&w), "{w}");
    }

    #[test]
    fn low_rtt_gets_the_minimum_window() {
        assert_eq!(u64::from(receive_window(MIB, 8 * 40, 1448)), MIN_WINDOW);
    }

    #[test]
    fn window_holds_two_segments_of_a_large_mss() {
        assert_eq!(receive_window(MIB, 8 * 40, 65483), 2 * 65483);
    }

    #[test]
    fn only_bulk_connections_take_a_share() {
        assert!(!is_bulk(4096));
        assert!(!is_bulk(BULK));
        assert!(is_bulk(BULK + 1));
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
        let top = receive_window(crate::policer::MAX_RATE, u32::MAX, u32::MAX);
        assert_eq!(u64::from(top), MAX_WINDOW);
        assert_eq!(pacing_rate(crate::policer::MAX_RATE), u32::MAX);
        assert_eq!(pacing_rate(u64::from(u32::MAX) - 1), u32::MAX - 1);
    }
}
