//! `--exclude` and `--only`: which remote networks a run limits.
//!
//! Both lists go into one longest-prefix-match trie per run, IPv4 as
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`) so one trie serves both families and
//! a dual-stack socket's mapped peer matches its IPv4 entry. The longest
//! matching entry decides, so `--only 10.0.0.0/8 --exclude 10.1.0.0/16`
//! limits 10.0.0.0/8 except 10.1.0.0/16. An address no entry matches is
//! limited, unless the run has `--only` entries.

use core::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// A trie entry's value: the traffic to and from it is not limited.
pub const EXCLUDE: u32 = 1;
/// A trie entry's value: the traffic to and from it is limited.
pub const ONLY: u32 = 2;

/// The most entries a run's trie holds (`local` is four).
pub const MAX_NETWORKS: u32 = 256;

/// Bits of the IPv4-mapped prefix `::ffff:0:0/96`.
const MAPPED_PREFIX: u32 = 96;

/// What the `SCOPE` map says about a run's lists.
pub const SCOPE_EVERYTHING: u32 = 0;
/// The run has `--exclude` entries only: unmatched addresses are limited.
pub const SCOPE_EXCLUDES: u32 = 1;
/// The run has `--only` entries: unmatched addresses are not limited.
pub const SCOPE_ONLY: u32 = 2;

/// An IPv4 address as the trie holds it.
pub const fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// An IPv4 address as the trie holds it, in 32-bit words as the kernel
/// stores addresses (network byte order in memory): the eBPF side builds
/// keys from words it reads, without byte-by-byte copies the verifier would
/// have to walk.
pub const fn mapped_words(v4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// Whether traffic with a peer is limited, from the value of the longest
/// trie entry matching the peer (if any) and the run's `SCOPE`.
#[inline(always)]
pub fn limited(matched: Option<u32>, scope: u32) -> bool {
    match matched {
        Some(EXCLUDE) => false,
        Some(_) => true,
        None => scope != SCOPE_ONLY,
    }
}

/// A network: an address with its prefix length, in the trie's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    /// IPv6, or IPv4-mapped IPv6, with the bits past the prefix cleared.
    pub addr: [u8; 16],
    /// Bits of `addr` that count, 0–128 (96–128 for IPv4).
    pub prefix_len: u32,
}

/// Why a CIDR was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrError {
    Address,
    PrefixLength { max: u32 },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::Address => f.write_str("not an IPv4 or IPv6 address"),
            CidrError::PrefixLength { max } => {
                write!(f, "the prefix length must be a number from 0 to {max}")
            }
        }
    }
}

/// Accepted forms, quoted in every refusal.
pub const CIDR_FORMS: &str = "an IPv4 or IPv6 network such as 10.0.0.0/8, 192.168.1.7 or fd00::/8, \
     or 'local' (loopback and link-local)";

/// The word for loopback and link-local, IPv4 and IPv6.
pub const LOCAL: &str = "local";

/// The networks `local` stands for.
pub const LOCAL_NETWORKS: [Network; 4] = [
    Network::v4([127, 0, 0, 0], 8),
    Network::v4([169, 254, 0, 0], 16),
    Network {
        addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        prefix_len: 128,
    },
    Network {
        addr: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        prefix_len: 10,
    },
];

impl Network {
    const fn v4(addr: [u8; 4], bits: u32) -> Network {
        Network {
            addr: mapped(addr),
            prefix_len: MAPPED_PREFIX + bits,
        }
    }

    /// Parses `ADDRESS[/BITS]`; an address alone is one host. Bits past the
    /// prefix are cleared, as `ip route` does.
    pub fn parse(text: &str) -> Result<Network, CidrError> {
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let (addr, offset, max) = if let Ok(v4) = Ipv4Addr::from_str(address) {
            (mapped(v4.octets()), MAPPED_PREFIX, 32)
        } else if let Ok(v6) = Ipv6Addr::from_str(address) {
            (v6.octets(), 0, 128)
        } else {
            return Err(CidrError::Address);
        };
        let bits = match bits {
            None => max,
            Some(bits) => {
                let digits = !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit());
                match bits.parse::<u32>() {
                    Ok(bits) if digits && bits <= max => bits,
                    _ => return Err(CidrError::PrefixLength { max }),
                }
            }
        };
        let mut network = Network {
            addr,
            prefix_len: offset + bits,
        };
        network.clear_host_bits();
        Ok(network)
    }

    fn clear_host_bits(&mut self) {
        for (i, byte) in self.addr.iter_mut().enumerate() {
            let first_bit = i as u32 * 8;
            if first_bit >= self.prefix_len {
                *byte = 0;
            } else if first_bit + 8 > self.prefix_len {
                *byte &= 0xffu8 << (first_bit + 8 - self.prefix_len);
            }
        }
    }

    /// Whether `addr` (in the trie's form) is inside this network.
    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        let mut other = Network {
            addr: *addr,
            prefix_len: self.prefix_len,
        };
        other.clear_host_bits();
        other.addr == self.addr
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v4 = self.prefix_len >= MAPPED_PREFIX && self.addr[..12] == mapped([0; 4])[..12];
        if v4 {
            let [.., a, b, c, d] = self.addr;
            write!(
                f,
                "{}/{}",
                Ipv4Addr::new(a, b, c, d),
                self.prefix_len - MAPPED_PREFIX
            )
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.prefix_len)
        }
    }
}

/// A word of `--exclude` and `--only`: a network, or `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Local,
    Network(Network),
}

impl Place {
    pub fn parse(text: &str) -> Result<Place, CidrError> {
        if text.eq_ignore_ascii_case(LOCAL) {
            Ok(Place::Local)
        } else {
            Network::parse(text).map(Place::Network)
        }
    }

    /// The networks the word stands for.
    pub fn networks(&self) -> &[Network] {
        match self {
            Place::Local => &LOCAL_NETWORKS,
            Place::Network(network) => core::slice::from_ref(network),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Local => f.write_str(LOCAL),
            Place::Network(network) => network.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_into_the_tries_form() {
        let ten = Network::parse("10.0.0.0/8").unwrap();
        assert_eq!(ten.prefix_len, 104);
        assert_eq!(ten.addr, mapped([10, 0, 0, 0]));
        assert_eq!(
            Network::parse("192.168.1.7").unwrap(),
            Network::v4([192, 168, 1, 7], 32)
        );
        let v6 = Network::parse("fd00::1/8").unwrap();
        assert_eq!(v6.prefix_len, 8);
        assert_eq!(v6.addr[0], 0xfd);
        assert!(v6.addr[1..].iter().all(|b| *b == 0));
        assert_eq!(Network::parse("0.0.0.0/0").unwrap().prefix_len, 96);
        assert_eq!(Network::parse("::/0").unwrap().prefix_len, 0);
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(
            Network::parse("10.1.2.3/8").unwrap(),
            Network::parse("10.0.0.0/8").unwrap()
        );
        assert_eq!(
            Network::parse("10.255.2.3/12").unwrap().addr,
            mapped([10, 240, 0, 0])
        );
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_reason() {
        for bad in ["", "10.0.0", "example.org", "10.0.0.256", "::g"] {
            assert_eq!(Network::parse(bad), Err(CidrError::Address), "{bad}");
        }
        assert_eq!(
            Network::parse("10.0.0.0/33"),
            Err(CidrError::PrefixLength { max: 32 })
        );
        assert_eq!(
            Network::parse("::/129"),
            Err(CidrError::PrefixLength { max: 128 })
        );
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "::/x",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_contain_their_addresses_and_print_as_given() {
        let net = Network::parse("10.213.0.0/16").unwrap();
        assert!(net.contains(&mapped([10, 213, 7, 1])));
        assert!(!net.contains(&mapped([10, 214, 0, 1])));
        let local = LOCAL_NETWORKS;
        assert!(local[0].contains(&mapped([127, 0, 0, 1])));
        assert!(local[2].contains(&Ipv6Addr::LOCALHOST.octets()));
        assert!(local[3].contains(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets()));
    }

    #[test]
    fn words_and_bytes_make_the_same_key() {
        let v4 = [10, 213, 7, 2];
        let words = mapped_words(u32::from_ne_bytes(v4));
        let mut bytes = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(bytes, mapped(v4));
    }

    #[test]
    fn local_is_loopback_and_link_local_of_both_families() {
        assert_eq!(Place::parse("LOCAL"), Ok(Place::Local));
        assert_eq!(Place::Local.networks().len(), 4);
        assert_eq!(
            Place::parse("10.0.0.0/8").map(|p| p.networks().len()),
            Ok(1)
        );
    }

    #[test]
    fn the_longest_match_decides_and_only_limits_nothing_else() {
        assert!(limited(None, SCOPE_EVERYTHING));
        assert!(limited(None, SCOPE_EXCLUDES));
        assert!(!limited(None, SCOPE_ONLY));
        assert!(!limited(Some(EXCLUDE), SCOPE_ONLY));
        assert!(limited(Some(ONLY), SCOPE_ONLY));
    }
}
