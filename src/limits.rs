//! A run's limits as the user gave them, and what the maps hold for them.

use std::collections::HashMap;

use throttle_common::{
    Direction, Limit, PerDirection,
    networks::{
        EXCLUDE, MAX_NETWORKS, Network, ONLY, Place, SCOPE_EVERYTHING, SCOPE_EXCLUDES, SCOPE_ONLY,
    },
    policer::{default_burst, default_starting_credit, min_burst},
    units::Rate,
};

/// The limits of a run: a burst set explicitly stays; a default one
/// follows the rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub rates: PerDirection<Rate>,
    pub burst: Option<u64>,
    /// Which traffic the rates apply to.
    pub scope: Scope,
}

/// `--exclude` and `--only`: the networks whose traffic is left unlimited,
/// and those that alone are limited (see `throttle_common::networks`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub exclude: Vec<Place>,
    pub only: Vec<Place>,
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        self.exclude.is_empty() && self.only.is_empty()
    }

    /// What the `SCOPE` map holds for these lists.
    pub fn map_value(&self) -> u32 {
        if !self.only.is_empty() {
            SCOPE_ONLY
        } else if !self.exclude.is_empty() {
            SCOPE_EXCLUDES
        } else {
            SCOPE_EVERYTHING
        }
    }

    /// The `NETWORKS` trie's entries. A network in both lists, or more
    /// entries than the trie holds, is refused with the reason.
    pub fn entries(&self) -> Result<Vec<(Network, u32)>, String> {
        let mut entries: HashMap<Network, (u32, Place)> = HashMap::new();
        for (places, kind) in [(&self.exclude, EXCLUDE), (&self.only, ONLY)] {
            for place in places {
                for network in place.networks() {
                    match entries.insert(*network, (kind, *place)) {
                        Some((other, first)) if other != kind => {
                            return Err(format!(
                                "{network} is in both --exclude ({}) and --only ({}); name it in one",
                                if kind == EXCLUDE { place } else { &first },
                                if kind == ONLY { place } else { &first },
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        if entries.len() > MAX_NETWORKS as usize {
            return Err(format!(
                "{} networks in --exclude and --only; at most {MAX_NETWORKS} are accepted",
                entries.len()
            ));
        }
        let mut entries: Vec<(Network, u32)> = entries
            .into_iter()
            .map(|(network, (kind, _))| (network, kind))
            .collect();
        entries.sort_by_key(|(network, _)| (network.prefix_len, network.addr));
        Ok(entries)
    }
}

impl Limits {
    /// No limit in either direction: traffic is only counted.
    pub const NONE: Limits = Limits {
        rates: PerDirection {
            down: Rate::Unlimited,
            up: Rate::Unlimited,
        },
        burst: None,
        scope: Scope {
            exclude: Vec::new(),
            only: Vec::new(),
        },
    };

    /// Refuses a burst set explicitly below what a limited direction's
    /// rate needs ([`min_burst`]), naming the smallest accepted.
    pub fn check_burst(&self) -> Result<(), String> {
        let Some(burst) = self.burst else {
            return Ok(());
        };
        for (direction, rate) in self.rates.each() {
            let Some(rate) = rate.bytes_per_sec() else {
                continue;
            };
            let least = min_burst(rate);
            if burst < least {
                return Err(format!(
                    "burst {} is too small for {} {}/s: the smallest accepted is {} \
                     (125 ms of the rate, at least 16K), as smaller buckets stall TCP senders",
                    size_text(burst),
                    direction.name(),
                    size_text(rate),
                    size_text(least)
                ));
            }
        }
        Ok(())
    }

    /// What the `LIMITS` map holds for `direction`.
    pub fn map_value(&self, direction: Direction) -> Limit {
        let rate = self.rates[direction].map_value();
        Limit::new(rate, self.burst.unwrap_or_else(|| default_burst(rate)))
    }

    /// The credit `direction`'s bucket starts the run with: a burst set
    /// explicitly starts full, as asked; a default one holds at most one
    /// second of the rate, so a limit of a few KiB/s is not run many
    /// seconds ahead by its 16 KiB floor.
    pub fn starting_credit(&self, direction: Direction) -> u64 {
        let rate = self.rates[direction].map_value();
        self.burst.unwrap_or_else(|| default_starting_credit(rate))
    }
}

/// A size as the SIZE grammar reads it back: "128K", "1M", "1000".
fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
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
            scope: Scope::default(),
        };
        assert_eq!(limits.map_value(Direction::Down).rate, 0);
        assert_eq!(
            limits.map_value(Direction::Up).burst,
            default_burst(1 << 20)
        );
        let explicit = Limits {
            burst: Some(4096),
            ..limits.clone()
        };
        assert_eq!(explicit.map_value(Direction::Up).burst, 4096);
    }

    #[test]
    fn a_burst_below_what_the_rate_needs_is_refused_with_the_smallest() {
        let limits = |down: u64, burst: u64| Limits {
            rates: PerDirection {
                down: Rate::per_sec(down).unwrap(),
                up: Rate::Unlimited,
            },
            burst: Some(burst),
            scope: Scope::default(),
        };
        let error = limits(1 << 20, 4 << 10).check_burst().unwrap_err();
        assert!(
            error.starts_with("burst 4K is too small for down 1M/s: the smallest accepted is 128K"),
            "{error}"
        );
        assert!(limits(1 << 20, 128 << 10).check_burst().is_ok());
        assert!(limits(1024, 16 << 10).check_burst().is_ok());
        assert!(limits(1024, 16_000).check_burst().is_err());
        assert!(Limits::NONE.check_burst().is_ok());
    }

    fn places(words: &[&str]) -> Vec<Place> {
        words.iter().map(|w| Place::parse(w).unwrap()).collect()
    }

    #[test]
    fn the_lists_make_one_trie_and_a_scope() {
        let scope = Scope {
            exclude: places(&["local", "10.1.0.0/16"]),
            only: places(&["10.0.0.0/8", "fd00::/8"]),
        };
        let entries = scope.entries().unwrap();
        assert_eq!(entries.len(), 7);
        assert_eq!(scope.map_value(), SCOPE_ONLY);
        let kind = |text: &str| {
            let Place::Network(network) = Place::parse(text).unwrap() else {
                unreachable!()
            };
            entries.iter().find(|(n, _)| *n == network).map(|(_, k)| *k)
        };
        assert_eq!(kind("10.1.0.0/16"), Some(EXCLUDE));
        assert_eq!(kind("127.0.0.0/8"), Some(EXCLUDE));
        assert_eq!(kind("10.0.0.0/8"), Some(ONLY));
        assert_eq!(Scope::default().map_value(), SCOPE_EVERYTHING);
        let excludes = Scope {
            exclude: places(&["10.0.0.0/8", "10.0.0.0/8"]),
            only: Vec::new(),
        };
        assert_eq!(excludes.entries().unwrap().len(), 1);
        assert_eq!(excludes.map_value(), SCOPE_EXCLUDES);
    }

    #[test]
    fn a_network_in_both_lists_or_too_many_are_refused() {
        let both = Scope {
            exclude: places(&["local"]),
            only: places(&["127.0.0.1/8"]),
        };
        let error = both.entries().unwrap_err();
        assert!(
            error.contains("127.0.0.0/8 is in both --exclude (local) and --only (127.0.0.0/8)"),
            "{error}"
        );
        let many = Scope {
            exclude: (0..=MAX_NETWORKS)
                .map(|i| Place::parse(&format!("10.{}.{}.0/24", i / 256, i % 256)).unwrap())
                .collect(),
            only: Vec::new(),
        };
        assert!(many.entries().unwrap_err().contains("at most 256"));
    }
}
