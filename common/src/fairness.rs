//! Sharing a download limit among the run's connections.
//!
//! A single bucket for the whole run drops whichever packet arrives while
//! it is empty. With several connections that is unfair in the worst way:
//! a connection whose few packets in flight were all dropped waits for a
//! retransmission timeout, its retransmission arrives while the bucket is
//! still empty and is dropped too, and the timeout doubles; meanwhile the
//! others take the limit. Measured with aria2c's eight ranged connections
//! on veth: some stalled for seconds, and once the busy ones had finished
//! their ranges the download crawled (0.36–0.80 of the limit).
//!
//! So every connection also has a bucket of its own at its share of the
//! limit. When the run is over its limit, a packet still passes if its
//! connection is within its share, and the run's bucket goes into debt
//! for it (up to a second burst); only connections ahead of their share
//! lose packets. Over time every byte passed is charged to the run's
//! bucket, so the limit holds.

use crate::{
    Limit,
    policer::{NSEC_PER_SEC, Step, default_burst, police, transmit_ns},
};

/// The clock of a connection the policer has not seen yet (no clock is 0
/// once a packet has passed).
pub const NEW_CONNECTION: u64 = 0;

/// What the fair policer decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The update to the run's clock; `passes()` is the packet's fate.
    pub run: Step,
    /// The connection's clock afterwards.
    pub connection: u64,
}

/// Where a connection's sender is, which decides what a connection alone
/// (its share the whole limit) may owe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Across the network (a download): a drop is lost on the wire, up to
    /// a whole GRO super-packet, and a connection alone may use the run's
    /// debt as any within its share does. Without it, one download with
    /// the smallest accepted burst (128 KiB at 1 MiB/s) over veth held
    /// 0.82 of the limit.
    Remote,
    /// Here (an upload) on a connection counted among the run's uploads:
    /// paced at its share, a drop only makes it back off. Alone, it gets
    /// no debt ahead of its share and a packet's worth behind it (see
    /// `police_fairly`).
    Local,
    /// Here, on a TCP connection that has not moved bulk data yet (see
    /// [`bulk`](crate::sockets::bulk)): a control connection, a request,
    /// an upload in its first packets. The counts do not see it, so a
    /// share of the whole limit does not make it alone, and it may owe as
    /// when sharing. Policed as alone, iperf3's control connection, whose
    /// one message came after thirty seconds of an upload at 8 KiB/s,
    /// found the run deeper in debt than its packet's worth at every retry
    /// until the kernel gave the connection up.
    Quiet,
}

/// The [`Sender`] of an upload's packet on a TCP connection that has had
/// `acked` bytes acknowledged (`None` when the packet has no TCP socket,
/// as UDP's), under an upload limit of `rate`: [`Sender::Quiet`] until it
/// has moved the bulk that counts it (as the socket hooks count it).
#[inline(always)]
pub fn upload_sender(acked: Option<u64>, rate: u64) -> Sender {
    match acked {
        Some(acked) if acked <= crate::sockets::bulk(rate) => Sender::Quiet,
        _ => Sender::Local,
    }
}

/// Decides the fate of a `len`-byte packet arriving at `now` on a
/// connection whose clock is `own` and whose share of `limit` is `share`
/// bytes/s, given the run's clock `tat`.
#[inline(always)]
pub fn police_fairly(
    sender: Sender,
    tat: u64,
    own: u64,
    now: u64,
    len: u32,
    limit: &Limit,
    share: u64,
) -> Verdict {
    let step = police(tat, now, len, limit);
    if limit.rate == 0 || share == 0 {
        return Verdict {
            run: step,
            connection: own,
        };
    }
    // A connection may run ahead of its share by its share's default burst,
    // but by no more than a second: 16 KiB, the burst's floor, is 16 s of
    // 1 KiB/s, and connections that far ahead kept the run in debt while
    // others starved. A new connection starts with that whole bucket,
    // which the cap keeps to at most a second of its share, as a run's
    // default bucket starts (`default_starting_credit`).
    let own_tolerance = transmit_ns(default_burst(share), share);
    let own_tolerance = if own_tolerance > NSEC_PER_SEC {
        NSEC_PER_SEC
    } else {
        own_tolerance
    };
    let own = if own == NEW_CONNECTION { now } else { own };
    let within_share = own <= now.saturating_add(own_tolerance);
    // The run may go a burst into debt for connections within their share,
    // but those already ahead of it get only half of that: the rest is
    // kept for connections behind, such as one whose segments were all
    // dropped and whose retransmission comes after a timeout, which
    // otherwise found the debt taken by the others every time.
    //
    // With the whole limit for its share, an upload is alone as far as the
    // counts know: a burst of debt only let a lone upload at 8 KiB/s pass
    // 1.18 of the limit. It gets none when ahead, and when behind just this
    // packet's worth: enough for a connection the counts have not seen yet
    // (all its segments dropped) to get one through; without it such
    // uploads were aborted by the kernel again. A download alone keeps the
    // debt (see `Sender::Remote`), and so does a quiet connection (see
    // `Sender::Quiet`).
    let tolerance = limit.tolerance_ns;
    let alone = share >= limit.rate && sender == Sender::Local;
    // A connection a whole burst of its share behind has had nothing
    // through for that long. With thousands of connections each share is
    // a segment a second or less, the debt is taken by whichever packets
    // come first, and one in retransmission backoff found it taken at
    // every retry: 10 000 downloads under 16 MiB/s read Jain's index
    // 0.31-0.40, a few dozen without a byte in 10 s. It may take the run a
    // second burst deeper, for one packet: once through, its clock is
    // current again and its ACKs clock it on (Jain's index 0.925, none
    // without bytes; `cargo xtask bench --scale`).
    //
    // Doubled by arithmetic, not in an arm of its own: the arm made the
    // verifier walk 28 % more of the download policer (5 764 instructions
    // against 4 509), and verifying it is the longest step of start-up.
    let starved = own.saturating_add(own_tolerance) < now;
    let debt = match (alone, own <= now) {
        (false, true) => tolerance * (1 + u64::from(starved)),
        (false, false) => tolerance / 2,
        (true, true) => limit.per_byte.ns(len),
        (true, false) => 0,
    };
    let debt_limit = now.saturating_add(tolerance).saturating_add(debt);
    let run = match step {
        Step::Drop if within_share && tat <= debt_limit => Step::Advance(limit.per_byte.ns(len)),
        step => step,
    };
    if !run.passes() {
        return Verdict {
            run,
            connection: own,
        };
    }
    // A connection that used spare capacity runs ahead of its share, but
    // no more than two of its bursts: it yields first when the others need
    // their share, yet not for long.
    let start = if own > now { own } else { now };
    let ahead = start.saturating_add(transmit_ns(u64::from(len), share));
    let cap = now.saturating_add(own_tolerance.saturating_mul(2));
    Verdict {
        run,
        connection: if ahead < cap { ahead } else { cap },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policer::{apply, default_starting_credit, primed_tat},
        sockets::{bulk, share},
    };

    const KIB: u64 = 1024;
    const MS: u64 = NSEC_PER_SEC / 1000;
    const MIB: u64 = 1024 * KIB;

    fn limit(rate: u64) -> Limit {
        Limit::new(rate, default_burst(rate))
    }

    #[test]
    fn a_connection_within_its_share_passes_while_the_run_is_over() {
        let lim = limit(MIB);
        let now = 10 * NSEC_PER_SEC;
        let over = now + NSEC_PER_SEC / 2; // half a second ahead: past the 250 ms burst
        assert_eq!(police(over, now, 1500, &lim), Step::Drop);
        let v = police_fairly(Sender::Remote, over, 0, now, 1500, &lim, MIB / 2);
        assert!(v.run.passes());
        // A connection ahead of its share is dropped, its clock unchanged.
        let hog = now + NSEC_PER_SEC;
        let v = police_fairly(Sender::Remote, over, hog, now, 1500, &lim, MIB / 2);
        assert_eq!(
            v,
            Verdict {
                run: Step::Drop,
                connection: hog
            }
        );
    }

    /// A connection a burst of its share behind gets one packet through a
    /// run a second burst deeper in debt than the others may take it; one
    /// merely behind does not, and the starved one's clock is current
    /// after it.
    #[test]
    fn a_starved_connection_gets_a_packet_through_a_deeper_debt() {
        let lim = limit(16 * MIB);
        let share = 16 * MIB / 10_000;
        let now = 100 * NSEC_PER_SEC;
        let tolerance = transmit_ns(lim.burst, lim.rate);
        let deep = now + 2 * tolerance + 1;
        let behind = now - NSEC_PER_SEC / 2;
        assert_eq!(
            police_fairly(Sender::Remote, deep, behind, now, 1448, &lim, share).run,
            Step::Drop
        );
        let starved = now - 5 * NSEC_PER_SEC;
        let v = police_fairly(Sender::Remote, deep, starved, now, 1448, &lim, share);
        assert!(v.run.passes());
        assert!(v.connection > now);
        let next = apply(deep, v.run);
        assert_eq!(
            police_fairly(Sender::Remote, next, v.connection, now, 1448, &lim, share).run,
            Step::Drop
        );
        // Three bursts deep, not even a starved one.
        let deepest = now + 3 * tolerance + 1;
        assert_eq!(
            police_fairly(Sender::Remote, deepest, starved, now, 1448, &lim, share).run,
            Step::Drop
        );
    }

    #[test]
    fn the_debt_is_bounded() {
        let lim = limit(MIB);
        let now = 10 * NSEC_PER_SEC;
        let deep = now + 2 * transmit_ns(lim.burst, lim.rate) + 1;
        let v = police_fairly(Sender::Remote, deep, 0, now, 1500, &lim, MIB / 2);
        assert_eq!(v.run, Step::Drop);
    }

    /// An upload alone (its share the whole limit) gets no debt ahead of
    /// its share, and only its packet's worth behind it; a download alone
    /// may owe as any connection within its share.
    #[test]
    fn a_lone_connection_gets_at_most_a_packet_of_debt() {
        let lim = limit(8 * KIB);
        let now = 10 * NSEC_PER_SEC;
        let over = now + transmit_ns(lim.burst, lim.rate) + 1;
        let ahead = now + 1;
        assert_eq!(
            police_fairly(Sender::Local, over, ahead, now, 100, &lim, lim.rate).run,
            Step::Drop
        );
        assert!(
            police_fairly(Sender::Local, over, now, now, 100, &lim, lim.rate)
                .run
                .passes()
        );
        let deeper = over + transmit_ns(100, lim.rate);
        assert_eq!(
            police_fairly(Sender::Local, deeper, now, now, 100, &lim, lim.rate).run,
            Step::Drop
        );
        let download = police_fairly(Sender::Remote, deeper, ahead, now, 100, &lim, lim.rate);
        assert!(download.run.passes());
        // Sharing, it may go deeper.
        for own in [ahead, now] {
            let v = police_fairly(Sender::Local, deeper, own, now, 100, &lim, lim.rate / 2);
            assert!(v.run.passes());
        }
    }

    /// Beside an upload that keeps the run in debt, a connection that has
    /// not moved bulk data (a control connection with one message to send)
    /// gets through, however long it was quiet; the upload, counted, is
    /// still held, however long its own pauses.
    #[test]
    fn a_quiet_connection_beside_a_lone_upload_gets_through() {
        let lim = limit(8 * KIB);
        let now = 40 * NSEC_PER_SEC;
        // Where the upload, paced at the limit, keeps the run's clock: just
        // past what its own packet's worth of debt reaches.
        let busy = now + transmit_ns(lim.burst, lim.rate) + transmit_ns(1000, lim.rate) + 1;
        let control = upload_sender(Some(300), lim.rate);
        assert_eq!(control, Sender::Quiet);
        for quiet_since in [now - 30 * NSEC_PER_SEC, now, NEW_CONNECTION] {
            let v = police_fairly(control, busy, quiet_since, now, 60, &lim, lim.rate);
            assert!(v.run.passes());
        }
        let upload = upload_sender(Some(MIB), lim.rate);
        assert_eq!(upload, Sender::Local);
        for paused_since in [now - 2 * NSEC_PER_SEC, now] {
            let v = police_fairly(upload, busy, paused_since, now, 1000, &lim, lim.rate);
            assert_eq!(v.run, Step::Drop);
        }
        // A packet without a TCP socket (UDP) is policed as a counted upload.
        assert_eq!(upload_sender(None, lim.rate), Sender::Local);
    }

    /// A new connection at a share of 1 KiB/s passes one second of it at
    /// once, not its whole 16 KiB bucket on the run's debt.
    #[test]
    fn a_new_connection_at_a_small_share_starts_with_one_second() {
        let lim = limit(KIB);
        let now = 10 * NSEC_PER_SEC;
        let mut tat = primed_tat(now, &lim, default_starting_credit(KIB));
        let mut own = NEW_CONNECTION;
        let mut passed = 0;
        for _ in 0..100 {
            let v = police_fairly(Sender::Remote, tat, own, now, 100, &lim, KIB);
            tat = apply(tat, v.run);
            own = v.connection;
            passed += if v.run.passes() { 100 } else { 0 };
        }
        assert!((KIB..=KIB + 100).contains(&passed), "{passed}");
        // At 1 MiB/s a new connection starts with its whole bucket, as before.
        let fresh = police_fairly(
            Sender::Remote,
            now,
            NEW_CONNECTION,
            now,
            1500,
            &limit(MIB),
            MIB,
        );
        assert_eq!(fresh.connection, now + transmit_ns(1500, MIB));
    }

    #[test]
    fn unlimited_passes_and_leaves_the_clocks() {
        let v = police_fairly(Sender::Remote, 5, 7, 10, 1500, &Limit::default(), 0);
        assert_eq!(
            v,
            Verdict {
                run: Step::Unlimited,
                connection: 7
            }
        );
    }

    #[test]
    fn extreme_values_saturate() {
        let lim = limit(crate::policer::MAX_RATE);
        let v = police_fairly(Sender::Remote, u64::MAX, 0, u64::MAX - 1, u32::MAX, &lim, 1);
        // Nothing wraps: the clock saturates at the end of time.
        assert!(v.run.passes());
        assert_eq!(v.connection, u64::MAX);
        let v = police_fairly(Sender::Remote, 0, u64::MAX, 0, 1500, &limit(1), 1);
        assert_eq!(v.run.passes(), police(0, 0, 1500, &limit(1)).passes());
    }

    /// Eight connections share 64 KiB/s, each offering from twice to nine
    /// times its share: each gets its share (Jain's index of the bytes
    /// passed at least 0.95), whoever offers more.
    #[test]
    fn eight_greedy_connections_at_a_low_limit_get_equal_shares() {
        let lim = limit(64 * KIB);
        let share = lim.rate / 8;
        let mut tat = primed_tat(NSEC_PER_SEC, &lim, default_starting_credit(lim.rate));
        let mut own = [NEW_CONNECTION; 8];
        let mut passed = [0u64; 8];
        let mut due = [0u64; 8];
        let step_ns = MS;
        let mut now = NSEC_PER_SEC;
        while now < 21 * NSEC_PER_SEC {
            for c in 0..8 {
                due[c] += (c as u64 + 2) * share * step_ns / NSEC_PER_SEC;
                while due[c] >= 1448 {
                    due[c] -= 1448;
                    let v = police_fairly(Sender::Remote, tat, own[c], now, 1448, &lim, share);
                    tat = apply(tat, v.run);
                    own[c] = v.connection;
                    passed[c] += if v.run.passes() { 1448 } else { 0 };
                }
            }
            now += step_ns;
        }
        let sum: f64 = passed.iter().map(|&p| p as f64).sum();
        let squares: f64 = passed.iter().map(|&p| (p as f64).powi(2)).sum();
        let jain = sum * sum / (8.0 * squares);
        assert!(jain >= 0.95, "Jain {jain:.3}: {passed:?}");
        let total = sum / (20 * lim.rate) as f64;
        assert!((0.95..=1.05).contains(&total), "{total}");
    }

    /// Eight connections share 8 KiB/s: three greedy ones offer a segment
    /// every 20 ms from the start, five arrive half a second later and wait
    /// out doubling retransmission timeouts whenever a segment is dropped.
    /// The share follows the connections counted as receiving, as the
    /// socket hooks count them: the three, then more as the five get data.
    /// Each of the five still gets a segment through within three tries,
    /// and the three hold no more than their share plus their burst.
    ///
    /// Without the one-second cap on a connection's tolerance, or without
    /// the half of the run's debt kept for connections behind their share,
    /// two or three of the five received nothing in 10 s.
    #[test]
    fn a_connection_in_retransmission_backoff_gets_through_at_a_low_limit() {
        let lim = limit(8 * KIB);
        let start = NSEC_PER_SEC;
        let mut tat = primed_tat(start, &lim, default_starting_credit(lim.rate));
        let mut own = [NEW_CONNECTION; 8];
        let mut passed = [0u64; 8];
        // The three took the start-up credit before the five's first segments.
        let mut next: [u64; 8] =
            core::array::from_fn(|c| if c < 3 { start } else { start + 500 * MS });
        let mut backoff = [200 * MS; 8];
        let mut tries = [0u32; 8];
        let end = start + 10 * NSEC_PER_SEC;
        let mut now = start;
        while now < end {
            for c in 0..8 {
                if now < next[c] {
                    continue;
                }
                // As the socket hooks count them: those that received
                // more than `bulk` share the limit.
                let counted = passed.iter().filter(|&&p| p > bulk(lim.rate)).count();
                let share = share(lim.rate, counted as u64);
                let v = police_fairly(Sender::Remote, tat, own[c], now, 1448, &lim, share);
                tat = apply(tat, v.run);
                own[c] = v.connection;
                if c < 3 {
                    next[c] = now + 20 * MS;
                } else if v.run.passes() {
                    backoff[c] = 200 * MS;
                    next[c] = now + transmit_ns(1448, share);
                } else {
                    tries[c] += if passed[c] == 0 { 1 } else { 0 };
                    next[c] = now + backoff[c];
                    backoff[c] *= 2;
                }
                passed[c] += if v.run.passes() { 1448 } else { 0 };
            }
            now += MS;
        }
        for c in 3..8 {
            assert!(passed[c] > 0 && tries[c] <= 3, "{c}: {passed:?} {tries:?}");
        }
        for c in 0..3 {
            let most = 10 * lim.rate / 3 + default_burst(lim.rate) + 2 * 1448;
            assert!(passed[c] <= most, "{c}: {passed:?}");
        }
    }

    /// A hog offering 4 MiB/s and a modest connection offering 300 KiB/s
    /// share 1 MiB/s: the modest one loses nothing, the hog gets the rest,
    /// and the sum holds the limit.
    #[test]
    fn a_hog_cannot_starve_a_modest_connection() {
        let lim = limit(MIB);
        let share = MIB / 2;
        let (mut tat, mut hog, mut modest) = (0u64, 0u64, 0u64);
        let (mut hog_passed, mut modest_passed, mut modest_offered) = (0u64, 0u64, 0u64);
        let secs = 20;
        let step_ns = 100_000; // every 100 µs
        let (hog_every, modest_every) = (
            4 * MIB * step_ns / NSEC_PER_SEC,
            300 * KIB * step_ns / NSEC_PER_SEC,
        );
        let (mut hog_due, mut modest_due) = (0u64, 0u64);
        let mut now = NSEC_PER_SEC;
        while now < (secs + 1) * NSEC_PER_SEC {
            hog_due += hog_every;
            modest_due += modest_every;
            while hog_due >= 1500 {
                hog_due -= 1500;
                let v = police_fairly(Sender::Remote, tat, hog, now, 1500, &lim, share);
                tat = apply(tat, v.run);
                hog = v.connection;
                hog_passed += if v.run.passes() { 1500 } else { 0 };
            }
            while modest_due >= 1500 {
                modest_due -= 1500;
                modest_offered += 1500;
                let v = police_fairly(Sender::Remote, tat, modest, now, 1500, &lim, share);
                tat = apply(tat, v.run);
                modest = v.connection;
                modest_passed += if v.run.passes() { 1500 } else { 0 };
            }
            now += step_ns;
        }
        assert_eq!(modest_passed, modest_offered);
        let total = (hog_passed + modest_passed) as f64 / (secs * MIB) as f64;
        assert!((0.98..=1.03).contains(&total), "{total}");
    }
}
