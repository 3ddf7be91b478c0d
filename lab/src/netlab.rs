//! A small network laboratory shared by the integration tests, the demo and
//! the benchmark: a network namespace joined to the host by a veth pair, an
//! HTTP server inside it, and timing of the bytes a transfer delivers.
//!
//! It only ever uses addresses of the namespace and veth pair it creates.

use nix::fcntl::{Flock, FlockArg};
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub const MIB: u64 = 1 << 20;

pub fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2; see scripts/setup.sh)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair (MTU 1500), with
/// the host side at 10.213.N.1 and fd13:213:N::1, and the namespace side at
/// 10.213.N.2 and fd13:213:N::2.
pub struct Netns {
    pub name: String,
    pub peer: Ipv4Addr,
    pub peer6: Ipv6Addr,
    /// The namespace's end of the veth pair (where the benchmark puts netem).
    pub link: String,
    /// Holds N for this namespace against other processes (see [`claim_subnet`]).
    _subnet: Flock<fs::File>,
}

/// Where the labs of all processes claim their subnets.
const SUBNETS: &str = "/run/throttle-netlab";

/// Claims a subnet number N (1..=250) no other process's lab holds, with a
/// flock on `SUBNETS/N` that the kernel releases when the process ends: a
/// benchmark and the tests running at once would otherwise both route
/// 10.213.1.0/30, each to its own namespace, and one's connections would be
/// refused by the other's.
///
/// The search starts past the subnet this process claimed last: a
/// namespace's veth pair outlives `ip netns del` for a moment, and a
/// subnet claimed again at once would still be routed to it.
fn claim_subnet(serial: u32) -> (u32, Flock<fs::File>) {
    fs::create_dir_all(SUBNETS).expect("creating the labs' subnet directory");
    let start = std::process::id().wrapping_add(serial);
    for n in (0..250).map(|i| start.wrapping_add(i) % 250 + 1) {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(SUBNETS).join(n.to_string()))
            .expect("opening a subnet claim");
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return (n, lock);
        }
    }
    panic!("all 250 lab subnets are claimed (see {SUBNETS})");
}

impl Netns {
    pub fn create() -> Netns {
        sweep_stale();
        // Names are the process's own serial, never reused: interfaces of a
        // deleted namespace may linger for a moment.
        static SERIAL: AtomicU32 = AtomicU32::new(1);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let (n, subnet) = claim_subnet(serial);
        let pid = std::process::id();
        let name = format!("thr-lab-{pid}-{serial}");
        let (host_if, ns_if) = (format!("t{pid}h{serial}"), format!("t{pid}n{serial}"));
        let (host, peer) = (format!("10.213.{n}.1"), Ipv4Addr::new(10, 213, n as u8, 2));
        let (host6, peer6) = (
            Ipv6Addr::new(0xfd13, 0x213, n as u16, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd13, 0x213, n as u16, 0, 0, 0, 0, 2),
        );
        run_ip(&["netns", "add", &name]);
        let netns = Netns {
            name,
            peer,
            peer6,
            link: ns_if.clone(),
            _subnet: subnet,
        };
        run_ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run_ip(&["link", "set", &ns_if, "netns", &netns.name]);
        run_ip(&["addr", "add", &format!("{host}/30"), "dev", &host_if]);
        run_ip(&["link", "set", &host_if, "up"]);
        run_ip(&[
            "-n",
            &netns.name,
            "addr",
            "add",
            &format!("{peer}/30"),
            "dev",
            &ns_if,
        ]);
        // nodad: the addresses work at once, not after duplicate detection.
        run_ip(&[
            "addr",
            "add",
            &format!("{host6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        run_ip(&[
            "-n",
            &netns.name,
            "addr",
            "add",
            &format!("{peer6}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
        run_ip(&["-n", &netns.name, "link", "set", &ns_if, "up"]);
        run_ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    /// Starts the test's HTTP server inside the namespace, at its IPv4 address.
    pub fn serve(&self) -> Server {
        self.serve_at(IpAddr::V4(self.peer))
    }

    /// Starts the test's HTTP server inside the namespace, at `peer`.
    pub fn serve_at(&self, peer: IpAddr) -> Server {
        serve(Some(PathBuf::from("/run/netns").join(&self.name)), peer)
    }
}

/// Starts the test's HTTP server on this namespace's loopback, 127.0.0.1.
pub fn serve_loopback() -> Server {
    serve(None, IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Starts the test's HTTP server at `peer`, inside the namespace at `netns`
/// (a /run/netns path) or in this one.
fn serve(netns: Option<PathBuf>, peer: IpAddr) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&uploads);
    let delivered = Arc::new(Delivered::default());
    let sending = Arc::clone(&delivered);
    thread::spawn(move || {
        // setns moves only this thread; sockets it creates live in the namespace.
        if let Some(path) = netns {
            let ns = fs::File::open(&path).expect("opening the namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the namespace");
        }
        let listener = TcpListener::bind(SocketAddr::new(peer, 0)).expect("binding the server");
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for stream in listener.incoming().flatten() {
            let recorded = Arc::clone(&recorded);
            let sending = Arc::clone(&sending);
            thread::spawn(move || serve_one(stream, &recorded, &sending));
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server did not start");
    Server {
        url: format!("http://{}", SocketAddr::new(peer, port)),
        uploads,
        delivered,
    }
}

/// Deletes the namespaces of labs whose process is gone (killed before its
/// Drop ran); deleting a namespace deletes its veth pair too.
fn sweep_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("thr-lab-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !PathBuf::from("/proc").join(pid).exists() {
            // Servers the lab started inside (iperf3 -s) outlive a killed
            // lab and keep the namespace, and its veth's subnet, alive after
            // its name is deleted.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The server's address and what it recorded of uploads and downloads.
pub struct Server {
    pub url: String,
    uploads: Arc<Mutex<Vec<Samples>>>,
    delivered: Arc<Delivered>,
}

/// The bytes the server's responses have had acknowledged by the client's
/// TCP (`tcpi_bytes_acked`): what a download delivered, to the byte however
/// the client stores it (and one more per closed connection: the FIN takes a
/// sequence number). (A file's allocated blocks, the other way to watch
/// a download, move in 4 KiB steps per connection: ±32 KiB for aria2c's
/// eight, more than a ten-second window at 8 KiB/s holds.)
#[derive(Default)]
struct Delivered(Mutex<Responses>);

#[derive(Default)]
struct Responses {
    /// The sockets of responses whose connection is still open.
    open: Vec<TcpStream>,
    /// What the closed ones had acknowledged in all.
    closed: u64,
}

impl Delivered {
    fn add(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            let mut responses = self.0.lock().unwrap();
            responses.prune();
            responses.open.push(clone);
        }
    }

    fn total(&self) -> u64 {
        let mut responses = self.0.lock().unwrap();
        responses.closed + responses.prune()
    }
}

impl Responses {
    /// Moves closed connections' counts into `closed`, closing the sockets
    /// held for them; returns what the open ones have had acknowledged.
    fn prune(&mut self) -> u64 {
        let (mut closed, mut open_acked) = (0, 0);
        self.open.retain(|stream| {
            let (acked, open) = tcp_info(stream);
            if open {
                open_acked += acked;
            } else {
                closed += acked;
            }
            open
        });
        self.closed += closed;
        open_acked
    }
}

/// A TCP socket's acknowledged bytes, and whether its connection is still
/// open (not in TCP_CLOSE, which it reaches once both ends have closed or
/// the peer reset it).
fn tcp_info(stream: &TcpStream) -> (u64, bool) {
    const TCP_CLOSE: u8 = 7;
    // SAFETY: tcp_info is plain data, valid zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is the stream's, open while it is borrowed; the kernel
    // writes at most `len` bytes into `info` and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return (0, false);
    }
    (info.tcpi_bytes_acked, info.tcpi_state != TCP_CLOSE)
}

impl Server {
    /// Bytes all its responses so far have delivered (see [`Delivered`]).
    pub fn delivered(&self) -> u64 {
        self.delivered.total()
    }

    /// Samples of the most recent upload, once it has completed.
    pub fn last_upload(&self) -> Samples {
        self.uploads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no upload reached the server")
    }
}

/// `GET /BYTES` answers with BYTES zero bytes, or the part a single
/// `Range: bytes=FIRST-[LAST]` asks for (download managers split a file
/// into ranges, one per connection); `GET /BYTES?stall=SECS` holds the
/// last byte back for SECS seconds, a connection that stays open but idle;
/// `PUT` reads the body and records when its bytes arrived. Anything else
/// is a 400.
fn serve_one(mut stream: TcpStream, uploads: &Mutex<Vec<Samples>>, delivered: &Delivered) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some(head) = Head::read(&mut reader) else {
        return;
    };
    let mut words = head.request.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => serve_get(stream, path, head.range.as_deref(), delivered),
        (Some("PUT"), Some(_)) => {
            let samples = Samples::record(&mut reader.take(head.length));
            uploads.lock().unwrap().push(samples);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        _ => {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

/// A request's line and the headers the server reads.
struct Head {
    request: String,
    length: u64,
    range: Option<String>,
}

impl Head {
    fn read(reader: &mut impl BufRead) -> Option<Head> {
        let mut head = Head {
            request: String::new(),
            length: 0,
            range: None,
        };
        reader.read_line(&mut head.request).ok()?;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                return Some(head);
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    head.length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("range") {
                    head.range = Some(value.trim().to_string());
                }
            }
        }
    }
}

/// Answers `GET path` (`/BYTES`, optionally `?stall=SECS`) with its bytes,
/// or the `range` of them asked for.
fn serve_get(mut stream: TcpStream, path: &str, range: Option<&str>, delivered: &Delivered) {
    let (path, stall) = match path.split_once("?stall=") {
        Some((path, secs)) => (path, secs.parse::<f64>().ok()),
        None => (path, Some(0.0)),
    };
    let (Ok(bytes), Some(stall)) = (path.trim_start_matches('/').parse::<u64>(), stall) else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let head = match range.map(|r| byte_range(r, bytes)) {
        None => write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nAccept-Ranges: bytes\r\n\
             Connection: close\r\n\r\n"
        ),
        Some(Some((first, last))) => write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
             Content-Range: bytes {first}-{last}/{bytes}\r\nConnection: close\r\n\r\n",
            last - first + 1
        ),
        Some(None) => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{bytes}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            return;
        }
    };
    if head.is_err() {
        return;
    }
    delivered.add(&stream);
    let chunk = vec![0u8; 64 * 1024];
    let mut left = match range.and_then(|r| byte_range(r, bytes)) {
        Some((first, last)) => last - first + 1,
        None => bytes,
    };
    let held = u64::from(stall > 0.0 && left > 0);
    left -= held;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
    if held > 0 {
        thread::sleep(Duration::from_secs_f64(stall));
        let _ = stream.write_all(&chunk[..1]);
    }
    // The clone `delivered` holds keeps the socket open: close the
    // sending side here, as dropping the last handle would.
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// The inclusive byte range a `bytes=FIRST-[LAST]` header asks for in a
/// body of `total` bytes, or None when it cannot be served.
fn byte_range(header: &str, total: u64) -> Option<(u64, u64)> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => total.checked_sub(1)?,
        last => last.parse::<u64>().ok()?.min(total.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

/// When bytes arrived: (time since the first byte, total bytes so far).
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<(Duration, u64)>, Option<Instant>);

impl Samples {
    /// Reads `source` to its end, noting the time of every read.
    pub fn record(source: &mut impl Read) -> Samples {
        let mut samples = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let mut first = None;
        loop {
            match source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let first = *first.get_or_insert_with(Instant::now);
                    total += n as u64;
                    samples.push((first.elapsed(), total));
                }
            }
        }
        Samples(samples, first)
    }

    /// When the first byte arrived.
    pub fn first_byte(&self) -> Option<Instant> {
        self.1
    }

    /// Bytes per second between two offsets from the first byte.
    pub fn rate_between(&self, from: Duration, to: Duration) -> f64 {
        let at = |t: Duration| {
            self.0
                .iter()
                .take_while(|s| s.0 <= t)
                .last()
                .copied()
                .unwrap_or_default()
        };
        // Under slow timing (an emulated guest) `to` can come before `from`:
        // then nothing arrived between them, rather than a panic.
        let (a, b) = (at(from), at(to));
        b.1.saturating_sub(a.1) as f64 / b.0.saturating_sub(a.0).as_secs_f64().max(1e-6)
    }

    /// Bytes that had arrived `t` after the first byte.
    pub fn bytes_by(&self, t: Duration) -> u64 {
        self.0
            .iter()
            .take_while(|s| s.0 <= t)
            .last()
            .map_or(0, |s| s.1)
    }

    /// Bytes per second in each `step` from the first byte to the last,
    /// at each step's end: what arrived in it over its length. (Dividing by
    /// the time between the samples found instead shows a window without a
    /// sample as 0 and one whose two samples are microseconds apart, as when
    /// aria2c allocates its file, as terabytes per second.)
    pub fn per_step(&self, step: Duration) -> Vec<(f64, f64)> {
        (1..)
            .map(|i| step * i)
            .take_while(|t| *t <= self.duration())
            .map(|t| {
                let bytes = self.bytes_by(t) - self.bytes_by(t - step);
                (t.as_secs_f64(), bytes as f64 / step.as_secs_f64())
            })
            .collect()
    }

    /// From the first byte to the last.
    pub fn duration(&self) -> Duration {
        self.0.last().map_or(Duration::ZERO, |s| s.0)
    }

    pub fn total(&self) -> u64 {
        self.0.last().map_or(0, |s| s.1)
    }

    /// Bytes per second from `skip` after the first byte to the last byte,
    /// leaving out the bucket's initial burst. Asserts the window is at
    /// least `min_window` long.
    pub fn steady_rate(&self, skip: Duration, min_window: Duration) -> f64 {
        let start = self
            .0
            .iter()
            .find(|s| s.0 >= skip)
            .expect("transfer shorter than the skipped start");
        let end = self.0.last().unwrap();
        let window = end.0 - start.0;
        assert!(
            window >= min_window,
            "measured over {window:?}, less than {min_window:?}"
        );
        (end.1 - start.1) as f64 / window.as_secs_f64()
    }

    /// Bytes per second over the whole transfer.
    pub fn overall_rate(&self) -> f64 {
        let end = self.0.last().expect("nothing transferred");
        end.1 as f64 / end.0.as_secs_f64().max(1e-6)
    }
}

/// Runs `cmd`, measuring what it writes to stdout (the download piped out of curl).
pub fn measure_stdout(cmd: &mut Command, timeout: Duration) -> (Samples, Output) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting throttle");
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || Samples::record(&mut stdout));
    let output = wait_with_timeout(child, timeout);
    (reader.join().unwrap(), output)
}

/// Runs `cmd` for `run_for`, then stops it (SIGTERM, then SIGKILL after
/// `grace`), noting every 20 ms how many bytes `file` holds: the progress of
/// a download that writes a file, whether in order (curl) or by ranges
/// (aria2c), as the receiver stored it.
pub fn measure_file_growth(
    cmd: &mut Command,
    file: &Path,
    run_for: Duration,
    grace: Duration,
) -> (Samples, Output) {
    use std::os::unix::fs::MetadataExt as _;
    measure_progress(
        cmd,
        || fs::metadata(file).map_or(0, |m| m.blocks() * 512),
        run_for,
        grace,
    )
}

/// Runs `cmd` for `run_for`, then stops it (SIGTERM, then SIGKILL after
/// `grace`), noting every 20 ms the bytes `progress` counts from when it
/// first moves.
pub fn measure_progress(
    cmd: &mut Command,
    mut progress: impl FnMut() -> u64,
    run_for: Duration,
    grace: Duration,
) -> (Samples, Output) {
    let start = progress();
    // Nothing reads the pipes before the end: a quiet client and a
    // one-line summary stay far below a pipe's capacity.
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the download");
    let mut stop = Stopper::new(run_for, grace);
    let mut samples = Samples::default();
    loop {
        let held = progress().saturating_sub(start);
        if held > samples.total() {
            let first = *samples.1.get_or_insert_with(Instant::now);
            samples.0.push((first.elapsed(), held));
        }
        if child
            .try_wait()
            .expect("waiting for the download")
            .is_some()
        {
            break;
        }
        stop.check(&mut child);
        thread::sleep(Duration::from_millis(20));
    }
    (
        samples,
        child.wait_with_output().expect("collecting output"),
    )
}

/// Stops a child that outlives its time: SIGTERM once `after` has passed
/// (throttle forwards it and still prints its summary), SIGKILL `grace`
/// later.
pub struct Stopper {
    started: Instant,
    after: Duration,
    grace: Duration,
    signalled: Option<Instant>,
}

impl Stopper {
    pub fn new(after: Duration, grace: Duration) -> Stopper {
        Stopper {
            started: Instant::now(),
            after,
            grace,
            signalled: None,
        }
    }

    /// Called while waiting for `child`: signals it when its time is up.
    pub fn check(&mut self, child: &mut Child) {
        match self.signalled {
            None if self.started.elapsed() >= self.after => {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                self.signalled = Some(Instant::now());
            }
            Some(since) if since.elapsed() >= self.grace => {
                let _ = child.kill();
            }
            _ => {}
        }
    }

    /// Whether the child had to be told to stop.
    pub fn stopped(&self) -> bool {
        self.signalled.is_some()
    }
}

/// Waits for `child`, killing it (and failing the test) if it outlives `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    if wait_bounded(&mut child, timeout, Duration::from_millis(20))
        .unwrap()
        .is_none()
    {
        panic!("a command ran longer than {timeout:?}");
    }
    child.wait_with_output().unwrap()
}

/// Waits for `child`, asking every `poll`, for at most `bound`; past it,
/// kills and reaps it and returns None. A load loop's children end this
/// way, so none outlives its caller's bound.
pub fn wait_bounded(
    child: &mut Child,
    bound: Duration,
    poll: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(poll);
    }
}

/// Jain's fairness index of `amounts`, (Σx)² / (n·Σx²): 1 when all are
/// equal, 1/n when one has it all; None for fewer than two or all zero.
pub fn jain(amounts: &[f64]) -> Option<f64> {
    let sum: f64 = amounts.iter().sum();
    let squares: f64 = amounts.iter().map(|x| x * x).sum();
    (amounts.len() > 1 && squares > 0.0).then(|| sum * sum / (amounts.len() as f64 * squares))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_is_one_for_equal_flows_and_one_over_n_for_a_monopoly() {
        assert_eq!(jain(&[3.0, 3.0, 3.0, 3.0]), Some(1.0));
        assert_eq!(jain(&[8.0, 0.0, 0.0, 0.0]), Some(0.25));
        assert_eq!(jain(&[5.0]), None);
        assert_eq!(jain(&[0.0, 0.0]), None);
    }

    #[test]
    fn per_step_rates_divide_by_the_step() {
        let ms = Duration::from_millis;
        // A jump of 1 MB within 10 µs (a file allocated at once), then
        // 100 KB every 200 ms: sampled 100 ms steps.
        let samples = Samples(
            vec![
                (ms(0), 1000),
                (Duration::from_micros(10), 1_001_000),
                (ms(150), 1_101_000),
                (ms(350), 1_201_000),
            ],
            None,
        );
        let rates: Vec<f64> = samples.per_step(ms(100)).iter().map(|r| r.1).collect();
        assert_eq!(rates, [10_000_000.0, 1_000_000.0, 0.0]);
    }

    #[test]
    fn the_server_counts_what_its_responses_delivered_byte_for_byte() {
        let server = serve_loopback();
        let address = server.url.trim_start_matches("http://").to_string();
        let mut received = Vec::new();
        for bytes in [100_000, 1] {
            let mut client = TcpStream::connect(&address).unwrap();
            write!(client, "GET /{bytes} HTTP/1.1\r\n\r\n").unwrap();
            // The server closes after the body: the reply ends at EOF.
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).unwrap();
            assert!(reply.len() > bytes, "a header and {bytes} bytes");
            received.push(reply.len() as u64);
        }
        let expected: u64 = received.iter().sum();
        // Both connections closed: once the server's sockets see it, none
        // is held for them any more and the count stays.
        let held = || server.delivered.0.lock().unwrap().open.len();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Each FIN counts one.
        let fins = received.len() as u64;
        while (server.delivered() != expected + fins || held() > 0) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.delivered(), expected + fins);
        assert_eq!(held(), 0);
    }

    #[test]
    fn serves_single_byte_ranges() {
        assert_eq!(byte_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(byte_range("bytes=2-5", 10), Some((2, 5)));
        assert_eq!(byte_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(byte_range("bytes=10-", 10), None);
        assert_eq!(byte_range("bytes=5-2", 10), None);
        assert_eq!(byte_range("bytes=-5", 10), None);
        assert_eq!(byte_range("bytes=0-1,4-5", 10), None);
        assert_eq!(byte_range("items=0-1", 10), None);
        assert_eq!(byte_range("bytes=0-", 0), None);
    }
}
