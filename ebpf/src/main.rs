//! The kernel half of throttle: one `cgroup_skb` program per direction,
//! attached to the run's own cgroup, policing every packet of every socket
//! created inside it, and a `sock_ops` program that paces the cgroup's TCP
//! uploads and clamps its download windows so the policers rarely drop.
//!
//! Each run loads its own copy of this object, so the maps belong to
//! exactly one run and one cgroup; nothing here asks which cgroup a packet
//! belongs to (in ingress, `bpf_get_current_cgroup_id()` names whatever task
//! the softirq interrupted).
//!
//! The entry points are here; `maps` holds the run's state, `conns` each
//! socket's, `police` the skb policers, `flows` the connection counts and
//! `tuning` the socket options.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so AtomicU64::fetch_add does not
// exist; the intrinsic is the only way to reach BPF_XADD from Rust.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod conns;
mod flows;
mod maps;
mod police;
mod tuning;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RWND_INIT, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, BPF_TCP_ESTABLISHED,
    },
    helpers::bpf_ktime_get_ns,
    macros::{cgroup_skb, sock_ops},
    programs::{SkBuffContext, SockOpsContext},
};
use throttle_common::{DOWN, UP, nested, sockets::initial_window};

use crate::{
    flows::{count_if_bulk, uncount},
    police::admit,
    tuning::{first_share, reply, set_reply, socket_limited, tune, tuning_on},
};

const DROP: i32 = 0;
const PASS: i32 = 1;
/// Egress only: drop and report congestion (NET_XMIT_CN). TCP keeps the
/// segment queued and enters CWR instead of treating it as loss; a UDP send
/// succeeds rather than failing with a baffling EPERM, so UDP senders never
/// learn of the drop (docs/enforcement.md).
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
pub fn throttle_tuning(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let established =
        op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB;
    let opening = op == BPF_SOCK_OPS_RWND_INIT;
    let segment = op == BPF_SOCK_OPS_HDR_OPT_LEN_CB;
    if segment && !tuning_on() {
        // Before the first limit a segment has nothing to count or tune:
        // a run without one pays only this per segment.
        return 1;
    }
    // One path for all three events, so the verifier (whose time is most of
    // a run's start-up) checks the lookup once, not three times.
    if established || segment || opening {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // Checked per segment, so a `throttle set` of the lists reaches
        // established connections too.
        let limited = socket_limited(&ctx);
        if opening {
            // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
            let mss = unsafe { (*ctx.ops).mss_cache };
            let own = initial_window(first_share(now, limited), mss);
            set_reply(&ctx, nested::initial_window(own, reply(&ctx)));
            return 1;
        }
        if established {
            // Asks for a callback per outgoing segment (the header-option
            // length query; no option is ever written) and one per state
            // change.
            let flags =
                ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG;
            let _ = ctx.set_cb_flags(flags as i32);
        } else if limited {
            count_if_bulk(&ctx, now);
        }
        tune(&ctx, now, limited);
    } else if op == BPF_SOCK_OPS_STATE_CB
        && ctx.arg(0) == BPF_TCP_ESTABLISHED
        && ctx.arg(1) != BPF_TCP_ESTABLISHED
    {
        uncount(&ctx);
    }
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
