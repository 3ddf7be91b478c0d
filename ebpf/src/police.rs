//! The skb policers: every packet of the run's sockets, in each direction,
//! against the run's bucket and its connection's share of it (see
//! `throttle_common::policer` and `throttle_common::fairness`).

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::{bpf_ktime_get_ns, bpf_tcp_sock},
    maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use throttle_common::{
    DOWN,
    fairness::{Sender, police_fairly, upload_sender},
    networks::{SCOPE_EVERYTHING, limited, mapped_words},
    packet::{IPPROTO_TCP, ip_header_len, layout, tcp_without_payload},
    policer::{Step, police},
    sockets::share,
};

use crate::{
    conns::{conn_of_packet, socket_of},
    flows::{receiving, sending},
    maps::{CLOCK, COUNTERS, EXCLUDED, LIMITS, NETWORKS, SCOPE, count, xadd},
};

/// Whether the packet passes, counting it either way.
#[inline(always)]
pub fn admit(ctx: &SkBuffContext, direction: u32) -> bool {
    let (Some(limit), Some(clock), Some(counters)) = (
        LIMITS.get(direction),
        CLOCK.get_ptr_mut(direction),
        COUNTERS.get_ptr_mut(direction),
    ) else {
        // Unreachable for in-range array indices; failing open keeps a
        // broken map from cutting the command off the network.
        return true;
    };
    let packet = ctx.len();
    let len = u64::from(packet);
    if !peer_limited(ctx, direction) {
        if let Some(excluded) = EXCLUDED.get_ptr_mut(direction) {
            // SAFETY: points into this CPU's map value.
            unsafe { count(excluded, direction, len, true) };
        }
        return true;
    }
    if limit.rate == 0 {
        // No limit in this direction (a run started without one, to be
        // `set` later): nothing to police, so nothing more is read.
        // SAFETY: points into this CPU's map value.
        unsafe { count(counters, direction, len, true) };
        return true;
    }
    let exempt = is_tcp_control(ctx);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `clock` points into a map value, which outlives the program.
    let tat = unsafe { core::ptr::read_volatile(clock) };
    let step = if exempt {
        Step::Unlimited
    } else if let sk = socket_of(ctx)
        && let Some(conn) = conn_of_packet(sk)
    {
        let slot = direction as usize & 1;
        let (flows, sender) = if direction == DOWN {
            (receiving(now, limit), Sender::Remote)
        } else {
            (sending(), upload_sender(acked(sk), limit.rate))
        };
        let share = share(limit.rate, flows);
        let verdict = police_fairly(sender, tat, conn.fair[slot], now, packet, limit, share);
        conn.fair[slot] = verdict.connection;
        verdict.run
    } else {
        // A packet without a full socket to keep a clock in (the kernel
        // could not store one): the run's bucket alone. Taken before the
        // fair policer, so the verifier checks that policer with the
        // socket's value known to be there, once.
        police(tat, now, packet, limit)
    };
    match step {
        // Only after an idle gap; a racing CPU's packet may be forgotten,
        // which errs by one packet and only when the flow was under its
        // limit.
        // SAFETY: as for the read above.
        Step::Restart(tat) => unsafe { core::ptr::write_volatile(clock, tat) },
        // The hot path: atomic, so concurrent CPUs never lose each other's
        // packets.
        // SAFETY: as above.
        Step::Advance(cost) => unsafe { xadd(clock, cost) },
        Step::Unlimited | Step::Drop => {}
    }
    // SAFETY: points into this CPU's map value.
    unsafe { count(counters, direction, len, step.passes()) };
    step.passes()
}

/// The bytes acknowledged on the TCP connection of a packet's socket `sk`
/// (from [`socket_of`]); `None` when it has no full TCP socket (UDP, a
/// handshake's request socket).
#[inline(always)]
fn acked(sk: *mut bpf_sock) -> Option<u64> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the packet's socket, checked for null just above.
    let tcp = unsafe { bpf_tcp_sock(sk) };
    // SAFETY: the helper's result, read only when not null, is valid for
    // this program run.
    unsafe { tcp.as_ref() }.map(|tcp| tcp.bytes_acked)
}

/// Whether the lists leave the packet's peer (its source on the way in,
/// its destination on the way out) limited. Anything unreadable is limited.
#[inline(always)]
fn peer_limited(ctx: &SkBuffContext, direction: u32) -> bool {
    let scope = SCOPE.get(0).copied().unwrap_or(SCOPE_EVERYTHING);
    if scope == SCOPE_EVERYTHING {
        return true;
    }
    let Ok(first) = ctx.load::<u8>(0) else {
        return true;
    };
    let peer = match first >> 4 {
        4 => {
            let at = if direction == DOWN { 12 } else { 16 };
            let Ok(v4) = ctx.load::<u32>(at) else {
                return true;
            };
            mapped_words(v4)
        }
        6 => {
            let at = if direction == DOWN { 8 } else { 24 };
            let Ok(v6) = ctx.load::<[u32; 4]>(at) else {
                return true;
            };
            v6
        }
        _ => return true,
    };
    limited(NETWORKS.get(Key::new(128, peer)).copied(), scope)
}

/// Whether the packet is a TCP segment without payload (see
/// `throttle_common::packet`). Anything unreadable is policed as data.
#[inline(always)]
fn is_tcp_control(ctx: &SkBuffContext) -> bool {
    let Ok(first) = ctx.load::<u8>(0) else {
        return false;
    };
    let Some(layout) = layout(first) else {
        return false;
    };
    if ctx.load::<u8>(layout.protocol_at) != Ok(IPPROTO_TCP) {
        return false;
    }
    let (Ok(length), Ok(data_offset)) = (
        ctx.load::<u16>(layout.length_at),
        ctx.load::<u8>(ip_header_len(first) as usize + 12),
    ) else {
        return false;
    };
    tcp_without_payload(first, u16::from_be(length), data_offset)
}
