//! Socket tuning: the receive-window clamp and pacing cap that make TCP
//! hold the limit before the policers have to drop (see
//! `throttle_common::sockets`).

use aya_ebpf::{helpers::bpf_setsockopt, maps::lpm_trie::Key, programs::SockOpsContext};
use throttle_common::{
    DOWN, UP,
    nested::{Tuning, compose},
    networks::{SCOPE_EVERYTHING, limited, mapped_words},
    sockets::{drained, pacing_rate, receive_window, share, window_gain, window_rtt},
};

use crate::{
    flows::{receiving, sending},
    maps::{CLOCK, LIMITS, NETWORKS, SCOPE, TUNING},
};

const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;
const SOL_TCP: i32 = 6;
const TCP_WINDOW_CLAMP: i32 = 10;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Whether the run has limits to tune for (userspace turns it on with the
/// first limit).
#[inline(always)]
pub fn tuning_on() -> bool {
    TUNING.get(0).copied().unwrap_or(0) != 0
}

/// Whether the lists leave this socket's peer limited.
#[inline(always)]
pub fn socket_limited(ctx: &SockOpsContext) -> bool {
    let scope = SCOPE.get(0).copied().unwrap_or(SCOPE_EVERYTHING);
    if scope == SCOPE_EVERYTHING {
        return true;
    }
    // Every field is read, each at its own constant offset, before the
    // family chooses: the verifier refuses a context access whose offset
    // the compiler computed from a branch.
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
    let (v4, v6) = unsafe {
        let ops = ctx.ops;
        (
            core::ptr::read_volatile(&(*ops).remote_ip4),
            [
                core::ptr::read_volatile(&(*ops).remote_ip6[0]),
                core::ptr::read_volatile(&(*ops).remote_ip6[1]),
                core::ptr::read_volatile(&(*ops).remote_ip6[2]),
                core::ptr::read_volatile(&(*ops).remote_ip6[3]),
            ],
        )
    };
    let peer = match ctx.family() {
        AF_INET => mapped_words(v4),
        AF_INET6 => v6,
        _ => return true,
    };
    limited(NETWORKS.get(Key::new(128, peer)).copied(), scope)
}

/// Sets one socket option whose value is an int; a failure only means the
/// socket keeps its current setting, as the policer still holds the limit.
#[inline(always)]
fn set_option(ctx: &SockOpsContext, level: i32, name: i32, mut value: u32) {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call; the
    // option points to a local of the size passed.
    unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            level,
            name,
            (&raw mut value).cast(),
            size_of::<u32>() as i32,
        );
    }
}

/// The context's `reply` word (which `args[0]` shares), as the runs inside
/// this one left it.
#[inline(always)]
pub fn reply(ctx: &SockOpsContext) -> u32 {
    // The base is read anew for each access, so the compiler cannot keep
    // `ctx + 4` in a register for the read and the write: the verifier
    // refuses a context access through a moved pointer.
    // SAFETY: reads a local.
    let ops = unsafe { core::ptr::read_volatile(&ctx.ops) };
    // SAFETY: ops is the kernel's bpf_sock_ops for this call.
    unsafe { core::ptr::read_volatile(&(*ops).__bindgen_anon_1.reply) }
}

/// Leaves `value` in the context's `reply` word.
#[inline(always)]
pub fn set_reply(ctx: &SockOpsContext, value: u32) {
    // SAFETY: reads a local (see `reply`).
    let ops = unsafe { core::ptr::read_volatile(&ctx.ops) };
    // SAFETY: ops is the kernel's bpf_sock_ops for this call; `reply` is
    // the one field a program may write.
    unsafe { core::ptr::write_volatile(&raw mut (*ops).__bindgen_anon_1.reply, value) };
}

/// Keeps the socket's receive window clamp and pacing cap in line with the
/// limits, or with a tighter run's inside this one (see
/// `throttle_common::nested`); a socket the lists leave unlimited gets
/// neither of this run's.
#[inline(always)]
pub fn tune(ctx: &SockOpsContext, now: u64, limited: bool) {
    if !tuning_on() {
        return;
    }
    let (Some(down), Some(up)) = (LIMITS.get(DOWN), LIMITS.get(UP)) else {
        return;
    };
    // A rate of 0 (no clamp, no cap) for a socket the lists leave alone,
    // as arithmetic rather than a branch: one path for the verifier.
    let keep = u64::from(limited);
    let (down_rate, up_rate) = (down.rate * keep, up.rate * keep);
    let tat = CLOCK.get(DOWN).copied().unwrap_or(0);
    let tolerance = down.tolerance_ns * keep;
    let flows = receiving(now, down);
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
    let (srtt_us, mss) = unsafe { ((*ctx.ops).srtt_us, (*ctx.ops).mss_cache) };
    let window = receive_window(
        share(down_rate, flows),
        window_rtt(srtt_us, flows),
        mss,
        window_gain(drained(tat, now, tolerance)),
    );
    let pacing = pacing_rate(share(up_rate, sending()));
    // The runs inside this one have had their turn; a looser value here
    // must not undo their tighter one.
    let step = compose(Tuning { window, pacing }, reply(ctx));
    if step.set_window {
        set_option(ctx, SOL_TCP, TCP_WINDOW_CLAMP, window);
    }
    if step.set_pacing {
        set_option(ctx, SOL_SOCKET, SO_MAX_PACING_RATE, pacing);
    }
    set_reply(ctx, step.reply);
}

/// The download share a connection opening now would get: it joins the
/// connections receiving; 0 (no window to set) when tuning is off, the
/// direction unlimited, or the lists leave the peer alone.
#[inline(always)]
pub fn first_share(now: u64, limited: bool) -> u64 {
    if !tuning_on() {
        return 0;
    }
    let Some(down) = LIMITS.get(DOWN) else {
        return 0;
    };
    share(down.rate * u64::from(limited), receiving(now, down) + 1)
}
