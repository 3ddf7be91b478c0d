//! The run's maps: what userspace writes (limits, lists, tuning switch) and
//! reads (counters), and the state the programs keep between packets. Each
//! run loads its own copy of the object, so every map here belongs to one
//! run.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use throttle_common::{Counters, DIRECTIONS, DOWN, Limit, networks::MAX_NETWORKS, sockets::Tally};

#[map]
pub static LIMITS: Array<Limit> = Array::with_max_entries(DIRECTIONS, 0);

/// Each direction's theoretical arrival time (see `throttle_common::policer`).
#[map]
pub static CLOCK: Array<u64> = Array::with_max_entries(DIRECTIONS, 0);

/// Entry 0 turns the socket hooks' tuning on; userspace sets it with the
/// first limit of the run, so an unlimited run makes no per-segment calls,
/// and a run that goes back to unlimited still has its clamps undone.
#[map]
pub static TUNING: Array<u32> = Array::with_max_entries(1, 0);

/// How many of the cgroup's established TCP connections have sent bulk
/// data (see `throttle_common::sockets::bulk`); the socket hooks give each
/// its share of the upload limit.
#[map]
pub static FLOWS: Array<u64> = Array::with_max_entries(1, 0);

/// The download connections that received data in the current and the
/// last period (see `throttle_common::sockets::Tally`): only they share the
/// download limit, so a connection that finished its range or waits hands
/// its share to the busy ones.
#[map]
pub static TALLIES: Array<Tally> = Array::with_max_entries(2, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

/// `--exclude` and `--only`: the run's networks by longest prefix, IPv4 as
/// IPv4-mapped IPv6, each marked `EXCLUDE` or `ONLY` (see
/// `throttle_common::networks`).
#[map]
pub static NETWORKS: LpmTrie<[u32; 4], u32> = LpmTrie::with_max_entries(MAX_NETWORKS, 0);

/// Entry 0: which of `throttle_common::networks`' scopes the lists make;
/// `SCOPE_EVERYTHING` (no lists) skips the lookup.
#[map]
pub static SCOPE: Array<u32> = Array::with_max_entries(1, 0);

/// The traffic the lists leave unlimited, per direction, counted apart.
#[map]
pub static EXCLUDED: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

/// Adds `delta` to the map word at `word`, atomically: an add whose result
/// is unused compiles to BPF_XADD (the BPF target has no compare-and-swap,
/// so `AtomicU64::fetch_add` does not exist). Even a per-CPU word needs it:
/// a softirq's program can interrupt a process-context run on the same CPU
/// between its load and its store.
///
/// # Safety
/// `word` must point into a map value, which outlives the program run.
#[inline(always)]
pub unsafe fn xadd(word: *mut u64, delta: u64) {
    // SAFETY: `word` points into a map value (see above); relaxed order
    // suffices for a counter no other memory depends on.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(word, delta) };
}

/// Counts one `len`-byte packet in `counters` (a direction's entry of
/// COUNTERS or EXCLUDED), as passed or as dropped.
///
/// Only an upload's counts need the atomic add: an egress program in
/// process context can be interrupted on its CPU by a softirq that sends
/// (an ACK, a retransmission) and counts too. Ingress programs run in
/// softirq context, which none of these programs interrupts on the same
/// CPU (a PREEMPT_RT kernel, whose softirqs are preemptible, can still lose
/// a count), so ingress spares itself the locked adds.
///
/// # Safety
/// `counters` must point into a map value.
#[inline(always)]
pub unsafe fn count(counters: *mut Counters, direction: u32, len: u64, passed: bool) {
    // Counters is four u64s, the passed pair first: the pair is chosen by
    // arithmetic, not a branch, so the verifier walks one path of adds
    // (with two, the atomic adds tripled the upload program's
    // verification time).
    const _: () = assert!(
        core::mem::offset_of!(Counters, passed_packets) == 8
            && core::mem::offset_of!(Counters, dropped_bytes) == 16
            && core::mem::offset_of!(Counters, dropped_packets) == 24
    );
    let pair = 2 * usize::from(!passed);
    // SAFETY: `pair` is 0 or 2, so both words lie inside the map value.
    let bytes = unsafe { counters.cast::<u64>().add(pair) };
    // SAFETY: as above.
    let packets = unsafe { bytes.add(1) };
    if direction == DOWN {
        // SAFETY: both point into this CPU's map value.
        unsafe { *bytes += len };
        // SAFETY: as above.
        unsafe { *packets += 1 };
    } else {
        // SAFETY: both point into a map value.
        unsafe { xadd(bytes, len) };
        // SAFETY: as above.
        unsafe { xadd(packets, 1) };
    }
}
