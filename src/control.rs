//! The per-run control socket: a Unix stream socket that answers one JSON
//! object per line (`info`, `stats`, `set`), for `throttle list/set/stats`
//! and for any other program (the README documents the protocol).
//!
//! It runs on its own threads and shares nothing with the supervisor but the
//! run's programs behind a mutex held for a map access at a time, so no
//! client, however slow or malicious, can hold up signal forwarding, reaping
//! or teardown.

use std::{
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{getsockopt, sockopt::PeerCredentials},
    unistd::{Gid, Uid, pipe2},
};
use serde::Deserialize;
use serde_json::{Value, json};
use throttle_common::{
    DOWN, Limit, UP,
    policer::{MAX_RATE, default_burst},
    units::{MAX_SIZE, UnitError, parse_size},
};

use crate::{bpf::Programs, rundir::RunDir, runs, stats};

pub const PROTOCOL_VERSION: u64 = 1;
/// Longest request line accepted; longer ones get an error and the connection closes.
pub const MAX_LINE: usize = 4096;
const MAX_CLIENTS: usize = 32;
/// A client that has not sent a whole request line within this long is
/// disconnected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the socket serves: the run's description and its live programs.
pub struct RunState {
    pub name: String,
    pub pid: u32,
    pub command: Vec<String>,
    pub started: SystemTime,
    pub limits: Mutex<Limits>,
    /// None once teardown has taken the programs back.
    pub programs: Mutex<Option<Programs>>,
}

/// The limits as the user gave them: a burst set explicitly stays; a default
/// one follows the rate.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub rates: [u64; 2],
    pub burst: Option<u64>,
}

impl Limits {
    pub fn for_direction(&self, direction: u32) -> Limit {
        let rate = self.rates[direction as usize];
        Limit {
            rate,
            burst: self.burst.unwrap_or_else(|| default_burst(rate)),
        }
    }

    fn json(&self) -> Value {
        let one = |d: u32| {
            let limit = self.for_direction(d);
            if limit.rate == 0 {
                json!({"rate": null, "burst": null})
            } else {
                json!({"rate": limit.rate, "burst": limit.burst})
            }
        };
        json!({"down": one(DOWN), "up": one(UP)})
    }
}

/// The serving socket; dropping it stops serving and removes the file.
pub struct Server {
    dir: RunDir,
    file: String,
    /// Closing it stops the accept loop at once (its poll sees the hang-up),
    /// so teardown never waits out a poll timeout.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `state` on the socket of run `name` in `dir` (mode 0600,
    /// owned by `owner`), replacing a stale one.
    pub fn start(
        dir: &RunDir,
        name: &str,
        owner: (Uid, Gid),
        state: Arc<RunState>,
    ) -> Result<Server> {
        let file = runs::socket_file(name);
        dir.remove(&file)?;
        let listener: UnixListener = dir.bind(&file, owner)?;
        let (woken, wake) = pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?;
        let mut server = Server {
            dir: dir.try_clone()?,
            file,
            wake: Some(wake),
            thread: None,
        };
        let thread = thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &woken, owner.0, &state))
            .context("starting the control socket thread")?;
        server.thread = Some(thread);
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.dir.remove(&self.file) {
            eprintln!("throttle: {e:#}");
        }
    }
}

fn accept_loop(listener: &UnixListener, woken: &OwnedFd, owner: Uid, state: &Arc<RunState>) {
    let clients = Arc::new(AtomicUsize::new(0));
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
        ];
        if !matches!(poll(&mut fds, PollTimeout::NONE), Ok(n) if n > 0) {
            continue;
        }
        if fds[1].any().unwrap_or(true) {
            break;
        }
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        if clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
            let _ = reply(&mut stream, &error("busy: too many clients"));
            continue;
        }
        clients.fetch_add(1, Ordering::Relaxed);
        let (counter, state) = (Arc::clone(&clients), Arc::clone(state));
        let spawned = thread::Builder::new().name("client".into()).spawn(move || {
            serve(stream, owner, &state);
            counter.fetch_sub(1, Ordering::Relaxed);
        });
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn error(message: &str) -> Value {
    json!({"version": PROTOCOL_VERSION, "ok": false, "error": message})
}

fn reply(stream: &mut UnixStream, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

fn serve(mut stream: UnixStream, owner: Uid, state: &RunState) {
    let allowed = getsockopt(&stream, PeerCredentials)
        .is_ok_and(|c| Uid::from_raw(c.uid()) == owner || c.uid() == 0);
    if stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let mut pending = Vec::new();
    loop {
        // Even a refused client's request is read first: closing on unread
        // data would reset the connection, and the client would report that
        // instead of the refusal waiting for it.
        let line = match read_request(&mut stream, &mut pending) {
            Request::Line(line) => line,
            Request::Closed => return,
            Request::TooLong => {
                let _ = reply(
                    &mut stream,
                    &error(&format!(
                        "request line longer than {MAX_LINE} bytes, or unterminated"
                    )),
                );
                return;
            }
        };
        if !allowed {
            let _ = reply(
                &mut stream,
                &error("permission denied: only the run's owner and root may use this socket"),
            );
            return;
        }
        let response = handle(&line, state).unwrap_or_else(|e| error(&format!("{e:#}")));
        if reply(&mut stream, &response).is_err() {
            return;
        }
    }
}

/// What a client sent next.
enum Request {
    Line(Vec<u8>),
    /// It hung up, or took longer than [`REQUEST_TIMEOUT`] over one line.
    Closed,
    /// More than [`MAX_LINE`] bytes without a line end.
    TooLong,
}

/// Reads one request line within [`REQUEST_TIMEOUT`] as a whole, however
/// slowly the client dribbles it, so no client holds a slot for longer.
fn read_request(stream: &mut UnixStream, pending: &mut Vec<u8>) -> Request {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = pending.iter().position(|b| *b == b'\n') {
            return Request::Line(pending.drain(..=end).collect());
        }
        if pending.len() > MAX_LINE {
            return Request::TooLong;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Request::Closed;
        }
        match stream.read(&mut chunk) {
            Ok(0) if pending.is_empty() => return Request::Closed,
            Ok(0) => return Request::TooLong,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Request::Closed,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    version: u64,
    command: String,
    down: Option<Value>,
    up: Option<Value>,
    burst: Option<Value>,
}

fn handle(line: &[u8], state: &RunState) -> Result<Value> {
    let request: Command =
        serde_json::from_slice(line).map_err(|e| anyhow!("malformed request: {e}"))?;
    if request.version != PROTOCOL_VERSION {
        bail!(
            "unsupported protocol version {}; this run speaks {PROTOCOL_VERSION}",
            request.version
        );
    }
    let is_set = request.command == "set";
    if !is_set && (request.down.is_some() || request.up.is_some() || request.burst.is_some()) {
        bail!("'{}' takes no down, up or burst", request.command);
    }
    let mut body = match request.command.as_str() {
        "info" => info(state),
        "stats" => stats(state)?,
        "set" => set(state, &request)?,
        other => bail!("unknown command '{other}'; expected info, stats or set"),
    };
    body["version"] = json!(PROTOCOL_VERSION);
    body["ok"] = json!(true);
    Ok(body)
}

fn info(state: &RunState) -> Value {
    let limits = *state.limits.lock().unwrap_or_else(|p| p.into_inner());
    let started = state
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    json!({
        "name": state.name,
        "pid": state.pid,
        "command": state.command,
        "started": started,
        "limits": limits.json(),
    })
}

fn stats(state: &RunState) -> Result<Value> {
    let programs = state.programs.lock().unwrap_or_else(|p| p.into_inner());
    let counters = programs.as_ref().context("the run is ending")?.counters()?;
    let elapsed = state.started.elapsed().unwrap_or_default().as_secs_f64();
    Ok(json!({
        "elapsed": elapsed,
        "down": stats::counters_json(&counters[DOWN as usize]),
        "up": stats::counters_json(&counters[UP as usize]),
    }))
}

/// An amount in a request: a positive number up to `max`, or a string that
/// `parse` reads (the RATE grammar with "unlimited", or a SIZE), which holds
/// the same bound.
fn amount(
    value: &Value,
    what: &str,
    parse: fn(&str) -> Result<u64, String>,
    (expected, max): (&str, u64),
) -> Result<u64> {
    match value {
        Value::Number(n) => match n.as_u64().filter(|n| *n > 0) {
            Some(n) if n > max => bail!("{what}: {}", UnitError::TooLarge { max }),
            Some(n) => Ok(n),
            None => bail!("{what}: {n} is not a positive integer"),
        },
        Value::String(s) => parse(s).map_err(|e| anyhow!("{what}: {e}")),
        other => bail!("{what}: expected {expected}, got {other}"),
    }
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

const RATE: (&str, u64) = (
    "a rate string, a number of bytes/s or \"unlimited\"",
    MAX_RATE,
);
const SIZE: (&str, u64) = ("a size string or a number of bytes", MAX_SIZE);

fn set(state: &RunState, request: &Command) -> Result<Value> {
    if request.down.is_none() && request.up.is_none() && request.burst.is_none() {
        bail!("'set' needs at least one of down, up, burst");
    }
    // Held throughout, so concurrent sets apply one after the other.
    let mut current = state.limits.lock().unwrap_or_else(|p| p.into_inner());
    let mut limits = *current;
    if let Some(v) = &request.down {
        limits.rates[DOWN as usize] = amount(v, "down", crate::cli::limit, RATE)?;
    }
    if let Some(v) = &request.up {
        limits.rates[UP as usize] = amount(v, "up", crate::cli::limit, RATE)?;
    }
    if let Some(v) = &request.burst {
        limits.burst = Some(amount(v, "burst", size, SIZE)?);
    }
    {
        let mut programs = state.programs.lock().unwrap_or_else(|p| p.into_inner());
        let programs = programs.as_mut().context("the run is ending")?;
        programs.set_limit(DOWN, limits.for_direction(DOWN))?;
        programs.set_limit(UP, limits.for_direction(UP))?;
    }
    *current = limits;
    Ok(json!({"limits": limits.json()}))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_in_requests_hold_the_grammars_bounds() {
        let rate = |v: Value| amount(&v, "down", crate::cli::limit, RATE);
        assert_eq!(rate(json!(MAX_RATE)).unwrap(), MAX_RATE);
        assert_eq!(rate(json!("16G")).unwrap(), MAX_RATE);
        for too_big in [json!(MAX_RATE + 1), json!(u64::MAX)] {
            let error = rate(too_big).unwrap_err().to_string();
            assert!(error.contains("larger than the maximum"), "{error}");
        }
        for refused in [json!(0), json!(-1), json!(1.5), json!(true)] {
            assert!(rate(refused.clone()).is_err(), "{refused}");
        }
        let burst = |v: Value| amount(&v, "burst", size, SIZE);
        assert_eq!(burst(json!(MAX_SIZE)).unwrap(), MAX_SIZE);
        assert!(burst(json!(u64::MAX)).is_err());
    }
}
