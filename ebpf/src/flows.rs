//! Flow accounting: which of the run's connections share a direction's
//! limit. Uploads count in FLOWS once they have sent bulk data; downloads
//! count in the period's tally while they receive.

use aya_ebpf::programs::SockOpsContext;
use throttle_common::{
    DOWN, Limit, UP,
    sockets::{Seen, Tally, active_flows, bulk, counts_in, tally_slot},
};

use crate::{
    conns::{Lookup, conn_of_ops},
    maps::{FLOWS, LIMITS, TALLIES, xadd},
};

/// Counts the connection in FLOWS once it has sent bulk data, so control
/// connections, idle keep-alives and a download's ACK stream do not take a
/// share of the upload limit; and in the current period's download tally
/// while it receives.
#[inline(always)]
pub fn count_if_bulk(ctx: &SockOpsContext, now: u64) {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
    let (received, acked) = unsafe { ((*ctx.ops).bytes_received, (*ctx.ops).bytes_acked) };
    let Some(conn) = conn_of_ops(ctx, Lookup::Create) else {
        return;
    };
    if conn.counted == 0 && acked > bulk(up_rate()) {
        conn.counted = 1;
        count_flow(1);
    }
    let Some(down) = LIMITS.get(DOWN) else {
        return;
    };
    let rate = down.rate;
    if received <= bulk(rate) {
        return;
    }
    let epoch = epoch(now, down);
    let last = conn.seen;
    if !counts_in(epoch, last, received, rate) {
        if received > last.received {
            conn.seen.received = received;
        }
        return;
    }
    conn.seen = Seen { epoch, received };
    let Some(tally) = TALLIES.get_ptr_mut(tally_slot(epoch)) else {
        return;
    };
    // The first socket of a period resets the slot; two CPUs doing so at
    // once may lose one count, which only errs for a period.
    // SAFETY: points into the map value, which outlives the program.
    if unsafe { core::ptr::read_volatile(&(*tally).epoch) } != epoch {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(tally, Tally { epoch, flows: 0 }) };
    }
    // SAFETY: as above.
    unsafe { xadd(&raw mut (*tally).flows, 1) };
}

/// Takes a closing connection out of FLOWS if this run counted it.
#[inline(always)]
pub fn uncount(ctx: &SockOpsContext) {
    if let Some(conn) = conn_of_ops(ctx, Lookup::Existing)
        && conn.counted != 0
    {
        conn.counted = 0;
        count_flow(u64::MAX); // minus one, wrapping
    }
}

#[inline(always)]
fn count_flow(delta: u64) {
    if let Some(flows) = FLOWS.get_ptr_mut(0) {
        // SAFETY: points into the map value, which outlives the program.
        unsafe { xadd(flows, delta) };
    }
}

/// How many upload connections share the upload limit now.
#[inline(always)]
pub fn sending() -> u64 {
    FLOWS.get(0).copied().unwrap_or(0)
}

/// How many download connections are receiving data now, under the
/// download limit `down` (whose rate sets the tally's period).
#[inline(always)]
pub fn receiving(now: u64, down: &Limit) -> u64 {
    let tally = |slot| TALLIES.get(slot).copied().unwrap_or_default();
    active_flows(epoch(now, down), [tally(0), tally(1)])
}

/// The download tallies' period `now` falls in.
#[inline(always)]
fn epoch(now: u64, down: &Limit) -> u64 {
    // checked_div leaves no division-by-zero panic path; a map not yet
    // written has a period of 0.
    now.checked_div(down.period_ns).unwrap_or(0)
}

/// The upload limit's rate, 0 when unlimited.
#[inline(always)]
fn up_rate() -> u64 {
    LIMITS.get(UP).map_or(0, |up| up.rate)
}
