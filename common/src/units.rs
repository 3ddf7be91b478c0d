//! The RATE and SIZE grammar of the command line.
//!
//! A positive number, decimals allowed, with an optional case-insensitive unit.
//! Byte units are binary, as in curl, wget, pv and trickle: `K`, `KB`, `KiB`
//! are 1024. Bit units are decimal, as in tc: `kbit` is 1000 bits. A rate may
//! end in `/s`. Results are whole bytes, rounded down.

use core::{fmt, num::NonZeroU64};

use crate::policer::MAX_RATE;

/// The largest accepted bucket size: 16 GiB.
pub const MAX_SIZE: u64 = 1 << 34;

/// Accepted forms, quoted in every error so a user can fix the value in one go.
pub const RATE_FORMS: &str = "a positive number of bytes/s (a bare number is bytes/s, not KiB/s as in trickle) with an optional unit: \
     K/KB/KiB, M/MB/MiB, G/GB/GiB (x1024 bytes) or kbit, mbit, gbit (x1000 bits), e.g. 500K, 1.5M, 20mbit";
pub const SIZE_FORMS: &str = "a positive number of bytes with an optional unit: K/KB/KiB, M/MB/MiB, G/GB/GiB (x1024), e.g. 64K, 1M";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    Empty,
    NotANumber,
    UnknownUnit,
    Zero,
    TooLarge {
        max: u64,
    },
    /// `Mbps` and its kin: ISPs mean megabits, tc means megabytes. `bits`
    /// and `bytes` are the units that say each.
    Ambiguous {
        bits: &'static str,
        bytes: &'static str,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Empty => f.write_str("empty value"),
            UnitError::NotANumber => f.write_str("not a positive number"),
            UnitError::UnknownUnit => f.write_str("unknown unit"),
            UnitError::Zero => f.write_str("must be more than zero bytes"),
            UnitError::TooLarge { max } => write!(f, "larger than the maximum of {max} bytes"),
            UnitError::Ambiguous { bits, bytes } => write!(
                f,
                "ambiguous unit: {bits} for bits/s (as ISPs and tc mean), {bytes} for bytes/s (as curl and wget mean)"
            ),
        }
    }
}

/// A limit as people give it: none at all, or a positive number of bytes
/// per second. The maps spell "none" as a rate of 0; nothing else does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    Unlimited,
    PerSec(NonZeroU64),
}

/// The word that removes a limit, wherever a limit is given.
pub const UNLIMITED: &str = "unlimited";

impl Rate {
    /// A RATE, or [`UNLIMITED`] in any case.
    pub fn parse(text: &str) -> Result<Rate, UnitError> {
        if text.eq_ignore_ascii_case(UNLIMITED) {
            return Ok(Rate::Unlimited);
        }
        parse_rate(text).and_then(Rate::per_sec)
    }

    /// A positive number of bytes per second, up to the RATE grammar's maximum.
    pub fn per_sec(bytes: u64) -> Result<Rate, UnitError> {
        match NonZeroU64::new(bytes) {
            None => Err(UnitError::Zero),
            Some(_) if bytes > MAX_RATE => Err(UnitError::TooLarge { max: MAX_RATE }),
            Some(rate) => Ok(Rate::PerSec(rate)),
        }
    }

    /// The rate as the maps hold it: bytes per second, 0 for unlimited.
    pub fn map_value(self) -> u64 {
        match self {
            Rate::Unlimited => 0,
            Rate::PerSec(rate) => rate.get(),
        }
    }

    /// Bytes per second, or None when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            Rate::Unlimited => None,
            Rate::PerSec(rate) => Some(rate.get()),
        }
    }
}

/// Multiplier of a unit, as a fraction `num / den` of bytes.
struct Scale {
    num: u64,
    den: u64,
}

const BYTE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
];

const BIT_UNITS: &[(&str, u64)] = &[
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
];

fn lookup(table: &[(&str, u64)], unit: &str) -> Option<u64> {
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, num)| num)
}

fn byte_unit(unit: &str) -> Option<Scale> {
    lookup(BYTE_UNITS, unit).map(|num| Scale { num, den: 1 })
}

fn bit_unit(unit: &str) -> Option<Scale> {
    lookup(BIT_UNITS, unit).map(|num| Scale { num, den: 8 })
}

/// Why `text` is no RATE, and the forms that are, with "or 'unlimited'"
/// where that word is accepted too. An ambiguous unit gets the two values
/// it could have meant, spelled so that each means one thing.
pub struct RateRefusal<'a> {
    pub text: &'a str,
    pub error: UnitError,
    pub unlimited: bool,
}

impl fmt::Display for RateRefusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error {
            UnitError::Ambiguous { bits, bytes } => {
                let number = self
                    .text
                    .trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '/');
                write!(
                    f,
                    "ambiguous unit: for bits/s (as ISPs and tc mean it) write '{number}{bits}', \
                     for bytes/s (as curl and wget mean it) write '{number}{bytes}'"
                )
            }
            other => {
                write!(f, "{other}; expected {RATE_FORMS}")?;
                if self.unlimited {
                    write!(f, ", or '{UNLIMITED}'")?;
                }
                Ok(())
            }
        }
    }
}

/// `…bps` units, which people read both ways, and the units that say each reading.
const AMBIGUOUS_UNITS: &[(&str, &str, &str)] = &[
    ("kbps", "kbit", "K"),
    ("mbps", "mbit", "M"),
    ("gbps", "gbit", "G"),
];

/// Parses a RATE in bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    let body = strip_suffix_ignore_case(text, "/s").unwrap_or(text);
    let parsed = parse(
        body,
        |unit| byte_unit(unit).or_else(|| bit_unit(unit)),
        MAX_RATE,
    );
    if parsed == Err(UnitError::UnknownUnit) {
        for &(unit, bits, bytes) in AMBIGUOUS_UNITS {
            if strip_suffix_ignore_case(text, unit).is_some() {
                return Err(UnitError::Ambiguous { bits, bytes });
            }
        }
    }
    parsed
}

/// Parses a SIZE in bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    parse(text, byte_unit, MAX_SIZE)
}

fn parse(text: &str, unit: impl Fn(&str) -> Option<Scale>, max: u64) -> Result<u64, UnitError> {
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number = Decimal::parse(number).ok_or(UnitError::NotANumber)?;
    let scale = unit(suffix).ok_or(UnitError::UnknownUnit)?;
    let bytes = number.scale(&scale).ok_or(UnitError::TooLarge { max })?;
    match bytes {
        0 => Err(UnitError::Zero),
        b if b > max => Err(UnitError::TooLarge { max }),
        b => Ok(b),
    }
}

/// A non-negative decimal `int.frac`, kept exact: `frac` has `digits` digits.
struct Decimal {
    int: u64,
    frac: u64,
    digits: u32,
}

impl Decimal {
    /// At most this many fraction digits, so `10^digits` fits in u64 with room to scale.
    const MAX_DIGITS: u32 = 9;

    fn parse(text: &str) -> Option<Decimal> {
        let (int, frac) = match text.split_once('.') {
            Some((i, f)) => (i, f),
            None => (text, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if frac.contains('.') || frac.len() > Self::MAX_DIGITS as usize {
            return None;
        }
        let int = if int.is_empty() { 0 } else { int.parse().ok()? };
        let frac_value = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        Some(Decimal {
            int,
            frac: frac_value,
            digits: frac.len() as u32,
        })
    }

    /// `self * scale`, rounded down; `None` on overflow.
    fn scale(&self, scale: &Scale) -> Option<u64> {
        let whole = self.int.checked_mul(scale.num)?;
        let pow = 10u64.pow(self.digits);
        // frac < 10^9 and num <= 10^9, so the product fits in u64.
        let part = self.frac * scale.num / pow;
        whole.checked_add(part).map(|v| v / scale.den)
    }
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let (head, tail) = (text.get(..cut)?, text.get(cut..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bps_units_are_refused_with_both_readings() {
        for text in ["10Mbps", "10mbps", "1.5KBPS", "2gbps"] {
            assert!(
                matches!(parse_rate(text), Err(UnitError::Ambiguous { .. })),
                "{text}"
            );
        }
        assert_eq!(
            parse_rate("10Mbps"),
            Err(UnitError::Ambiguous {
                bits: "mbit",
                bytes: "M"
            })
        );
    }

    #[test]
    fn a_limit_is_a_rate_or_unlimited_and_never_zero() {
        assert_eq!(Rate::parse("Unlimited"), Ok(Rate::Unlimited));
        assert_eq!(Rate::parse("1K").map(Rate::map_value), Ok(1024));
        assert_eq!(Rate::parse("0"), Err(UnitError::Zero));
        assert_eq!(Rate::per_sec(0), Err(UnitError::Zero));
        assert_eq!(
            Rate::per_sec(MAX_RATE + 1),
            Err(UnitError::TooLarge { max: MAX_RATE })
        );
        assert_eq!(Rate::Unlimited.map_value(), 0);
        assert_eq!(Rate::Unlimited.bytes_per_sec(), None);
    }

    #[test]
    fn plain_numbers_are_bytes_per_second() {
        assert_eq!(parse_rate("1"), Ok(1));
        assert_eq!(parse_rate("1500"), Ok(1500));
        assert_eq!(parse_rate("1500b"), Ok(1500));
    }

    #[test]
    fn byte_units_are_binary_and_case_insensitive() {
        for (text, value) in [
            ("50K", 50 << 10),
            ("50k", 50 << 10),
            ("50KB", 50 << 10),
            ("50kib", 50 << 10),
            ("50KiB", 50 << 10),
            ("1M", 1 << 20),
            ("1mb", 1 << 20),
            ("1MiB", 1 << 20),
            ("2G", 2 << 30),
            ("2gB", 2 << 30),
            ("2GIB", 2 << 30),
        ] {
            assert_eq!(parse_rate(text), Ok(value), "{text}");
        }
    }

    #[test]
    fn bit_units_are_decimal() {
        assert_eq!(parse_rate("8kbit"), Ok(1000));
        assert_eq!(parse_rate("1mbit"), Ok(125_000));
        assert_eq!(parse_rate("20Mbit"), Ok(2_500_000));
        assert_eq!(parse_rate("1GBIT"), Ok(125_000_000));
        assert_eq!(parse_rate("100gbit"), Ok(12_500_000_000));
    }

    #[test]
    fn decimals_are_exact_and_round_down() {
        assert_eq!(parse_rate("1.5M"), Ok(3 << 19));
        assert_eq!(parse_rate("0.5K"), Ok(512));
        assert_eq!(parse_rate(".5K"), Ok(512));
        assert_eq!(parse_rate("1.K"), Ok(1024));
        assert_eq!(parse_rate("1.0001K"), Ok(1024));
        assert_eq!(parse_rate("0.001kbit"), Err(UnitError::Zero));
        assert_eq!(parse_rate("2.5"), Ok(2));
    }

    #[test]
    fn per_second_suffix_is_optional() {
        assert_eq!(parse_rate("1M/s"), Ok(1 << 20));
        assert_eq!(parse_rate("1MB/S"), Ok(1 << 20));
        assert_eq!(parse_rate("10mbit/s"), Ok(1_250_000));
        assert_eq!(parse_size("1M/s"), Err(UnitError::UnknownUnit));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_rate(""), Err(UnitError::Empty));
        assert_eq!(parse_rate("0"), Err(UnitError::Zero));
        assert_eq!(parse_rate("0K"), Err(UnitError::Zero));
        assert_eq!(parse_rate("-5M"), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("NaN"), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("inf"), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("M"), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("."), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("1.2.3M"), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("1e6"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_rate("5X"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_rate("5 M"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_rate(" 5M"), Err(UnitError::NotANumber));
        assert!(matches!(
            parse_rate("5Mbps"),
            Err(UnitError::Ambiguous { .. })
        ));
        assert_eq!(parse_rate("Mbps"), Err(UnitError::NotANumber));
        assert_eq!(parse_rate("5kbits"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_size("5kbit"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_rate("1.0000000001M"), Err(UnitError::NotANumber));
    }

    #[test]
    fn rejects_overflow_and_values_above_the_maximum() {
        let max = UnitError::TooLarge { max: MAX_RATE };
        assert_eq!(
            parse_rate("99999999999999999999999"),
            Err(UnitError::NotANumber)
        );
        assert_eq!(parse_rate("18446744073709551615G"), Err(max));
        assert_eq!(parse_rate("17G"), Err(max));
        assert_eq!(parse_rate("16G"), Ok(MAX_RATE));
        assert_eq!(
            parse_size("17G"),
            Err(UnitError::TooLarge { max: MAX_SIZE })
        );
    }

    #[test]
    fn sizes_use_the_byte_units() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1.5m"), Ok(3 << 19));
        assert_eq!(parse_size("1500"), Ok(1500));
    }
}
