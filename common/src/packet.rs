//! Classifying packets from the few header fields the eBPF programs read.
//!
//! Pure TCP control segments (ACKs, SYNs, FINs with no payload) always pass
//! the policer and are still counted. Policing them would let one direction's
//! limit throttle the other: a download's ACKs travel upstream, and a 64K/s
//! upload limit would otherwise cap an unlimited download.

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Length of the fixed IPv6 header (extension headers are not followed).
pub const IPV6_HEADER_LEN: u32 = 40;

/// Where the fields the classifier needs are, for an IP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the protocol (IPv4) or next-header (IPv6) byte.
    pub protocol_at: usize,
    /// Offset of the big-endian 16-bit length field.
    pub length_at: usize,
}

pub const IPV4: Layout = Layout {
    protocol_at: 9,
    length_at: 2,
};
pub const IPV6: Layout = Layout {
    protocol_at: 6,
    length_at: 4,
};

/// The layout for a packet whose first byte is `first`, or None if it is
/// neither IPv4 nor IPv6.
pub fn layout(first: u8) -> Option<Layout> {
    match first >> 4 {
        4 => Some(IPV4),
        6 => Some(IPV6),
        _ => None,
    }
}

/// Length of the IP header: IHL for IPv4, the fixed header for IPv6.
pub fn ip_header_len(first: u8) -> u32 {
    if first >> 4 == 4 {
        u32::from(first & 0x0f) * 4
    } else {
        IPV6_HEADER_LEN
    }
}

/// Whether a TCP segment carries no payload.
///
/// `length` is the IP length field as read: IPv4's total length (headers
/// included) or IPv6's payload length (headers after the fixed one);
/// `data_offset_byte` is byte 12 of the TCP header. A zero length, which GSO
/// packets above 64 KiB carry, is never mistaken for an empty segment.
pub fn tcp_without_payload(first: u8, length: u16, data_offset_byte: u8) -> bool {
    let tcp_header = u32::from(data_offset_byte >> 4) * 4;
    let length = u32::from(length);
    let payload_start = if first >> 4 == 4 {
        ip_header_len(first) + tcp_header
    } else {
        tcp_header
    };
    length != 0 && length <= payload_start
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: u8 = 0x45;
    const V6: u8 = 0x60;
    // Data offset 8 words: a 32-byte TCP header with timestamps.
    const DOFF_32: u8 = 8 << 4;

    #[test]
    fn layouts_follow_the_version_nibble() {
        assert_eq!(layout(V4), Some(IPV4));
        assert_eq!(layout(V6), Some(IPV6));
        assert_eq!(layout(0x00), None);
        assert_eq!(ip_header_len(V4), 20);
        assert_eq!(ip_header_len(0x46), 24);
        assert_eq!(ip_header_len(V6), 40);
    }

    #[test]
    fn bare_acks_are_recognised() {
        assert!(tcp_without_payload(V4, 52, DOFF_32));
        assert!(tcp_without_payload(V6, 32, DOFF_32));
        assert!(tcp_without_payload(0x46, 56, DOFF_32));
    }

    #[test]
    fn segments_with_data_are_not() {
        assert!(!tcp_without_payload(V4, 53, DOFF_32));
        assert!(!tcp_without_payload(V4, 1500, DOFF_32));
        assert!(!tcp_without_payload(V6, 33, DOFF_32));
        assert!(!tcp_without_payload(V6, 65_000, DOFF_32));
    }

    #[test]
    fn a_zero_length_big_gso_packet_is_not_empty() {
        assert!(!tcp_without_payload(V4, 0, DOFF_32));
        assert!(!tcp_without_payload(V6, 0, DOFF_32));
    }
}
