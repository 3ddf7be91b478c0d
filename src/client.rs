//! `throttle list`, `throttle set` and `throttle stats`: clients of the runs'
//! control sockets.

use std::{
    fs,
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{control::PROTOCOL_VERSION, runs, stats};

/// Distinct exit statuses, so scripts can tell what went wrong.
pub const EXIT_NO_SUCH_RUN: u8 = 3;
pub const EXIT_PERMISSION: u8 = 4;
pub const EXIT_RUN_GONE: u8 = 5;
pub const EXIT_REFUSED: u8 = 6;

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
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Run {
    fn connect(socket: &Path) -> Outcome<Run> {
        let stream = UnixStream::connect(socket).or_else(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => fail(
                EXIT_PERMISSION,
                format!(
                    "permission denied on {}: the run belongs to another user",
                    socket.display()
                ),
            ),
            std::io::ErrorKind::NotFound => {
                fail(EXIT_NO_SUCH_RUN, format!("no run at {}", socket.display()))
            }
            _ => fail(
                EXIT_RUN_GONE,
                format!(
                    "the run at {} is not answering ({e}); it has ended",
                    socket.display()
                ),
            ),
        })?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let writer = stream.try_clone().map_err(|e| Failure {
            code: EXIT_RUN_GONE,
            message: e.to_string(),
        })?;
        Ok(Run {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn request(&mut self, mut request: Value) -> Outcome<Value> {
        request["version"] = json!(PROTOCOL_VERSION);
        let gone = |e: std::io::Error| Failure {
            code: EXIT_RUN_GONE,
            message: format!("the run at {} went away: {e}", self.socket.display()),
        };
        writeln!(self.writer, "{request}").map_err(gone)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(gone)? == 0 {
            return fail(
                EXIT_RUN_GONE,
                format!("the run at {} closed the connection", self.socket.display()),
            );
        }
        let reply: Value = serde_json::from_str(&line).map_err(|e| Failure {
            code: EXIT_REFUSED,
            message: format!("unreadable reply: {e}"),
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
}

/// Every run's socket the caller may see.
fn sockets() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = runs::visible_dirs()
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    all.sort();
    all
}

/// Finds the run named NAME, or whose wrapper has pid PID; with
/// no target, the run this process is inside of (THROTTLE_SOCKET).
fn find(target: Option<&str>) -> Outcome<Run> {
    let Some(target) = target else {
        return match std::env::var_os("THROTTLE_SOCKET") {
            Some(socket) => Run::connect(Path::new(&socket)),
            None => fail(
                EXIT_NO_SUCH_RUN,
                "name a run (NAME or PID), or run this inside a throttled command".into(),
            ),
        };
    };
    let pid: Option<u32> = target.parse().ok();
    for socket in sockets() {
        let name = socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if pid.is_none() && name != target {
            continue;
        }
        let mut run = match Run::connect(&socket) {
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

pub fn finish(outcome: Outcome<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("throttle: {}", failure.message);
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

pub fn list(as_json: bool) -> Outcome<()> {
    const SAMPLE: Duration = Duration::from_millis(500);
    let mut runs: Vec<(Run, Value, Value)> = Vec::new();
    for socket in sockets() {
        // A run that ended or is another user's is simply not listed.
        let Ok(mut run) = Run::connect(&socket) else {
            continue;
        };
        let (Ok(info), Ok(first)) = (
            run.request(json!({"command": "info"})),
            run.request(json!({"command": "stats"})),
        ) else {
            continue;
        };
        runs.push((run, info, first));
    }
    let started = Instant::now();
    thread::sleep(SAMPLE);
    let mut rows = Vec::new();
    for (mut run, info, first) in runs {
        let Ok(second) = run.request(json!({"command": "stats"})) else {
            continue;
        };
        let [down, up] = rates(&first, &second, started.elapsed());
        rows.push(json!({
            "name": info["name"], "pid": info["pid"], "command": info["command"], "limits": info["limits"],
            "down_rate": down, "up_rate": up, "down": second["down"], "up": second["up"],
        }));
    }
    if as_json {
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>13} {:>13} {:>13} {:>13} {:>11} {:>11}  COMMAND",
        "NAME", "PID", "DOWN LIMIT", "UP LIMIT", "DOWN RATE", "UP RATE", "DOWN TOTAL", "UP TOTAL"
    );
    for row in rows {
        let command: Vec<&str> = row["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        println!(
            "{:<24} {:>8} {:>13} {:>13} {:>13} {:>13} {:>11} {:>11}  {}",
            row["name"].as_str().unwrap_or("?"),
            row["pid"],
            limit_text(&row["limits"]["down"]),
            limit_text(&row["limits"]["up"]),
            stats::rate(row["down_rate"].as_f64().unwrap_or(0.0)),
            stats::rate(row["up_rate"].as_f64().unwrap_or(0.0)),
            stats::bytes(row["down"]["passed_bytes"].as_u64().unwrap_or(0)),
            stats::bytes(row["up"]["passed_bytes"].as_u64().unwrap_or(0)),
            command.join(" "),
        );
    }
    Ok(())
}
