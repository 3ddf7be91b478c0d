//! How `list`, `set` and `stats` show what runs answered: text for people,
//! JSON for scripts. Everything a run sent is untrusted (its name and
//! command are whatever its owner chose), so nothing of it reaches the
//! terminal unescaped, in either form.

use std::{fmt::Write as _, io::IsTerminal as _, time::Duration};

use serde::Serialize;
use throttle_common::{Counters, PerDirection, units::Rate};

use super::protocol::{LimitView, SetReply, Stats};
use crate::figures;

/// `text` with control characters (and the invisible ones that reorder a
/// line) escaped, so nothing a run sent can drive the terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_reordering(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `value` as JSON, with the invisible characters that reorder a line
/// escaped as well as the control characters JSON itself escapes, so a run
/// that names itself with them cannot disguise a row on a terminal.
pub fn to_json<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).expect("client output always serialises");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_reordering(c) {
            // Only ever inside a string: JSON's syntax is plain ASCII.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The bidirectional embeddings, overrides and isolates.
fn is_reordering(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn limit_text(rate: Rate) -> String {
    rate.bytes_per_sec().map_or_else(
        || throttle_common::units::UNLIMITED.into(),
        |r| figures::rate(r as f64),
    )
}

/// What `set` prints: the limits now in force.
pub fn set_reply(reply: &SetReply) -> String {
    let mut line = format!(
        "down {}, up {}",
        limit_text(reply.limits.down.rate()),
        limit_text(reply.limits.up.rate())
    );
    for (option, list) in [("exclude", &reply.exclude), ("only", &reply.only)] {
        if !list.is_empty() {
            let _ = write!(line, "; {option} {}", printable(&list.join(", ")));
        }
    }
    line
}

/// A `stats --json` line (docs/protocol.md).
#[derive(Serialize)]
pub struct Sample<'a> {
    /// When the sample was taken, in Unix time.
    pub time: f64,
    /// The run's age then, in seconds.
    pub elapsed: f64,
    pub down_rate: f64,
    pub up_rate: f64,
    #[serde(flatten)]
    pub counters: &'a PerDirection<Counters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<&'a PerDirection<Counters>>,
}

/// A `stats` line for people: each direction's rate, totals and drops.
pub fn stats_line(stats: &Stats, rate: &PerDirection<f64>) -> String {
    let mut line = String::new();
    for (direction, c) in stats.counters.each() {
        let _ = write!(
            line,
            "{}{} {} ({} total, {} dropped)",
            if line.is_empty() { "" } else { "  " },
            direction.name(),
            figures::rate(rate[direction]),
            figures::bytes(c.passed_bytes),
            figures::bytes(c.dropped_bytes),
        );
    }
    if let Some(excluded) = &stats.excluded {
        let _ = write!(
            line,
            "  unlimited by --exclude/--only: down {} total, up {} total",
            figures::bytes(excluded.down.passed_bytes),
            figures::bytes(excluded.up.passed_bytes)
        );
    }
    line
}

/// Each direction's rate between two samples, in bytes/s.
pub fn rates(before: &Stats, after: &Stats, over: Duration) -> PerDirection<f64> {
    let secs = over.as_secs_f64().max(1e-3);
    PerDirection::from_fn(|d| {
        let passed = |s: &Stats| s.counters[d].passed_bytes;
        passed(after).saturating_sub(passed(before)) as f64 / secs
    })
}

/// One row of `list`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Row {
    Live {
        name: String,
        pid: u32,
        command: Vec<String>,
        /// What an attached run holds; its command is empty.
        #[serde(skip_serializing_if = "Option::is_none")]
        attached: Option<String>,
        limits: PerDirection<LimitView>,
        down_rate: f64,
        up_rate: f64,
        #[serde(flatten)]
        counters: PerDirection<Counters>,
    },
    /// A run that could not be read, and why.
    Unreadable { name: String, error: String },
}

/// `list`'s table: one line per row, cut to the terminal's width (only the
/// last column, COMMAND, is long; piped, lines stay whole).
pub fn table(rows: &[Row]) -> String {
    let width = terminal_width();
    let header = columns(
        "NAME",
        "PID",
        ["DOWN LIMIT", "UP LIMIT", "DOWN RATE", "UP RATE"],
        ["DOWN TOTAL", "UP TOTAL"],
        "COMMAND",
    );
    let mut out = fit(header, width);
    for row in rows {
        let line = match row {
            Row::Unreadable { name, error } => columns(
                &printable(name),
                "-",
                ["-"; 4],
                ["-"; 2],
                &format!("(unreadable: {})", printable(error)),
            ),
            Row::Live {
                name,
                pid,
                command,
                attached,
                limits,
                down_rate,
                up_rate,
                counters,
            } => columns(
                &printable(name),
                &pid.to_string(),
                [
                    &limit_text(limits.down.rate()),
                    &limit_text(limits.up.rate()),
                    &figures::rate(*down_rate),
                    &figures::rate(*up_rate),
                ],
                [
                    &figures::bytes(counters.down.passed_bytes),
                    &figures::bytes(counters.up.passed_bytes),
                ],
                &printable(&match attached {
                    Some(target) => format!("(attached) {target}"),
                    None => command.join(" "),
                }),
            ),
        };
        out.push('\n');
        out.push_str(&fit(line, width));
    }
    out
}

/// The table's one layout: a name, a pid, four rates, two totals, the rest.
fn columns(name: &str, pid: &str, rates: [&str; 4], totals: [&str; 2], last: &str) -> String {
    let mut line = format!("{name:<24} {pid:>8}");
    for rate in rates {
        let _ = write!(line, " {rate:>13}");
    }
    for total in totals {
        let _ = write!(line, " {total:>11}");
    }
    let _ = write!(line, "  {last}");
    line
}

/// The width of the terminal standard output is, if it is one.
fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into the one passed.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// `line` cut to `width` characters with an ellipsis, if a width is given.
fn fit(line: String, width: Option<usize>) -> String {
    match width {
        Some(width) if line.chars().count() > width => {
            let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_a_run_sends_reaches_the_terminal_raw() {
        assert_eq!(printable("wget-1"), "wget-1");
        assert_eq!(printable("a\x1b[2Jb\x07"), "a\\u{1b}[2Jb\\u{7}");
        assert_eq!(printable("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{9b}");
        assert_eq!(printable("tab\there\nnew"), "tab\\there\\nnew");
        assert_eq!(printable("grüße"), "grüße");
    }

    #[test]
    fn json_output_escapes_what_reorders_a_line() {
        let json = to_json(&["a\u{202e}b", "\u{2066}x\u{1b}"]);
        assert_eq!(json, r#"["a\u202eb","\u2066x\u001b"]"#);
        let back: Vec<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ["a\u{202e}b", "\u{2066}x\u{1b}"]);
    }

    #[test]
    fn a_line_too_wide_for_the_terminal_ends_in_an_ellipsis() {
        assert_eq!(fit("wget -q url".into(), Some(8)), "wget -q…");
        assert_eq!(fit("wget".into(), Some(8)), "wget");
        assert_eq!(fit("grüße aus".into(), Some(5)), "grüß…");
        let long = "x".repeat(300);
        assert_eq!(fit(long.clone(), None), long);
    }

    #[test]
    fn every_table_line_has_the_same_columns() {
        let header = columns("NAME", "PID", ["a"; 4], ["b"; 2], "COMMAND");
        let row = columns("wget-1", "4242", ["1.0 MiB/s"; 4], ["3 MiB"; 2], "wget url");
        let start = |line: &str, column: &str| line.find(column).unwrap();
        assert_eq!(start(&header, "COMMAND"), start(&row, "wget url"));
        assert_eq!(header.len() - "COMMAND".len(), row.len() - "wget url".len());
    }
}
