//! How nested runs compose their socket tuning: each socket ends with the
//! tightest window clamp, pacing cap and initial window of every run it
//! belongs to.
//!
//! The kernel runs the `sock_ops` programs of a socket's cgroup first, then
//! those of each ancestor, all on one context, and a program may write just
//! one of its fields: `reply`, which shares its word with `args[0]`. So
//! each run's program, innermost first, compares its own values with what
//! the runs inside it left in `reply`, sets the options only where its own
//! are tighter (so an outer run with a looser limit no longer undoes the
//! inner run's clamp), and leaves the tighter of each in `reply` for the
//! runs outside it.
//!
//! For the per-segment and handshake-end events `reply` carries both values
//! in 15 bits each ([`encode`]: to within 0.1 %), above the two flag bits
//! the kernel passes in `args[0]` with the header-option query, which are
//! kept for any other program that reads them. For `BPF_SOCK_OPS_RWND_INIT`
//! `reply` is the answer itself, a window in segments, and the kernel takes
//! what the last program leaves.

use crate::sockets::MAX_WINDOW;

/// The bits of `args[0]` the kernel sets for the header-option length query
/// (`BPF_WRITE_HDR_TCP_CURRENT_MSS`, `BPF_WRITE_HDR_TCP_SYNACK_COOKIE`).
const FLAGS: u32 = 0b11;
const PACING_SHIFT: u32 = 2;
const WINDOW_SHIFT: u32 = 17;
const FIELD: u32 = (1 << 15) - 1;
/// A code's low bits: the value's bits after its leading one.
const FRACTION_BITS: u32 = 10;
/// The code of `u32::MAX`, "no pacing cap"; no other value's code reaches
/// it (the largest exponent of a `u32` is 22).
const UNLIMITED: u32 = FIELD;

/// A value as a 15-bit code: a 5-bit exponent and the 10 bits after the
/// leading one, rounded down; exact below 2048; `u32::MAX` has a code of
/// its own.
pub const fn encode(value: u32) -> u32 {
    if value == u32::MAX {
        return UNLIMITED;
    }
    let width = u32::BITS - value.leading_zeros();
    if width <= FRACTION_BITS + 1 {
        return value;
    }
    let shift = width - (FRACTION_BITS + 1);
    ((shift + 1) << FRACTION_BITS) | ((value >> shift) & ((1 << FRACTION_BITS) - 1))
}

/// The value a code stands for: at most the value encoded, and less by
/// under 2^-10 of it.
pub const fn decode(code: u32) -> u32 {
    if code == UNLIMITED {
        return u32::MAX;
    }
    let exponent = code >> FRACTION_BITS;
    if exponent <= 1 {
        return code;
    }
    let fraction = code & ((1 << FRACTION_BITS) - 1);
    ((1 << FRACTION_BITS) | fraction) << (exponent - 1)
}

/// One run's tuning of a socket, or the tightest of the runs inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// The receive window clamp, in bytes (never 0: unlimited is
    /// [`MAX_WINDOW`]).
    pub window: u32,
    /// The pacing cap, in bytes/s (`u32::MAX`: none).
    pub pacing: u32,
}

/// What one run's program does, given its own tuning and the `reply` the
/// runs inside it left: which options to set, and the `reply` to leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Composed {
    pub set_window: bool,
    pub set_pacing: bool,
    pub reply: u32,
}

/// The tightest tuning the runs inside this one left in `reply`; `None`
/// when there was none (an innermost run, or one whose inner runs set
/// nothing): a window's code is never 0, so its field tells.
pub const fn inner(reply: u32) -> Option<Tuning> {
    let window = (reply >> WINDOW_SHIFT) & FIELD;
    if window == 0 {
        return None;
    }
    Some(Tuning {
        window: decode(window),
        pacing: decode((reply >> PACING_SHIFT) & FIELD),
    })
}

/// Composes a run's own tuning with the `reply` the runs inside it left:
/// an option is set where this run's value is tighter than theirs (or they
/// set none), and `reply` then carries the tighter of each, with the
/// kernel's flag bits kept.
pub const fn compose(own: Tuning, reply: u32) -> Composed {
    let (set_window, set_pacing) = match inner(reply) {
        None => (true, true),
        Some(inner) => (own.window < inner.window, own.pacing < inner.pacing),
    };
    let window = if set_window {
        encode(own.window)
    } else {
        (reply >> WINDOW_SHIFT) & FIELD
    };
    let pacing = if set_pacing {
        encode(own.pacing)
    } else {
        (reply >> PACING_SHIFT) & FIELD
    };
    Composed {
        set_window,
        set_pacing,
        reply: (window << WINDOW_SHIFT) | (pacing << PACING_SHIFT) | (reply & FLAGS),
    }
}

/// The initial window (in segments) to answer `BPF_SOCK_OPS_RWND_INIT`
/// with: the smaller of this run's and what the runs inside it answered,
/// where 0 is no answer (the kernel's own choice).
pub const fn initial_window(own: u32, reply: u32) -> u32 {
    if own == 0 || (reply != 0 && reply < own) {
        reply
    } else {
        own
    }
}

// The largest window must have a code, as every window is encoded.
const _: () = assert!(decode(encode(MAX_WINDOW as u32)) == MAX_WINDOW as u32);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every width of value, and the values around each power of two.
    fn samples() -> impl Iterator<Item = u32> {
        (0..=u32::MAX.ilog2()).flat_map(|bit| {
            let p = 1u32 << bit;
            [p - 1, p, p + 1, p | (p >> 1), p | (p - 1)]
        })
    }

    #[test]
    fn a_code_fits_its_field_and_rounds_down_by_under_a_thousandth() {
        for v in samples().chain([4096, 1 << 30, 1_048_576, 123_456_789, u32::MAX - 1]) {
            let code = encode(v);
            assert!(code <= FIELD, "{v}: code {code:#x}");
            let back = decode(code);
            assert!(back <= v, "{v} came back as {back}");
            assert!(
                u64::from(v - back) << 10 < u64::from(v.max(1)),
                "{v} came back as {back}"
            );
        }
        assert_eq!(decode(encode(u32::MAX)), u32::MAX);
    }

    #[test]
    fn small_values_are_exact_and_codes_keep_order() {
        for v in 0..4096 {
            assert_eq!(decode(encode(v)), v & !((v >> 11) & 1), "{v}");
        }
        for v in samples().filter(|&v| v < u32::MAX) {
            assert!(encode(v) <= encode(v + 1), "{v}");
        }
    }

    #[test]
    fn an_innermost_run_sets_both_and_keeps_the_flags() {
        let own = Tuning {
            window: 65_536,
            pacing: 1_048_576,
        };
        let c = compose(own, 0b10);
        assert!(c.set_window && c.set_pacing);
        assert_eq!(c.reply & FLAGS, 0b10);
        assert_eq!(inner(c.reply), Some(own));
    }

    #[test]
    fn an_outer_run_sets_only_what_is_tighter() {
        let inner_run = compose(
            Tuning {
                window: 65_536,
                pacing: u32::MAX,
            },
            0b01,
        );
        // Looser window, tighter pacing.
        let outer = compose(
            Tuning {
                window: 1 << 20,
                pacing: 1 << 20,
            },
            inner_run.reply,
        );
        assert!(!outer.set_window && outer.set_pacing);
        assert_eq!(
            inner(outer.reply),
            Some(Tuning {
                window: 65_536,
                pacing: 1 << 20,
            })
        );
        assert_eq!(outer.reply & FLAGS, 0b01);
        // An equally loose one after it changes nothing.
        let outermost = compose(
            Tuning {
                window: MAX_WINDOW as u32,
                pacing: u32::MAX,
            },
            outer.reply,
        );
        assert!(!outermost.set_window && !outermost.set_pacing);
        assert_eq!(outermost.reply, outer.reply);
    }

    #[test]
    fn the_kernels_flags_alone_are_no_inner_run() {
        for flags in 0..=FLAGS {
            assert_eq!(inner(flags), None);
        }
    }

    #[test]
    fn the_initial_window_is_the_smallest_answer() {
        assert_eq!(initial_window(0, 0), 0);
        assert_eq!(initial_window(10, 0), 10);
        assert_eq!(initial_window(0, 7), 7);
        assert_eq!(initial_window(10, 7), 7);
        assert_eq!(initial_window(7, 10), 7);
    }
}
