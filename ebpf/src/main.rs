//! The kernel half of throttle: one `cgroup_skb` program per direction,
//! attached to the run's own cgroup, policing every packet of every socket
//! created inside it, and a `sock_ops` program that paces the cgroup's TCP
//! uploads and clamps its download windows so the policers rarely drop.
//!
//! Each run loads its own copy of this object, so the maps below belong to
//! exactly one run and one cgroup; nothing here asks which cgroup a packet
//! belongs to (in ingress, `bpf_get_current_cgroup_id()` names whatever task
//! the softirq interrupted).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
// The BPF target has no compare-and-swap, so AtomicU64::fetch_add does not
// exist; the intrinsic is the only way to reach BPF_XADD from Rust.
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG,
        BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, BPF_TCP_ESTABLISHED,
    },
    helpers::{bpf_ktime_get_ns, bpf_setsockopt},
    macros::{cgroup_skb, map, sock_ops},
    maps::{Array, PerCpuArray},
    programs::{SkBuffContext, SockOpsContext},
};
use throttle_common::{
    Counters, DIRECTIONS, DOWN, Limit, UP,
    packet::{IPPROTO_TCP, ip_header_len, layout, tcp_without_payload},
    policer::{Step, police},
    sockets::{is_bulk, pacing_rate, receive_window, share},
};

#[map(name = "LIMITS")]
static LIMITS: Array<Limit> = Array::with_max_entries(DIRECTIONS, 0);

/// Each direction's theoretical arrival time (see `throttle_common::policer`).
#[map(name = "CLOCK")]
static CLOCK: Array<u64> = Array::with_max_entries(DIRECTIONS, 0);

/// Entry 0 turns the socket hooks on; userspace sets it with the first
/// limit of the run, so an unlimited run makes no per-segment calls, and a
/// run that goes back to unlimited still has its clamps undone.
#[map(name = "SOCKETS")]
static SOCKETS: Array<u32> = Array::with_max_entries(1, 0);

/// Per direction: how many of the cgroup's established TCP connections
/// carry bulk data that way (see `throttle_common::sockets::BULK`); the
/// socket hooks give each its share of that direction's limit.
#[map(name = "FLOWS")]
static FLOWS: Array<u64> = Array::with_max_entries(DIRECTIONS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

const DROP: i32 = 0;
const PASS: i32 = 1;
/// Egress only: drop and report congestion (NET_XMIT_DROP). TCP keeps the
/// segment queued and enters CWR instead of treating it as loss, and UDP
/// senders see ENOBUFS rather than a baffling EPERM.
const DROP_CONGESTED: i32 = 2;

#[cgroup_skb(ingress)]
pub fn throttle_down(ctx: SkBuffContext) -> i32 {
    if admit(&ctx, DOWN) { PASS } else { DROP }
}

#[cgroup_skb(egress)]
pub fn throttle_up(ctx: SkBuffContext) -> i32 {
    if admit(&ctx, UP) {
        PASS
    } else {
        DROP_CONGESTED
    }
}

/// Runs for the TCP sockets of the cgroup: from the handshake on, and then
/// before every segment a socket sends, it keeps the socket's receive window
/// and pacing cap in line with the current limits, so a `throttle set`
/// reaches existing connections with their next ACK or data segment.
#[sock_ops]
pub fn throttle_socks(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // Asks for a callback per outgoing segment (the header-option
        // length query; no option is ever written) and one per state change.
        let flags =
            ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
        tune(&ctx);
    } else if op == BPF_SOCK_OPS_HDR_OPT_LEN_CB {
        count_if_bulk(&ctx);
        tune(&ctx);
    } else if op == BPF_SOCK_OPS_STATE_CB
        && ctx.arg(0) == BPF_TCP_ESTABLISHED
        && ctx.arg(1) != BPF_TCP_ESTABLISHED
    {
        let flags = ctx.cb_flags();
        for (direction, mark) in COUNTED {
            if flags & mark != 0 {
                count_flow(direction, u64::MAX); // minus one, wrapping
            }
        }
    }
    1
}

/// Per direction, the per-socket mark of a connection counted in FLOWS. A
/// socket has no other storage here, so the marks are callback flags whose
/// callbacks (retransmission timeout, retransmission) are rare and ignored.
const COUNTED: [(u32, u32); 2] = [
    (DOWN, BPF_SOCK_OPS_RTO_CB_FLAG),
    (UP, BPF_SOCK_OPS_RETRANS_CB_FLAG),
];

/// Counts the connection in a direction's FLOWS once it has moved bulk data
/// that way, so control connections, idle keep-alives and a download's
/// ACK stream do not take a share of the limit.
#[inline(always)]
fn count_if_bulk(ctx: &SockOpsContext) {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
    let (received, acked) = unsafe { ((*ctx.ops).bytes_received, (*ctx.ops).bytes_acked) };
    for ((direction, mark), moved) in COUNTED.into_iter().zip([received, acked]) {
        let flags = ctx.cb_flags();
        if flags & mark == 0 && is_bulk(moved) && ctx.set_cb_flags((flags | mark) as i32).is_ok() {
            count_flow(direction, 1);
        }
    }
}

#[inline(always)]
fn count_flow(direction: u32, delta: u64) {
    if let Some(flows) = FLOWS.get_ptr_mut(direction) {
        // SAFETY: points into the map value, which outlives the program.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(flows, delta) };
    }
}

const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;
const SOL_TCP: i32 = 6;
const TCP_WINDOW_CLAMP: i32 = 10;

#[inline(always)]
fn tune(ctx: &SockOpsContext) {
    if SOCKETS.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    let (Some(down), Some(up)) = (LIMITS.get(DOWN), LIMITS.get(UP)) else {
        return;
    };
    let flows = |direction| FLOWS.get(direction).copied().unwrap_or(0);
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call; the
    // options point to locals of the size passed. Failures only mean the
    // socket keeps its current setting; the policer still holds the limit.
    unsafe {
        let mut window = receive_window(
            share(down.rate, flows(DOWN)),
            (*ctx.ops).srtt_us,
            (*ctx.ops).mss_cache,
        ) as i32;
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_WINDOW_CLAMP,
            (&mut window as *mut i32).cast(),
            4,
        );
        let mut pacing = pacing_rate(share(up.rate, flows(UP)));
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&mut pacing as *mut u32).cast(),
            4,
        );
    }
}

#[inline(always)]
fn admit(ctx: &SkBuffContext, direction: u32) -> bool {
    let (Some(limit), Some(clock), Some(counters)) = (
        LIMITS.get(direction),
        CLOCK.get_ptr_mut(direction),
        COUNTERS.get_ptr_mut(direction),
    ) else {
        // Unreachable for in-range array indices; failing open keeps a
        // broken map from cutting the command off the network.
        return true;
    };
    let len = u64::from(ctx.len());
    let exempt = is_tcp_control(ctx);
    // SAFETY: `clock` and `counters` point into map values that live as long
    // as the program; the helper has no preconditions.
    unsafe {
        let now = bpf_ktime_get_ns();
        let step = if exempt {
            Step::Unlimited
        } else {
            police(core::ptr::read_volatile(clock), now, len, limit)
        };
        match step {
            // Only after an idle gap; a racing CPU's packet may be forgotten, which
            // errs by one packet and only when the flow was under its limit.
            Step::Restart(tat) => core::ptr::write_volatile(clock, tat),
            // The hot path: an atomic add whose result is unused compiles to
            // BPF_XADD, so concurrent CPUs never lose each other's packets.
            Step::Advance(cost) => {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(clock, cost);
            }
            Step::Unlimited | Step::Drop => {}
        }
        let counters = &mut *counters;
        if step.passes() {
            counters.passed_bytes += len;
            counters.passed_packets += 1;
        } else {
            counters.dropped_bytes += len;
            counters.dropped_packets += 1;
        }
        step.passes()
    }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
