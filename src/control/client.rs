//! `throttle list`, `throttle set` and `throttle stats`: clients of the runs'
//! control sockets.

use std::{
    io::{IsTerminal as _, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::de::DeserializeOwned;

use super::{
    protocol::{self, Changes, Detached, Info, Request, SetReply, Stats},
    render::{self, Row},
};
use crate::{
    exit,
    registry::rundir::{self, RunDir, SOCKET_SUFFIX},
};

/// Longest reply line read; a run's longest is its info, with its command.
const MAX_REPLY: usize = 1 << 20;
/// How long a whole reply to `set` or `stats` may take to arrive.
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

/// How long finding a run may take: connecting to every candidate, and
/// asking those that are not told apart by name alone who they are. A
/// socket that stalls (another user's, planted) costs this once, not once
/// per socket, because the candidates are asked at the same time.
const FIND_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to one run's control socket.
struct Connection {
    socket: PathBuf,
    stream: UnixStream,
    /// The wrapper's pid, as the kernel recorded it (SO_PEERCRED), not as
    /// the run says.
    pid: u32,
    /// Bytes read past the last reply line.
    pending: Vec<u8>,
    /// When every reply on this connection must have arrived.
    deadline: Instant,
}

impl Connection {
    /// Connects to run `name`'s socket in `dir` by `deadline`, which
    /// refuses anything but a socket served by the uid whose runs live
    /// there.
    fn open(dir: &RunDir, name: &str, deadline: Instant) -> Outcome<Connection> {
        let file = rundir::socket_file(name);
        let socket = dir.path().join(&file);
        let (stream, pid) = dir.connect(&file, deadline).or_else(|e| {
            // A message of our own (the peer check) says more than the errno.
            let said = e.get_ref().map(ToString::to_string);
            match e.kind() {
                std::io::ErrorKind::PermissionDenied => fail(
                    exit::PERMISSION,
                    said.unwrap_or_else(|| {
                        format!(
                            "permission denied on {}: the run belongs to another user",
                            socket.display()
                        )
                    }),
                ),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => fail(
                    exit::NO_SUCH_RUN,
                    said.unwrap_or_else(|| format!("no run at {}", socket.display())),
                ),
                _ => fail(
                    exit::RUN_GONE,
                    format!(
                        "the run at {} is not answering ({e}); it has ended",
                        socket.display()
                    ),
                ),
            }
        })?;
        Ok(Connection {
            socket,
            stream,
            pid,
            pending: Vec::new(),
            deadline,
        })
    }

    /// Gives the replies still to come until `deadline`.
    fn until(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    fn request<T: DeserializeOwned>(&mut self, request: &Request) -> Outcome<T> {
        // One write; if the run has already answered and hung up (a
        // refusal, "busy"), its reply is still waiting to be read. A
        // server that reads nothing cannot block the write for long: the
        // request is one short line.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let _ = self
            .stream
            .set_write_timeout(Some(left.max(Duration::from_millis(1))));
        let written = self.stream.write_all(request.to_line().as_bytes());
        let line = match (self.reply_line(), written) {
            (Ok(line), _) => line,
            (Err(_), Err(e)) => {
                return fail(
                    exit::RUN_GONE,
                    format!("the run at {} went away: {e}", self.socket.display()),
                );
            }
            (Err(failure), Ok(())) => return Err(failure),
        };
        match protocol::read_reply(&line) {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(refusal)) => fail(refusal.exit_status(), refusal.error),
            Err(e) => fail(
                exit::REFUSED,
                format!("unreadable reply from {}: {e}", self.socket.display()),
            ),
        }
    }

    fn info(&mut self) -> Outcome<Info> {
        self.request(&Request::Info)
    }

    fn stats(&mut self) -> Outcome<Stats> {
        self.request(&Request::Stats)
    }

    /// Stats within a fresh [`REPLY_TIMEOUT`], for `stats --watch`, which
    /// asks for as long as the run lasts.
    fn stats_now(&mut self) -> Outcome<Stats> {
        self.until(Instant::now() + REPLY_TIMEOUT);
        self.stats()
    }

    /// One reply line, at most [`MAX_REPLY`] bytes by the connection's
    /// deadline, however the server dribbles it.
    fn reply_line(&mut self) -> Outcome<Vec<u8>> {
        let gone = |what: String| Failure {
            code: exit::RUN_GONE,
            message: format!("the run at {} {what}", self.socket.display()),
        };
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                return Ok(self.pending.drain(..=end).collect());
            }
            if self.pending.len() > MAX_REPLY {
                return fail(
                    exit::REFUSED,
                    format!(
                        "the run at {} sent a reply longer than {MAX_REPLY} bytes",
                        self.socket.display()
                    ),
                );
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(gone("sent no reply in time".into()));
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

/// A run's socket the caller may see: its directory and its name.
struct Candidate {
    dir: RunDir,
    name: String,
}

impl Candidate {
    /// `NAME@UID`: the name, and the uid whose runs the directory holds.
    fn qualified(&self) -> String {
        format!("{}@{}", self.name, self.dir.runs_owner())
    }
}

/// Every run the caller may see, and the directories passed over.
fn visible_runs() -> (Vec<Candidate>, Vec<String>) {
    let found = rundir::visible();
    let mut refused = found.refused;
    let mut runs = Vec::new();
    for dir in found.dirs {
        let names = match dir.names(SOCKET_SUFFIX) {
            Ok(names) => names,
            Err(e) => {
                refused.push(format!("{e:#}"));
                continue;
            }
        };
        for name in names {
            if let Ok(dir) = dir.try_clone() {
                runs.push(Candidate { dir, name });
            }
        }
    }
    (runs, refused)
}

/// Runs `work` on every item at once, each in a thread of its own (at most
/// [`PARALLEL`] at a time), and returns the results in order. Every `work`
/// must bound itself in time: a deadline is what keeps one stalled run
/// from holding up the rest.
fn each<T: Send, R: Send>(items: &mut [T], work: impl Fn(&mut T) -> R + Sync) -> Vec<R> {
    let mut results = Vec::with_capacity(items.len());
    for chunk in items.chunks_mut(PARALLEL) {
        thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter_mut()
                .map(|item| scope.spawn(|| work(item)))
                .collect();
            for handle in handles {
                match handle.join() {
                    Ok(result) => results.push(result),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        });
    }
    results
}

/// How many runs are asked at the same time. Each stalled socket holds its
/// thread until the deadline, so this many planted ones could still crowd
/// out the runs listed after them (those rows then say they did not answer
/// in time); nothing waits longer than the deadline either way.
const PARALLEL: usize = 256;

/// What `set` and `stats` are pointed at: NAME, NAME@UID, or a wrapper's PID.
enum Target<'a> {
    Name { name: &'a str, uid: Option<u32> },
    Pid(u32),
}

impl<'a> Target<'a> {
    fn parse(text: &'a str) -> Target<'a> {
        if let Ok(pid) = text.parse() {
            return Target::Pid(pid);
        }
        match text.rsplit_once('@').map(|(n, u)| (n, u.parse().ok())) {
            Some((name, Some(uid))) => Target::Name {
                name,
                uid: Some(uid),
            },
            _ => Target::Name {
                name: text,
                uid: None,
            },
        }
    }

    fn names(&self, candidate: &Candidate) -> bool {
        match self {
            Target::Name { name, uid } => {
                candidate.name == *name
                    && uid.is_none_or(|uid| candidate.dir.runs_owner().as_raw() == uid)
            }
            Target::Pid(_) => true,
        }
    }
}

/// Finds the run named NAME (NAME@UID where several users' runs have that
/// name), or whose wrapper has pid PID; with no target, the run this
/// process is inside of (THROTTLE_SOCKET).
fn find(target: Option<&str>) -> Outcome<Connection> {
    let deadline = Instant::now() + FIND_TIMEOUT;
    let Some(text) = target else {
        return match std::env::var_os("THROTTLE_SOCKET") {
            Some(socket) => {
                let (dir, file) = RunDir::of_socket(Path::new(&socket)).map_err(|e| Failure {
                    code: exit::NO_SUCH_RUN,
                    message: format!("THROTTLE_SOCKET: {e:#}"),
                })?;
                let name = file.strip_suffix(SOCKET_SUFFIX).unwrap_or(&file);
                Connection::open(&dir, name, deadline)
            }
            None => fail(
                exit::NO_SUCH_RUN,
                "name a run (NAME or PID), or run this inside a throttled command".into(),
            ),
        };
    };
    let target = Target::parse(text);
    let (runs, _) = visible_runs();
    let mut candidates: Vec<Candidate> = runs.into_iter().filter(|c| target.names(c)).collect();
    let mut found: Vec<(Connection, String)> = match target {
        // By name, the directory says who the run is: only a run with that
        // name is asked, and its failure is the answer.
        Target::Name { .. } => {
            if candidates.len() > 1 {
                return ambiguous(text, candidates.iter().map(Candidate::qualified));
            }
            let Some(only) = candidates.first() else {
                return no_such_run(text);
            };
            return Connection::open(&only.dir, &only.name, deadline);
        }
        // By pid, every run is asked at once, and the kernel says which
        // wrapper serves each socket: a run that fails to answer, or lies
        // about its pid, is simply not the one.
        Target::Pid(pid) => each(&mut candidates, |c| {
            Connection::open(&c.dir, &c.name, deadline)
                .ok()
                .filter(|run| run.pid == pid)
                .map(|run| (run, c.qualified()))
        })
        .into_iter()
        .flatten()
        .collect(),
    };
    match found.len() {
        0 => no_such_run(text),
        1 => Ok(found.remove(0).0),
        _ => ambiguous(text, found.into_iter().map(|(_, name)| name)),
    }
}

fn no_such_run<T>(target: &str) -> Outcome<T> {
    fail(
        exit::NO_SUCH_RUN,
        format!("no run named or with pid '{target}' (see 'throttle list')"),
    )
}

fn ambiguous<T>(target: &str, candidates: impl Iterator<Item = String>) -> Outcome<T> {
    let candidates: Vec<String> = candidates.collect();
    fail(
        exit::AMBIGUOUS,
        format!(
            "'{target}' names {} runs: {}; pick one as NAME@UID",
            candidates.len(),
            candidates.join(", ")
        ),
    )
}

pub fn finish(outcome: Outcome<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("throttle: {}", render::printable(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

pub fn set(target: Option<&str>, changes: &Changes) -> Outcome<()> {
    if changes.is_empty() {
        return fail(
            exit::USAGE,
            "nothing to set: give --down, --up or --burst".into(),
        );
    }
    let mut run = find(target)?;
    run.until(Instant::now() + REPLY_TIMEOUT);
    let reply: SetReply = run.request(&Request::Set(changes.clone()))?;
    println!("{}", render::set_reply(&reply));
    Ok(())
}

/// `throttle detach`: lifts an attached run's limits, and returns once
/// the run has ended (its socket is gone) or [`REPLY_TIMEOUT`] has passed.
pub fn detach(target: &str) -> Outcome<()> {
    let mut run = find(Some(target))?;
    run.until(Instant::now() + REPLY_TIMEOUT);
    let Detached {} = run.request(&Request::Detach)?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while run.socket.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn stats(target: Option<&str>, watch: Option<Duration>, as_json: bool) -> Outcome<()> {
    let mut run = find(target)?;
    let interval = watch.unwrap_or(Duration::from_secs(1));
    let tty = std::io::stdout().is_terminal() && !as_json;
    let mut before = run.stats_now()?;
    let mut at = Instant::now();
    loop {
        thread::sleep(interval);
        let after = match run.stats_now() {
            Ok(after) => after,
            Err(e) if watch.is_some() && e.code == exit::RUN_GONE => {
                if tty {
                    println!();
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let over = at.elapsed();
        at = Instant::now();
        let rate = render::rates(&before, &after, over);
        if as_json {
            let sample = render::Sample {
                time: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                elapsed: after.elapsed,
                down_rate: rate.down,
                up_rate: rate.up,
                counters: &after.counters,
                excluded: after.excluded.as_ref(),
            };
            println!("{}", render::to_json(&sample));
        } else {
            let line = render::stats_line(&after, &rate);
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
fn unreadable(run: &Candidate, failure: Failure) -> Option<Row> {
    let gone = !run.dir.contains(&rundir::socket_file(&run.name));
    (!gone).then(|| Row::Unreadable {
        name: run.name.clone(),
        error: failure.message,
    })
}

/// Every visible run, each a row; one that could not be read says why in
/// its row (`error`), and the list then ends with [`exit::INCOMPLETE`], as
/// it does when a directory was passed over. Every run is asked at once,
/// with one deadline for the whole list, so runs that do not answer (or
/// sockets planted to stall it) cost [`LIST_TIMEOUT`] in all.
pub fn list(as_json: bool) -> Outcome<()> {
    const SAMPLE: Duration = Duration::from_millis(500);
    const LIST_TIMEOUT: Duration = Duration::from_secs(2);
    let (mut runs, refused) = visible_runs();
    for warning in &refused {
        eprintln!("throttle: warning: {}", render::printable(warning));
    }
    let deadline = Instant::now() + LIST_TIMEOUT;
    let first = each(&mut runs, |run| {
        let mut connection = Connection::open(&run.dir, &run.name, deadline)?;
        let info = connection.info()?;
        let first = connection.stats()?;
        Ok((connection, info, first))
    });
    let started = Instant::now();
    thread::sleep(SAMPLE);
    let deadline = Instant::now() + LIST_TIMEOUT / 2;
    let mut unreadable_rows = Vec::new();
    let mut sampled = Vec::new();
    for (run, first) in runs.iter().zip(first) {
        match first {
            Ok(first) => sampled.push((run, first)),
            Err(failure) => unreadable_rows.extend(unreadable(run, failure)),
        }
    }
    let second = each(&mut sampled, |(_, (connection, _, _))| {
        connection.until(deadline);
        connection.stats()
    });
    let over = started.elapsed();
    let mut rows = Vec::new();
    for ((run, (_, info, first)), second) in sampled.into_iter().zip(second) {
        match second {
            Ok(second) => {
                let rate = render::rates(&first, &second, over);
                rows.push(Row::Live {
                    name: info.name,
                    pid: info.pid,
                    command: info.command,
                    attached: info.attached,
                    limits: info.limits,
                    down_rate: rate.down,
                    up_rate: rate.up,
                    counters: second.counters,
                });
            }
            Err(failure) => unreadable_rows.extend(unreadable(run, failure)),
        }
    }
    let incomplete = unreadable_rows.len();
    rows.extend(unreadable_rows);
    if as_json {
        println!("{}", render::to_json(&rows));
    } else {
        println!("{}", render::table(&rows));
    }
    incomplete_list(incomplete, refused.len())
}

/// Ends a list that could not read `unreadable` runs, or passed over
/// `refused` directories, with [`exit::INCOMPLETE`].
fn incomplete_list(unreadable: usize, refused: usize) -> Outcome<()> {
    let mut what = Vec::new();
    if unreadable > 0 {
        what.push(format!(
            "{unreadable} run(s) could not be read; their rows say why"
        ));
    }
    if refused > 0 {
        what.push(format!(
            "{refused} directory(s) were passed over (see the warnings)"
        ));
    }
    if what.is_empty() {
        return Ok(());
    }
    fail(exit::INCOMPLETE, what.join("; "))
}
