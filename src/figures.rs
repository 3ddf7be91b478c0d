//! Turning kernel counters into the figures people read.

use std::{fmt::Write as _, time::Duration};

use serde::Serialize;
use throttle_common::{Counters, PerDirection};

/// Bytes with a binary unit, as the RATE grammar reads them back: "1.50 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A rate in bytes per second: "1.00 MiB/s".
pub fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", bytes(bytes_per_sec.max(0.0).round() as u64))
}

/// What a run's programs counted: the limited traffic, and the traffic
/// `--exclude` and `--only` left unlimited (when the run had such a list).
pub struct Totals {
    pub limited: PerDirection<Counters>,
    pub excluded: Option<PerDirection<Counters>>,
}

/// The --summary line: totals, average rates and drops per direction.
pub fn summary(name: &str, totals: &Totals, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut line = format!("throttle: {name}: {:.2} s", elapsed.as_secs_f64());
    for (direction, c) in totals.limited.each() {
        let _ = write!(
            line,
            "; {} {} ({}), {} dropped in {} packets",
            direction.name(),
            bytes(c.passed_bytes),
            rate(c.passed_bytes as f64 / secs),
            bytes(c.dropped_bytes),
            c.dropped_packets
        );
    }
    if let Some(excluded) = &totals.excluded {
        let _ = write!(
            line,
            "; unlimited by --exclude/--only: down {}, up {}",
            bytes(excluded.down.passed_bytes),
            bytes(excluded.up.passed_bytes)
        );
    }
    line
}

/// The --summary=json line's fields.
#[derive(Serialize)]
struct SummaryJson<'a> {
    name: &'a str,
    elapsed: f64,
    #[serde(flatten)]
    counters: &'a PerDirection<Counters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    excluded: Option<&'a PerDirection<Counters>>,
}

/// The --summary=json line: exact counts, for scripts and the benchmark.
pub fn summary_json(name: &str, totals: &Totals, elapsed: Duration) -> String {
    serde_json::to_string(&SummaryJson {
        name,
        elapsed: elapsed.as_secs_f64(),
        counters: &totals.limited,
        excluded: totals.excluded.as_ref(),
    })
    .expect("a summary always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(1 << 20), "1.00 MiB");
        assert_eq!(rate(1048576.0), "1.00 MiB/s");
    }

    #[test]
    fn json_summary_has_exact_counts() {
        let down = Counters {
            passed_bytes: 2 << 20,
            dropped_bytes: 3000,
            ..Counters::default()
        };
        let line = summary_json(
            "wget-1",
            &Totals {
                limited: PerDirection {
                    down,
                    up: Counters::default(),
                },
                excluded: None,
            },
            Duration::from_secs(2),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["name"], "wget-1");
        assert_eq!(v["elapsed"], 2.0);
        assert_eq!(v["down"]["passed_bytes"], 2 << 20);
        assert_eq!(v["down"]["dropped_bytes"], 3000);
        assert_eq!(v["up"]["dropped_packets"], 0);
        assert!(v.get("excluded").is_none());
    }

    #[test]
    fn summary_names_both_directions() {
        let down = Counters {
            passed_bytes: 2 << 20,
            passed_packets: 10,
            dropped_bytes: 3000,
            dropped_packets: 2,
        };
        let mut totals = Totals {
            limited: PerDirection {
                down,
                up: Counters::default(),
            },
            excluded: None,
        };
        let line = summary("wget-1", &totals, Duration::from_secs(2));
        assert_eq!(
            line,
            "throttle: wget-1: 2.00 s; down 2.00 MiB (1.00 MiB/s), 2.93 KiB dropped in 2 packets; \
             up 0 B (0 B/s), 0 B dropped in 0 packets"
        );
        totals.excluded = Some(PerDirection {
            down: Counters {
                passed_bytes: 1 << 30,
                ..Counters::default()
            },
            up: Counters::default(),
        });
        let line = summary("wget-1", &totals, Duration::from_secs(2));
        assert!(
            line.ends_with("; unlimited by --exclude/--only: down 1.00 GiB, up 0 B"),
            "{line}"
        );
    }
}
