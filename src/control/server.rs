//! The per-run control socket: a Unix stream socket that answers one JSON
//! object per line (`info`, `stats`, `set`), for `throttle list/set/stats`
//! and for any other program (docs/protocol.md documents the protocol).
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
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use caps::Capability;
use nix::{
    errno::Errno,
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{getsockopt, sockopt::PeerCredentials},
    unistd::{Gid, Uid, pipe2},
};

use super::protocol::{
    self, Changes, Detached, Info, LimitView, MAX_LINE, Refusal, RefusalKind, Request, SetReply,
    Stats,
};
use crate::{
    kernel::{Maps, bpf::Programs},
    limits::Limits,
    privilege::capabilities,
    registry::rundir::{self, RunDir},
};

const MAX_CLIENTS: usize = 32;
/// A client that has not sent a whole request line within this long is
/// disconnected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll errors other than EINTR in a row after which the socket stops
/// serving rather than spin a core on an error that does not go away.
const MAX_POLL_ERRORS: u32 = 100;

/// What the socket serves: the run's description and its live programs.
pub struct RunState<M = Programs> {
    pub name: String,
    pub pid: u32,
    pub command: Vec<String>,
    pub started: SystemTime,
    pub limits: Mutex<Limits>,
    /// None once teardown has taken the programs back.
    pub programs: Mutex<Option<M>>,
    /// What an attached run holds, as `info` shows it; None for a run that
    /// started its command.
    pub attached: Option<String>,
    /// Set by a `detach` request; the attached run's wait ends on it.
    pub detach: AtomicBool,
}

impl<M> RunState<M> {
    /// Whether the run has `--exclude` or `--only` lists now.
    pub fn scoped(&self) -> bool {
        !self
            .limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .scope
            .is_empty()
    }
}

/// The serving socket; dropping it stops serving and removes the file.
pub struct Server {
    dir: RunDir,
    file: String,
    /// Closing it stops the accept loop at once (its poll sees the hang-up),
    /// so teardown never waits out a poll timeout.
    wake: Option<OwnedFd>,
    /// Lets the accept loop start, with the capabilities it is to keep.
    go: Option<Sender<Vec<Capability>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Makes the socket of run `name` in `dir` (mode 0600, owned by
    /// `owner`), replacing a stale one, to serve `state` from [`Self::serve`]
    /// on: clients may connect at once, and wait until then.
    pub fn start<M: Maps + Sync + 'static>(
        dir: &RunDir,
        name: &str,
        owner: (Uid, Gid),
        state: Arc<RunState<M>>,
    ) -> Result<Server> {
        let file = rundir::socket_file(name);
        dir.remove(&file)?;
        let listener: UnixListener = dir.bind(&file, owner)?;
        let (woken, wake) = pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?;
        let (go, started) = mpsc::channel::<Vec<Capability>>();
        let mut server = Server {
            dir: dir.try_clone()?,
            file,
            wake: Some(wake),
            go: Some(go),
            thread: None,
        };
        let thread = thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                // Capabilities are per thread: this one gives up its own
                // before it reads a byte from a client.
                let Ok(keep) = started.recv() else { return };
                if let Err(e) = capabilities::keep_only(&keep) {
                    eprintln!("throttle: the control socket does not serve: {e:#}");
                    return;
                }
                accept_loop(&listener, &woken, owner.0, &state)
            })
            .context("starting the control socket thread")?;
        server.thread = Some(thread);
        Ok(server)
    }

    /// Starts serving, with only the capabilities `keep` (see
    /// [`capabilities::keep_only`]).
    pub fn serve(&self, keep: &[Capability]) {
        if let Some(go) = &self.go {
            let _ = go.send(keep.to_vec());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.go.take());
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.dir.remove(&self.file) {
            eprintln!("throttle: {e:#}");
        }
    }
}

fn accept_loop<M: Maps + Sync + 'static>(
    listener: &UnixListener,
    woken: &OwnedFd,
    owner: Uid,
    state: &Arc<RunState<M>>,
) {
    let clients = Arc::new(AtomicUsize::new(0));
    let mut errors = 0;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => errors = 0,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                errors += 1;
                if errors >= MAX_POLL_ERRORS {
                    eprintln!("throttle: the control socket stops serving: poll failed: {e}");
                    return;
                }
                continue;
            }
        }
        if fds[1].any().unwrap_or(true) {
            break;
        }
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        if clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
            let busy = Refusal::new(RefusalKind::Busy, "busy: too many clients".into());
            let _ = stream.write_all(busy.to_line().as_bytes());
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

fn serve<M: Maps>(mut stream: UnixStream, owner: Uid, state: &RunState<M>) {
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
            Incoming::Line(line) => line,
            Incoming::Closed => return,
            Incoming::TooLong => {
                let too_long = Refusal::refused(format!(
                    "request line longer than {MAX_LINE} bytes, or unterminated"
                ));
                let _ = stream.write_all(too_long.to_line().as_bytes());
                return;
            }
        };
        if !allowed {
            let denied = Refusal::new(
                RefusalKind::PermissionDenied,
                "permission denied: only the run's owner and root may use this socket".into(),
            );
            let _ = stream.write_all(denied.to_line().as_bytes());
            return;
        }
        let reply = handle(&line, state).unwrap_or_else(|refusal| refusal.to_line());
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// What a client sent next.
enum Incoming {
    Line(Vec<u8>),
    /// It hung up, or took longer than [`REQUEST_TIMEOUT`] over one line.
    Closed,
    /// More than [`MAX_LINE`] bytes without a line end.
    TooLong,
}

/// Reads one request line within [`REQUEST_TIMEOUT`] as a whole, however
/// slowly the client dribbles it, so no client holds a slot for longer.
fn read_request(stream: &mut UnixStream, pending: &mut Vec<u8>) -> Incoming {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=end).collect();
            line.pop();
            return Incoming::Line(line);
        }
        if pending.len() > MAX_LINE {
            return Incoming::TooLong;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Incoming::Closed;
        }
        match stream.read(&mut chunk) {
            Ok(0) if pending.is_empty() => return Incoming::Closed,
            Ok(0) => return Incoming::TooLong,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Incoming::Closed,
        }
    }
}

/// Answers one request line: the reply line, or why it was refused.
fn handle<M: Maps>(line: &[u8], state: &RunState<M>) -> Result<String, Refusal> {
    match Request::parse(line)? {
        Request::Info => Ok(protocol::done(&info(state))),
        Request::Stats => stats(state).map(|stats| protocol::done(&stats)),
        Request::Set(changes) => set(state, &changes).map(|reply| protocol::done(&reply)),
        Request::Detach => detach(state).map(|reply| protocol::done(&reply)),
    }
}

fn info<M>(state: &RunState<M>) -> Info {
    let limits = state
        .limits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let started = state
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Info {
        name: state.name.clone(),
        pid: state.pid,
        command: state.command.clone(),
        started,
        limits: LimitView::of(&limits),
        exclude: protocol::names(&limits.scope.exclude),
        only: protocol::names(&limits.scope.only),
        attached: state.attached.clone(),
    }
}

/// Asks an attached run to lift its limits; a run that started its command
/// ends with it instead.
fn detach<M>(state: &RunState<M>) -> Result<Detached, Refusal> {
    if state.attached.is_none() {
        return Err(Refusal::refused(format!(
            "'{}' started its command and ends with it; only an attached run detaches",
            state.name
        )));
    }
    state.detach.store(true, Ordering::Relaxed);
    Ok(Detached {})
}

/// The refusal for a run whose programs teardown has taken back.
fn ending() -> Refusal {
    Refusal::new(RefusalKind::Ending, "the run is ending".into())
}

fn failed(error: &anyhow::Error) -> Refusal {
    Refusal::refused(format!("{error:#}"))
}

fn stats<M: Maps>(state: &RunState<M>) -> Result<Stats, Refusal> {
    let scoped = state.scoped();
    let programs = state.programs.lock().unwrap_or_else(|p| p.into_inner());
    let programs = programs.as_ref().ok_or_else(ending)?;
    let counters = programs.counters().map_err(|e| failed(&e))?;
    let excluded = if scoped {
        Some(programs.excluded().map_err(|e| failed(&e))?)
    } else {
        None
    };
    Ok(Stats {
        elapsed: state.started.elapsed().unwrap_or_default().as_secs_f64(),
        counters,
        excluded,
    })
}

fn set<M: Maps>(state: &RunState<M>, changes: &Changes) -> Result<SetReply, Refusal> {
    // Held throughout, so concurrent sets apply one after the other.
    let mut current = state.limits.lock().unwrap_or_else(|p| p.into_inner());
    let limits = changes.apply(&current)?;
    {
        let mut programs = state.programs.lock().unwrap_or_else(|p| p.into_inner());
        let programs = programs.as_mut().ok_or_else(ending)?;
        programs.set_limits(&limits).map_err(|e| failed(&e))?;
        if changes.changes_scope() {
            programs.set_scope(&limits.scope).map_err(|e| failed(&e))?;
        }
    }
    let reply = SetReply {
        limits: LimitView::of(&limits),
        exclude: protocol::names(&limits.scope.exclude),
        only: protocol::names(&limits.scope.only),
    };
    *current = limits;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use anyhow::Result;
    use throttle_common::{Counters, Direction, PerDirection, units::Rate};

    use super::*;
    use crate::{control::protocol::read_reply, limits::Scope};

    /// The maps' side as the socket sees it: what was last put in force,
    /// and counters that say so.
    #[derive(Default)]
    struct Recorded {
        limits: Option<Limits>,
        scope: Option<Scope>,
    }

    impl Maps for Recorded {
        fn counters(&self) -> Result<PerDirection<Counters>> {
            let rate = |d| {
                self.limits
                    .as_ref()
                    .map_or(0, |l: &Limits| l.rates[d].map_value())
            };
            Ok(PerDirection::from_fn(|d| Counters {
                passed_bytes: rate(d),
                ..Counters::default()
            }))
        }

        fn excluded(&self) -> Result<PerDirection<Counters>> {
            Ok(PerDirection::default())
        }

        fn set_limits(&mut self, limits: &Limits) -> Result<()> {
            self.limits = Some(limits.clone());
            Ok(())
        }

        fn set_scope(&mut self, scope: &Scope) -> Result<()> {
            self.scope = Some(scope.clone());
            Ok(())
        }
    }

    fn state() -> RunState<Recorded> {
        RunState {
            name: "t-1".into(),
            pid: 1,
            command: vec!["sleep".into(), "1".into()],
            started: SystemTime::now(),
            limits: Mutex::new(Limits {
                rates: PerDirection {
                    down: Rate::per_sec(1 << 20).unwrap(),
                    up: Rate::Unlimited,
                },
                burst: None,
                scope: Scope::default(),
            }),
            programs: Mutex::new(Some(Recorded::default())),
            attached: None,
            detach: AtomicBool::new(false),
        }
    }

    /// What the maps' side was last given.
    fn recorded<T>(state: &RunState<Recorded>, read: impl Fn(&Recorded) -> T) -> T {
        read(state.programs.lock().unwrap().as_ref().unwrap())
    }

    /// The reply to `request`, which must have been done.
    fn ask<T: serde::de::DeserializeOwned>(state: &RunState<Recorded>, request: &[u8]) -> T {
        let line = handle(request, state).unwrap();
        read_reply(line.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn set_puts_the_new_limits_in_force_and_replies_with_them() {
        let state = state();
        let reply: SetReply = ask(
            &state,
            br#"{"version":1,"command":"set","down":"unlimited","up":"2M"}"#,
        );
        assert_eq!(reply.limits.down.rate, None);
        assert_eq!(reply.limits.up.rate, Some(2 << 20));
        let recorded = recorded(&state, |r| r.limits.clone());
        assert_eq!(
            recorded.map(|l| l.rates[Direction::Down]),
            Some(Rate::Unlimited)
        );
        let stats: Stats = ask(&state, br#"{"version":1,"command":"stats"}"#);
        assert_eq!(stats.counters.up.passed_bytes, 2 << 20);
        let info: Info = ask(&state, br#"{"version":1,"command":"info"}"#);
        assert_eq!(info.limits, reply.limits);
        assert_eq!(info.command, ["sleep", "1"]);
    }

    #[test]
    fn only_an_attached_run_detaches() {
        let started = state();
        let refusal = handle(br#"{"version":1,"command":"detach"}"#, &started).unwrap_err();
        assert!(refusal.error.contains("ends with it"), "{refusal:?}");
        assert!(!started.detach.load(Ordering::Relaxed));
        let attached = RunState {
            attached: Some("unit nginx.service".into()),
            ..state()
        };
        let Detached {} = ask(&attached, br#"{"version":1,"command":"detach"}"#);
        assert!(attached.detach.load(Ordering::Relaxed));
        let info: Info = ask(&attached, br#"{"version":1,"command":"info"}"#);
        assert_eq!(info.attached.as_deref(), Some("unit nginx.service"));
    }

    #[test]
    fn a_refused_set_changes_nothing() {
        let state = state();
        let before = state.limits.lock().unwrap().clone();
        let refusal = handle(
            br#"{"version":1,"command":"set","down":"2M","up":"5X"}"#,
            &state,
        )
        .unwrap_err();
        assert!(refusal.error.starts_with("up: unknown unit"), "{refusal:?}");
        let refusal = handle(br#"{"version":1,"command":"set","burst":"4K"}"#, &state).unwrap_err();
        assert!(
            refusal.error.contains("the smallest accepted is 128K"),
            "{refusal:?}"
        );
        assert_eq!(*state.limits.lock().unwrap(), before);
        assert!(
            state
                .programs
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .limits
                .is_none()
        );
    }

    #[test]
    fn set_replaces_a_list_and_stats_then_count_the_excluded_apart() {
        let state = state();
        let stats: Stats = ask(&state, br#"{"version":1,"command":"stats"}"#);
        assert_eq!(stats.excluded, None);
        let reply: SetReply = ask(
            &state,
            br#"{"version":1,"command":"set","exclude":["10.213.0.0/16"]}"#,
        );
        assert_eq!(reply.exclude, ["10.213.0.0/16"]);
        assert_eq!(reply.limits.down.rate, Some(1 << 20));
        let recorded = recorded(&state, |r| r.scope.clone());
        assert_eq!(recorded.map(|s| s.exclude.len()), Some(1));
        let stats: Stats = ask(&state, br#"{"version":1,"command":"stats"}"#);
        assert!(stats.excluded.is_some());
        let info: Info = ask(&state, br#"{"version":1,"command":"info"}"#);
        assert_eq!(info.exclude, ["10.213.0.0/16"]);
        let refusal = handle(
            br#"{"version":1,"command":"set","only":["10.213.0.0/16"]}"#,
            &state,
        )
        .unwrap_err();
        assert!(refusal.error.contains("in both --exclude"), "{refusal:?}");
        let cleared: SetReply = ask(&state, br#"{"version":1,"command":"set","exclude":[]}"#);
        assert!(cleared.exclude.is_empty());
    }

    #[test]
    fn a_run_that_is_ending_says_so() {
        let state = state();
        state.programs.lock().unwrap().take();
        for line in [
            &br#"{"version":1,"command":"stats"}"#[..],
            br#"{"version":1,"command":"set","down":"1M"}"#,
        ] {
            let refusal = handle(line, &state).unwrap_err();
            assert_eq!(refusal.kind, RefusalKind::Ending);
        }
        assert!(handle(br#"{"version":1,"command":"info"}"#, &state).is_ok());
    }
}
