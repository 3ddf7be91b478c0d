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
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RWND_INIT,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
        BPF_TCP_ESTABLISHED, bpf_sock,
    },
    btf_maps::SkStorage,
    helpers::{bpf_ktime_get_ns, bpf_setsockopt, bpf_tcp_sock, generated::bpf_sk_storage_get},
    macros::{btf_map, cgroup_skb, map, sock_ops},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{SkBuffContext, SockOpsContext},
};
use throttle_common::{
    Counters, DIRECTIONS, DOWN, Limit, UP,
    fairness::{Sender, police_fairly, upload_sender},
    networks::{MAX_NETWORKS, SCOPE_EVERYTHING, limited, mapped_words},
    packet::{IPPROTO_TCP, ip_header_len, layout, tcp_without_payload},
    policer::{Step, police, transmit_ns},
    sockets::{
        Seen, Tally, active_flows, bulk, counts_in, drained, initial_window, pacing_rate,
        period_ns, receive_window, share, tally_slot, window_gain, window_rtt,
    },
};

#[map]
static LIMITS: Array<Limit> = Array::with_max_entries(DIRECTIONS, 0);

/// Each direction's theoretical arrival time (see `throttle_common::policer`).
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(DIRECTIONS, 0);

/// Entry 0 turns the socket hooks' tuning on; userspace sets it with the
/// first limit of the run, so an unlimited run makes no per-segment calls,
/// and a run that goes back to unlimited still has its clamps undone.
#[map]
static TUNING: Array<u32> = Array::with_max_entries(1, 0);

/// How many of the cgroup's established TCP connections have sent bulk
/// data (see `throttle_common::sockets::bulk`); the socket hooks give each
/// its share of the upload limit.
#[map]
static FLOWS: Array<u64> = Array::with_max_entries(1, 0);

/// The download connections that received data in the current and the
/// last period (see `throttle_common::sockets::Tally`): only they share the
/// download limit, so a connection that finished its range or waits hands
/// its share to the busy ones.
#[map]
static TALLIES: Array<Tally> = Array::with_max_entries(2, 0);

/// What one of the run's sockets carries for this run: socket-local
/// storage, one value per socket per map, so per run (each run loads its
/// own object), created on the socket's first packet or callback and freed
/// with the socket. Nothing is hashed or evicted, however many connections
/// the run holds, and a nested run's programs, which see the same sockets,
/// keep values of their own.
#[repr(C)]
#[derive(Clone, Copy)]
struct Conn {
    /// When the socket was last counted in a download tally.
    seen: Seen,
    /// Its clock at its share of each direction's limit (see
    /// `throttle_common::fairness`); zero, `NEW_CONNECTION`, until policed.
    fair: [u64; DIRECTIONS as usize],
    /// 1 while the socket is counted in FLOWS.
    counted: u64,
}

#[btf_map]
static CONNS: SkStorage<Conn> = SkStorage::new();

/// The run's value for the full socket `sk`, created zeroed if it has none
/// yet; None if the kernel cannot store one (out of memory).
///
/// # Safety
/// `sk` must be a socket the verifier has checked is not null; the helper
/// gives no value for one that is not a full socket.
#[inline(always)]
unsafe fn conn_of(sk: *mut bpf_sock) -> Option<&'static mut Conn> {
    let map = core::ptr::from_ref(&CONNS).cast_mut().cast();
    let flags = u64::from(BPF_SK_STORAGE_GET_F_CREATE);
    // SAFETY: the map is CONNS and `sk` a socket (see above); a null
    // initial value asks for a zeroed one.
    let value = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) };
    // SAFETY: a value the helper returns lives as long as the socket, which
    // outlives this program run.
    unsafe { value.cast::<Conn>().as_mut() }
}

/// The run's value for the socket of a sock_ops callback.
#[inline(always)]
fn conn_of_ops(ctx: &SockOpsContext) -> Option<&'static mut Conn> {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call; its `sk`
    // is a full socket or null, checked before use.
    unsafe {
        let sk = core::ptr::read_volatile(&(*ctx.ops).__bindgen_anon_2.sk);
        if sk.is_null() { None } else { conn_of(sk) }
    }
}

/// The socket a packet belongs to, or null. Read once per packet and
/// passed on: each read is a value the verifier knows nothing of, so two
/// reads, each checked for null, are four cases to it, not two.
#[inline(always)]
fn socket_of(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: ctx.skb is the kernel's __sk_buff for this call.
    unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).__bindgen_anon_2.sk) }
}

/// The run's value for a packet's socket `sk` (from [`socket_of`]), if it
/// has a full one (the helper itself gives none for a request or
/// time-wait socket).
#[inline(always)]
fn conn_of_packet(sk: *mut bpf_sock) -> Option<&'static mut Conn> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the packet's socket, checked for null just above.
    unsafe { conn_of(sk) }
}

#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

/// `--exclude` and `--only`: the run's networks by longest prefix, IPv4 as
/// IPv4-mapped IPv6, each marked `EXCLUDE` or `ONLY` (see
/// `throttle_common::networks`).
#[map]
static NETWORKS: LpmTrie<[u32; 4], u32> = LpmTrie::with_max_entries(MAX_NETWORKS, 0);

/// Entry 0: which of `throttle_common::networks`' scopes the lists make;
/// `SCOPE_EVERYTHING` (no lists) skips the lookup.
#[map]
static SCOPE: Array<u32> = Array::with_max_entries(1, 0);

/// The traffic the lists leave unlimited, per direction, counted apart.
#[map]
static EXCLUDED: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

const DROP: i32 = 0;
const PASS: i32 = 1;
/// Egress only: drop and report congestion (NET_XMIT_CN). TCP keeps the
/// segment queued and enters CWR instead of treating it as loss; a UDP send
/// succeeds rather than failing with a baffling EPERM, so UDP senders never
/// learn of the drop (README, "How limits are enforced").
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
    // One path for all three events, so the verifier (whose time is most of
    // a run's start-up) checks the lookup once, not three times.
    if established || op == BPF_SOCK_OPS_HDR_OPT_LEN_CB || opening {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // Checked per segment, so a `throttle set` of the lists reaches
        // established connections too.
        let limited = socket_limited(&ctx);
        if opening {
            // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
            let mss = unsafe { (*ctx.ops).mss_cache };
            ctx.set_reply(initial_window(first_share(now, limited), mss));
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
        && let Some(conn) = conn_of_ops(&ctx)
        && conn.counted != 0
    {
        conn.counted = 0;
        count_flow(u64::MAX); // minus one, wrapping
    }
    1
}

/// Counts the connection in FLOWS once it has sent bulk data, so control
/// connections, idle keep-alives and a download's ACK stream do not take a
/// share of the upload limit; and in the current period's download tally
/// while it receives.
#[inline(always)]
fn count_if_bulk(ctx: &SockOpsContext, now: u64) {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
    let (received, acked) = unsafe { ((*ctx.ops).bytes_received, (*ctx.ops).bytes_acked) };
    let Some(conn) = conn_of_ops(ctx) else {
        return;
    };
    if conn.counted == 0 && acked > bulk(up_rate()) {
        conn.counted = 1;
        count_flow(1);
    }
    let rate = down_rate();
    if received <= bulk(rate) {
        return;
    }
    let epoch = now / period_ns(rate);
    let last = conn.seen;
    if !counts_in(epoch, last, received, rate) {
        if received > last.received {
            conn.seen.received = received;
        }
        return;
    }
    conn.seen = Seen { epoch, received };
    if let Some(tally) = TALLIES.get_ptr_mut(tally_slot(epoch)) {
        // SAFETY: points into the map value, which outlives the program.
        // The first socket of a period resets the slot; two CPUs doing so
        // at once may lose one count, which only errs for a period.
        unsafe {
            if core::ptr::read_volatile(&(*tally).epoch) != epoch {
                core::ptr::write_volatile(tally, Tally { epoch, flows: 0 });
            }
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*tally).flows, 1);
        }
    }
}

#[inline(always)]
fn count_flow(delta: u64) {
    if let Some(flows) = FLOWS.get_ptr_mut(0) {
        // SAFETY: points into the map value, which outlives the program.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(flows, delta) };
    }
}

const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;
const SOL_TCP: i32 = 6;
const TCP_WINDOW_CLAMP: i32 = 10;

/// Whether the lists leave this socket's peer limited.
#[inline(always)]
fn socket_limited(ctx: &SockOpsContext) -> bool {
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

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Keeps the socket's receive window clamp and pacing cap in line with the
/// limits; a socket the lists leave unlimited gets neither.
#[inline(always)]
fn tune(ctx: &SockOpsContext, now: u64, limited: bool) {
    if TUNING.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    let (Some(down), Some(up)) = (LIMITS.get(DOWN), LIMITS.get(UP)) else {
        return;
    };
    // A rate of 0 (no clamp, no cap) for a socket the lists leave alone,
    // as arithmetic rather than a branch: one path for the verifier.
    let keep = u64::from(limited);
    let (down_rate, up_rate) = (down.rate * keep, up.rate * keep);
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call; the
    // options point to locals of the size passed. Failures only mean the
    // socket keeps its current setting; the policer still holds the limit.
    unsafe {
        let tat = CLOCK.get(DOWN).copied().unwrap_or(0);
        let tolerance = if down_rate == 0 {
            0
        } else {
            transmit_ns(down.burst, down_rate)
        };
        let flows = receiving(now, down.rate);
        let mut window = receive_window(
            share(down_rate, flows),
            window_rtt((*ctx.ops).srtt_us, flows),
            (*ctx.ops).mss_cache,
            window_gain(drained(tat, now, tolerance)),
        ) as i32;
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_WINDOW_CLAMP,
            (&mut window as *mut i32).cast(),
            4,
        );
        let flows = FLOWS.get(0).copied().unwrap_or(0);
        let mut pacing = pacing_rate(share(up_rate, flows));
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&mut pacing as *mut u32).cast(),
            4,
        );
    }
}

/// The download share a connection opening now would get: it joins the
/// connections receiving; 0 (no window to set) when tuning is off, the
/// direction unlimited, or the lists leave the peer alone.
#[inline(always)]
fn first_share(now: u64, limited: bool) -> u64 {
    if TUNING.get(0).copied().unwrap_or(0) == 0 {
        return 0;
    }
    let limit = down_rate();
    share(limit * u64::from(limited), receiving(now, limit) + 1)
}

/// How many download connections are receiving data now, under a
/// download limit of `rate` (which sets the tally's period).
#[inline(always)]
fn receiving(now: u64, rate: u64) -> u64 {
    let tally = |slot| TALLIES.get(slot).copied().unwrap_or_default();
    active_flows(now / period_ns(rate), [tally(0), tally(1)])
}

/// The download limit's rate, 0 when unlimited.
#[inline(always)]
fn down_rate() -> u64 {
    LIMITS.get(DOWN).map_or(0, |down| down.rate)
}

/// The upload limit's rate, 0 when unlimited.
#[inline(always)]
fn up_rate() -> u64 {
    LIMITS.get(UP).map_or(0, |up| up.rate)
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
    // The IP header's first byte (version, header length), read once for
    // both questions asked of the packet.
    let first = ctx.load::<u8>(0).ok();
    if !peer_limited(ctx, direction, first) {
        if let Some(excluded) = EXCLUDED.get_ptr_mut(direction) {
            // SAFETY: points into this CPU's map value, which outlives the program.
            unsafe {
                (*excluded).passed_bytes += len;
                (*excluded).passed_packets += 1;
            }
        }
        return true;
    }
    let exempt = is_tcp_control(ctx, first);
    // SAFETY: `clock` and `counters` point into map values that live as long
    // as the program; the helper has no preconditions.
    unsafe {
        let now = bpf_ktime_get_ns();
        let tat = core::ptr::read_volatile(clock);
        let step = if exempt {
            Step::Unlimited
        } else if limit.rate != 0
            && let sk = socket_of(ctx)
            && let Some(conn) = conn_of_packet(sk)
        {
            let slot = direction as usize & 1;
            let flows = if direction == DOWN {
                receiving(now, limit.rate)
            } else {
                FLOWS.get(0).copied().unwrap_or(0)
            };
            let sender = if direction == DOWN {
                Sender::Remote
            } else {
                upload_sender(acked(sk), limit.rate)
            };
            let share = share(limit.rate, flows);
            let verdict = police_fairly(sender, tat, conn.fair[slot], now, len, limit, share);
            conn.fair[slot] = verdict.connection;
            verdict.run
        } else {
            // No limit, or a packet without a full socket to keep a clock
            // in (the kernel could not store one): the run's bucket alone.
            // One branch for both, taken before the fair policer, so the
            // verifier checks that policer with the socket's value known
            // to be there, once.
            police(tat, now, len, limit)
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

/// The bytes acknowledged on the TCP connection of a packet's socket `sk`
/// (from [`socket_of`]); `None` when it has no full TCP socket (UDP, a
/// handshake's request socket).
#[inline(always)]
fn acked(sk: *mut bpf_sock) -> Option<u64> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the packet's socket, checked for null just above; the
    // helper's result is read only when not null.
    unsafe {
        let tcp = bpf_tcp_sock(sk);
        if tcp.is_null() {
            None
        } else {
            Some((*tcp).bytes_acked)
        }
    }
}

/// Whether the lists leave the packet's peer (its source on the way in,
/// its destination on the way out) limited. Anything unreadable is limited.
#[inline(always)]
fn peer_limited(ctx: &SkBuffContext, direction: u32, first: Option<u8>) -> bool {
    let scope = SCOPE.get(0).copied().unwrap_or(SCOPE_EVERYTHING);
    if scope == SCOPE_EVERYTHING {
        return true;
    }
    let Some(first) = first else {
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
fn is_tcp_control(ctx: &SkBuffContext, first: Option<u8>) -> bool {
    let Some(first) = first else {
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
