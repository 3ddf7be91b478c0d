//! What one of the run's sockets carries for this run: socket-local
//! storage, one value per socket per map, so per run (each run loads its
//! own object), created on the socket's first packet or callback and freed
//! with the socket. Nothing is hashed or evicted, however many connections
//! the run holds, and a nested run's programs, which see the same sockets,
//! keep values of their own.
//!
//! aya-ebpf 0.2.1 wraps socket storage only for program types that hold a
//! socket argument; these wrap the raw helper for `cgroup_skb` and
//! `sock_ops`.

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::btf_map,
    programs::{SkBuffContext, SockOpsContext},
};
use throttle_common::{DIRECTIONS, sockets::Seen};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Conn {
    /// When the socket was last counted in a download tally.
    pub seen: Seen,
    /// Its clock at its share of each direction's limit (see
    /// `throttle_common::fairness`); zero, `NEW_CONNECTION`, until policed.
    pub fair: [u64; DIRECTIONS as usize],
    /// 1 while the socket is counted in FLOWS.
    pub counted: u64,
}

#[btf_map]
static CONNS: SkStorage<Conn> = SkStorage::new();

/// Whether a lookup may create the socket's value.
#[derive(Clone, Copy)]
pub enum Lookup {
    /// Create a zeroed value if the socket has none.
    Create,
    /// Only an existing value: a socket closing that was never counted
    /// needs none.
    Existing,
}

/// The run's value for the full socket `sk`; None if it has none and
/// `lookup` does not create one, or the kernel cannot store one.
///
/// # Safety
/// `sk` must be a socket the verifier has checked is not null; the helper
/// gives no value for one that is not a full socket.
#[inline(always)]
unsafe fn conn_of(sk: *mut bpf_sock, lookup: Lookup) -> Option<&'static mut Conn> {
    let map = core::ptr::from_ref(&CONNS).cast_mut().cast();
    let flags = match lookup {
        Lookup::Create => u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        Lookup::Existing => 0,
    };
    // SAFETY: the map is CONNS and `sk` a socket (see above); a null
    // initial value asks for a zeroed one.
    let value = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) };
    // SAFETY: a value the helper returns lives as long as the socket, which
    // outlives this program run.
    unsafe { value.cast::<Conn>().as_mut() }
}

/// The run's value for the socket of a sock_ops callback.
#[inline(always)]
pub fn conn_of_ops(ctx: &SockOpsContext, lookup: Lookup) -> Option<&'static mut Conn> {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call.
    let sk = unsafe { core::ptr::read_volatile(&(*ctx.ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a sock_ops context's `sk` is a full socket, checked for null
    // just above.
    unsafe { conn_of(sk, lookup) }
}

/// The socket a packet belongs to, or null. Read once per packet and
/// passed on: each read is a value the verifier knows nothing of, so two
/// reads, each checked for null, are four cases to it, not two.
#[inline(always)]
pub fn socket_of(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: ctx.skb is the kernel's __sk_buff for this call.
    unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).__bindgen_anon_2.sk) }
}

/// The run's value for a packet's socket `sk` (from [`socket_of`]),
/// created if need be, if it has a full one (the helper itself gives none
/// for a request or time-wait socket).
#[inline(always)]
pub fn conn_of_packet(sk: *mut bpf_sock) -> Option<&'static mut Conn> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the packet's socket, checked for null just above.
    unsafe { conn_of(sk, Lookup::Create) }
}
