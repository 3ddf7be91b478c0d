//! A run's limits as the user gave them, and what the maps hold for them.

use throttle_common::{Direction, Limit, PerDirection, policer::default_burst, units::Rate};

/// The limits of a run: a burst set explicitly stays; a default one
/// follows the rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub rates: PerDirection<Rate>,
    pub burst: Option<u64>,
}

impl Limits {
    /// No limit in either direction: traffic is only counted.
    pub const NONE: Limits = Limits {
        rates: PerDirection {
            down: Rate::Unlimited,
            up: Rate::Unlimited,
        },
        burst: None,
    };

    /// What the `LIMITS` map holds for `direction`.
    pub fn map_value(&self, direction: Direction) -> Limit {
        let rate = self.rates[direction].map_value();
        Limit {
            rate,
            burst: self.burst.unwrap_or_else(|| default_burst(rate)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_limits_are_unlimited_and_bursts_default_by_rate() {
        let limits = Limits {
            rates: PerDirection {
                down: Rate::Unlimited,
                up: Rate::per_sec(1 << 20).unwrap(),
            },
            burst: None,
        };
        assert_eq!(limits.map_value(Direction::Down).rate, 0);
        assert_eq!(
            limits.map_value(Direction::Up).burst,
            default_burst(1 << 20)
        );
        let explicit = Limits {
            burst: Some(4096),
            ..limits
        };
        assert_eq!(explicit.map_value(Direction::Up).burst, 4096);
    }
}
