//! `throttle list`, `throttle set` and `throttle stats`: clients of the runs'
//! control sockets.

use std::{
    io::{IsTerminal as _, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    control::PROTOCOL_VERSION,
    rundir::{self, RunDir, SOCKET_SUFFIX},
    runs, stats,
};

/// Distinct exit statuses, so scripts can tell what went wrong.
pub const EXIT_NO_SUCH_RUN: u8 = 3;
pub const EXIT_PERMISSION: u8 = 4;
pub const EXIT_RUN_GONE: u8 = 5;
pub const EXIT_REFUSED: u8 = 6;
/// `list` showed every run, but could not read some of them.
pub const EXIT_INCOMPLETE: u8 = 7;

/// Longest reply line read; a run's longest is its info, with its command.
const MAX_REPLY: usize = 1 << 20;
/// How long a whole reply may take to arrive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure with its exit status.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

type Outcome<T> = Result<T, Failure>;

fn fail<T>(code: u8, message: String) -> Outcome<T> {
    Err(Failure { code, message })
}

/// A connection to one run's socket.
struct Run {
    socket: PathBuf,
    stream: UnixStream,
    /// Bytes read past the last reply line.
    pending: Vec<u8>,
}

impl Run {
    /// Connects to run `name`'s socket in `dir`, which refuses anything but
    /// a socket served by the uid whose runs live there.
    fn connect(dir: &RunDir, name: &str) -> Outcome<Run> {
        let file = runs::socket_file(name);
        let socket = dir.path().join(&file);
        let stream = dir.connect(&file).or_else(|e| {
            // A message of our own (the peer check) says more than the errno.
            let said = e.get_ref().map(ToString::to_string);
            match e.kind() {
                std::io::ErrorKind::PermissionDenied => fail(
                    EXIT_PERMISSION,
                    said.unwrap_or_else(|| {
                        format!(
                            "permission denied on {}: the run belongs to another user",
                            socket.display()
                        )
                    }),
                ),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => fail(
                    EXIT_NO_SUCH_RUN,
                    said.unwrap_or_else(|| format!("no run at {}", socket.display())),
                ),
                _ => fail(
                    EXIT_RUN_GONE,
                    format!(
                        "the run at {} is not answering ({e}); it has ended",
                        socket.display()
                    ),
                ),
            }
        })?;
        Ok(Run {
            socket,
            stream,
            pending: Vec::new(),
        })
    }

    fn request(&mut self, mut request: Value) -> Outcome<Value> {
        request["version"] = json!(PROTOCOL_VERSION);
        let mut line = request.to_string();
        line.push('\n');
        // One write; if the run has already answered and hung up (a
        // refusal, "busy"), its reply is still waiting to be read.
        let written = self.stream.write_all(line.as_bytes());
        let line = match (self.reply_line(), written) {
            (Ok(line), _) => line,
            (Err(_), Err(e)) => {
                return fail(
                    EXIT_RUN_GONE,
                    format!("the run at {} went away: {e}", self.socket.display()),
                );
            }
            (Err(failure), Ok(())) => return Err(failure),
        };
        let reply: Value = serde_json::from_slice(&line).map_err(|e| Failure {
            code: EXIT_REFUSED,
            message: format!("unreadable reply from {}: {e}", self.socket.display()),
        })?;
        if reply["ok"] != json!(true) {
            let error = reply["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string();
            let code = if error.starts_with("permission denied") {
                EXIT_PERMISSION
            } else {
                EXIT_REFUSED
            };
            return fail(code, error);
        }
        Ok(reply)
    }

    /// One reply line, at most [`MAX_REPLY`] bytes within [`REPLY_TIMEOUT`],
    /// however the server dribbles it.
    fn reply_line(&mut self) -> Outcome<Vec<u8>> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let gone = |what: String| Failure {
            code: EXIT_RUN_GONE,
            message: format!("the run at {} {what}", self.socket.display()),
        };
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                return Ok(self.pending.drain(..=end).collect());
            }
            if self.pending.len() > MAX_REPLY {
                return fail(
                    EXIT_REFUSED,
                    format!(
                        "the run at {} sent a reply longer than {MAX_REPLY} bytes",
                        self.socket.display()
                    ),
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(gone(format!("sent no reply within {REPLY_TIMEOUT:?}")));
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(gone("closed the connection".into())),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(gone(format!("went away: {e}"))),
            }
        }
    }
}

/// Every run the caller may see: its directory and its name.
fn visible_runs() -> Vec<(RunDir, String)> {
    let mut runs = Vec::new();
    for dir in rundir::visible() {
        let names = match dir.names(SOCKET_SUFFIX) {
            Ok(names) => names,
            Err(e) => {
                eprintln!("throttle: warning: {e:#}");
                continue;
            }
        };
        for name in names {
            if let Ok(dir) = dir.try_clone() {
                runs.push((dir, name));
            }
        }
    }
    runs
}

/// Finds the run named NAME, or whose wrapper has pid PID; with
/// no target, the run this process is inside of (THROTTLE_SOCKET).
fn find(target: Option<&str>) -> Outcome<Run> {
    let Some(target) = target else {
        return match std::env::var_os("THROTTLE_SOCKET") {
            Some(socket) => {
                let (dir, file) = RunDir::of_socket(Path::new(&socket)).map_err(|e| Failure {
                    code: EXIT_NO_SUCH_RUN,
                    message: format!("THROTTLE_SOCKET: {e:#}"),
                })?;
                let name = file.strip_suffix(SOCKET_SUFFIX).unwrap_or(&file);
                Run::connect(&dir, name)
            }
            None => fail(
                EXIT_NO_SUCH_RUN,
                "name a run (NAME or PID), or run this inside a throttled command".into(),
            ),
        };
    };
    let pid: Option<u32> = target.parse().ok();
    for (dir, name) in visible_runs() {
        if pid.is_none() && name != target {
            continue;
        }
        let mut run = match Run::connect(&dir, &name) {
            Ok(run) => run,
            Err(_) if pid.is_some() => continue,
            Err(e) => return Err(e),
        };
        if pid.is_none()
            || run.request(json!({"command": "info"}))?["pid"].as_u64() == pid.map(u64::from)
        {
            return Ok(run);
        }
    }
    fail(
        EXIT_NO_SUCH_RUN,
        format!("no run named or with pid '{target}' (see 'throttle list')"),
    )
}

/// `text` with control characters (and the invisible ones that reorder a
/// line) escaped, so nothing a run sent can drive the terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn finish(outcome: Outcome<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("throttle: {}", printable(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

fn limit_text(limit: &Value) -> String {
    limit["rate"]
        .as_u64()
        .map_or_else(|| "unlimited".into(), |r| stats::rate(r as f64))
}

pub fn set(
    target: Option<&str>,
    down: Option<u64>,
    up: Option<u64>,
    burst: Option<u64>,
) -> Outcome<()> {
    if down.is_none() && up.is_none() && burst.is_none() {
        return fail(2, "nothing to set: give --down, --up or --burst".into());
    }
    let mut run = find(target)?;
    let mut request = json!({"command": "set"});
    let unlimited_or = |rate: u64| {
        if rate == 0 {
            json!("unlimited")
        } else {
            json!(rate)
        }
    };
    if let Some(rate) = down {
        request["down"] = unlimited_or(rate);
    }
    if let Some(rate) = up {
        request["up"] = unlimited_or(rate);
    }
    if let Some(burst) = burst {
        request["burst"] = json!(burst);
    }
    let reply = run.request(request)?;
    let limits = &reply["limits"];
    println!(
        "down {}, up {}",
        limit_text(&limits["down"]),
        limit_text(&limits["up"])
    );
    Ok(())
}

/// Passed bytes per direction from a stats reply.
fn passed(stats: &Value) -> [u64; 2] {
    ["down", "up"].map(|d| stats[d]["passed_bytes"].as_u64().unwrap_or(0))
}

fn rates(before: &Value, after: &Value, over: Duration) -> [f64; 2] {
    let (a, b) = (passed(before), passed(after));
    let secs = over.as_secs_f64().max(1e-3);
    [0, 1].map(|i| b[i].saturating_sub(a[i]) as f64 / secs)
}

pub fn stats(target: Option<&str>, watch: Option<Duration>, as_json: bool) -> Outcome<()> {
    let mut run = find(target)?;
    let interval = watch.unwrap_or(Duration::from_secs(1));
    let tty = std::io::stdout().is_terminal() && !as_json;
    let mut before = run.request(json!({"command": "stats"}))?;
    let mut at = Instant::now();
    loop {
        thread::sleep(interval);
        let after = match run.request(json!({"command": "stats"})) {
            Ok(after) => after,
            Err(e) if watch.is_some() && e.code == EXIT_RUN_GONE => {
                if tty {
                    println!();
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let over = at.elapsed();
        at = Instant::now();
        let [down, up] = rates(&before, &after, over);
        if as_json {
            println!(
                "{}",
                json!({"down_rate": down, "up_rate": up, "down": after["down"], "up": after["up"]})
            );
        } else {
            let line = format!(
                "down {} ({} total, {} dropped)  up {} ({} total, {} dropped)",
                stats::rate(down),
                stats::bytes(after["down"]["passed_bytes"].as_u64().unwrap_or(0)),
                stats::bytes(after["down"]["dropped_bytes"].as_u64().unwrap_or(0)),
                stats::rate(up),
                stats::bytes(after["up"]["passed_bytes"].as_u64().unwrap_or(0)),
                stats::bytes(after["up"]["dropped_bytes"].as_u64().unwrap_or(0)),
            );
            if tty && watch.is_some() {
                print!("\r\x1b[K{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
        }
        if watch.is_none() {
            return Ok(());
        }
        before = after;
    }
}

/// A run that could not be read, unless it has simply ended (its socket is
/// gone), which is no row at all.
fn unreadable(dir: &RunDir, name: &str, failure: &Failure) -> Option<Value> {
    let gone = !dir.contains(&runs::socket_file(name));
    (!gone).then(|| json!({"name": name, "error": failure.message}))
}

/// Every visible run, each a row; one that could not be read says why in
/// its row (`error`), and the list then ends with [`EXIT_INCOMPLETE`].
pub fn list(as_json: bool) -> Outcome<()> {
    const SAMPLE: Duration = Duration::from_millis(500);
    let mut runs: Vec<(Run, RunDir, Value, Value)> = Vec::new();
    let mut unreadable_rows = Vec::new();
    for (dir, name) in visible_runs() {
        let sampled = Run::connect(&dir, &name).and_then(|mut run| {
            let info = run.request(json!({"command": "info"}))?;
            let first = run.request(json!({"command": "stats"}))?;
            Ok((run, info, first))
        });
        match sampled {
            Ok((run, info, first)) => runs.push((run, dir, info, first)),
            Err(failure) => unreadable_rows.extend(unreadable(&dir, &name, &failure)),
        }
    }
    let started = Instant::now();
    thread::sleep(SAMPLE);
    let mut rows = Vec::new();
    for (mut run, dir, info, first) in runs {
        let second = match run.request(json!({"command": "stats"})) {
            Ok(second) => second,
            Err(failure) => {
                let name = info["name"].as_str().unwrap_or_default();
                unreadable_rows.extend(unreadable(&dir, name, &failure));
                continue;
            }
        };
        let [down, up] = rates(&first, &second, started.elapsed());
        rows.push(json!({
            "name": info["name"], "pid": info["pid"], "command": info["command"], "limits": info["limits"],
            "down_rate": down, "up_rate": up, "down": second["down"], "up": second["up"],
        }));
    }
    let incomplete = unreadable_rows.len();
    rows.extend(unreadable_rows);
    if as_json {
        println!("{}", Value::Array(rows));
    } else {
        print_table(&rows);
    }
    if incomplete > 0 {
        return fail(
            EXIT_INCOMPLETE,
            format!("{incomplete} run(s) could not be read; their rows say why"),
        );
    }
    Ok(())
}

fn print_table(rows: &[Value]) {
    println!(
        "{:<24} {:>8} {:>13} {:>13} {:>13} {:>13} {:>11} {:>11}  COMMAND",
        "NAME", "PID", "DOWN LIMIT", "UP LIMIT", "DOWN RATE", "UP RATE", "DOWN TOTAL", "UP TOTAL"
    );
    for row in rows {
        let name = printable(row["name"].as_str().unwrap_or("?"));
        if let Some(error) = row["error"].as_str() {
            println!(
                "{name:<24} {:>8} {:>13} {:>13} {:>13} {:>13} {:>11} {:>11}  (unreadable: {})",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                printable(error)
            );
            continue;
        }
        let command: Vec<&str> = row["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        println!(
            "{name:<24} {:>8} {:>13} {:>13} {:>13} {:>13} {:>11} {:>11}  {}",
            row["pid"].to_string(),
            limit_text(&row["limits"]["down"]),
            limit_text(&row["limits"]["up"]),
            stats::rate(row["down_rate"].as_f64().unwrap_or(0.0)),
            stats::rate(row["up_rate"].as_f64().unwrap_or(0.0)),
            stats::bytes(row["down"]["passed_bytes"].as_u64().unwrap_or(0)),
            stats::bytes(row["up"]["passed_bytes"].as_u64().unwrap_or(0)),
            printable(&command.join(" ")),
        );
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
}
