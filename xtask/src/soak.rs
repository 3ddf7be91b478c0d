//! `cargo xtask soak`: many short runs with faults injected at random
//! moments, many runs at once, and hostile clients against a live run's
//! control socket. After every run it checks that nothing was left behind
//! (process, cgroup, lock or socket file, loaded program) and that nothing
//! the run started outlived its wrapper: once the wrapper is gone its
//! programs' links are closed, so any survivor would run unthrottled.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    os::unix::{net::UnixStream, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    bpftool,
    netlab::{self, MIB, Netns},
    procfs::{self, alive},
};

pub struct Options {
    pub runs: usize,
    pub concurrent: usize,
    pub seed: u64,
    pub throttle: PathBuf,
}

/// How long teardown may lag a run's end before what is left counts as a leak.
const GRACE: Duration = Duration::from_secs(3);
/// How long after its wrapper died a run's process may still be alive.
const SURVIVAL: Duration = Duration::from_secs(1);
/// No single run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(30);
const RUNTIME_DIR: &str = "/run/throttle";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The command exits by itself: `true`.
    None,
    /// kill -9 of the wrapper within its first 20 ms.
    Kill9Early,
    /// kill -9 of the wrapper at a random moment.
    Kill9,
    /// kill -9 of the wrapper and its watchdog together; the sweep cleans up.
    Kill9AndGuard,
    Term,
    Int,
    /// The command kills itself with SIGKILL.
    SelfKill,
    /// The command leaves a daemon that ignores SIGTERM.
    Daemon,
    /// kill -9 of the wrapper while a background grandchild downloads.
    Transfer,
}

const FAULTS: [Fault; 9] = [
    Fault::None,
    Fault::Kill9Early,
    Fault::Kill9,
    Fault::Kill9AndGuard,
    Fault::Term,
    Fault::Int,
    Fault::SelfKill,
    Fault::Daemon,
    Fault::Transfer,
];

impl Fault {
    /// The command and options of a run that meets this fault.
    fn args(self, url: &str) -> Vec<String> {
        let sh = |script: String| vec!["--".into(), "sh".into(), "-c".into(), script];
        let mut args: Vec<String> = vec!["--down".into(), "1M".into()];
        match self {
            Fault::None => args.extend(["--".into(), "true".into()]),
            Fault::Kill9Early | Fault::Kill9 | Fault::Kill9AndGuard | Fault::Term | Fault::Int => {
                args.extend(["--".into(), "sleep".into(), "5".into()]);
            }
            Fault::SelfKill => args.extend(sh("kill -9 $$".into())),
            Fault::Daemon => {
                args.extend(["--kill-after".into(), "200ms".into()]);
                args.extend(sh("(trap '' TERM; exec sleep 30) & exit 3".into()));
            }
            Fault::Transfer => args.extend(sh(format!(
                "curl -s -o /dev/null {url}/{} & sleep 30",
                256 * MIB
            ))),
        }
        args
    }

    /// Whether the wrapper's exit status is what the README documents.
    fn expected(self, status: ExitStatus) -> bool {
        let (code, signal) = (status.code(), status.signal());
        match self {
            Fault::None => code == Some(0),
            Fault::Kill9Early | Fault::Kill9 | Fault::Kill9AndGuard | Fault::Transfer => {
                signal == Some(9)
            }
            // Before the cgroup exists the signal ends the wrapper itself;
            // after, it is forwarded and the command's death mirrored.
            Fault::Term => code == Some(143) || signal == Some(15),
            Fault::Int => code == Some(130) || signal == Some(2),
            Fault::SelfKill => code == Some(137),
            Fault::Daemon => code == Some(3),
        }
    }
}

/// A small xorshift generator: the faults' timing, reproducible by seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

#[derive(Default)]
struct Tally {
    runs: usize,
    wrong_status: Vec<String>,
    survivors: Vec<String>,
    /// Runs whose remains only the sweep removed.
    swept: Vec<String>,
    leaks: BTreeMap<&'static str, Vec<String>>,
    times: Vec<Duration>,
}

impl Tally {
    fn leak(&mut self, kind: &'static str, what: String) {
        self.leaks.entry(kind).or_default().push(what);
    }
}

pub fn run(options: &Options) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the soak needs root (cgroups, BPF, network namespaces); run: sudo cargo xtask soak");
    }
    let env = Env::new(&options.throttle)?;
    let netns = Netns::create();
    let server = netns.serve();
    let mut random = Random(options.seed.max(1));
    let mut by_fault: BTreeMap<Fault, Tally> = BTreeMap::new();
    println!(
        "soak: {} runs, {} at once, seed {}",
        options.runs, options.concurrent, options.seed
    );
    for i in 0..options.runs {
        let fault = FAULTS[random.next() as usize % FAULTS.len()];
        let tally = by_fault.entry(fault).or_default();
        env.one_run(&format!("soak-{i}"), fault, &server.url, &mut random, tally);
    }
    let mut concurrent = Tally::default();
    env.concurrent_runs(options.concurrent, &server.url, &mut concurrent);
    let mut hostile = Tally::default();
    let list_latency = env.hostile_phase(&mut hostile)?;

    let cleanup = env.throttle().arg("cleanup").output()?;
    let mut after = Tally::default();
    env.check_everything_gone(&mut after);
    println!(
        "\n{}",
        table(&by_fault, &concurrent, &hostile, &after, &list_latency)
    );
    let failed: usize = by_fault
        .values()
        .chain([&concurrent, &hostile, &after])
        .map(|t| {
            t.wrong_status.len() + t.survivors.len() + t.leaks.values().map(Vec::len).sum::<usize>()
        })
        .sum();
    if !cleanup.status.success() {
        bail!(
            "the final throttle cleanup failed: {}",
            String::from_utf8_lossy(&cleanup.stderr)
        );
    }
    if failed > 0 {
        for tally in by_fault.values().chain([&concurrent, &hostile, &after]) {
            for line in tally
                .wrong_status
                .iter()
                .chain(&tally.survivors)
                .chain(tally.leaks.values().flatten())
                .take(10)
            {
                eprintln!("  {line}");
            }
        }
        bail!("the soak found {failed} problem(s)");
    }
    Ok(())
}

/// What the soak needs to know about this machine.
struct Env {
    throttle: PathBuf,
    /// Where runs started from here put their cgroups.
    runs_parent: PathBuf,
    /// Throttle programs loaded before the soak began: someone else's.
    baseline: Vec<u64>,
}

impl Env {
    fn new(throttle: &Path) -> Result<Env> {
        let mount = procfs::cgroup_mount().context("cgroup2 is not mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .context("no cgroup v2 entry in /proc/self/cgroup")?;
        let runs_parent = if own == "/" {
            mount.join("throttle")
        } else {
            mount.join(own.trim_start_matches('/'))
        };
        Ok(Env {
            throttle: throttle.to_path_buf(),
            runs_parent,
            baseline: bpftool::throttle_programs()?,
        })
    }

    fn throttle(&self) -> Command {
        Command::new(&self.throttle)
    }

    fn spawn(&self, name: &str, args: &[String]) -> Result<Child> {
        Ok(self
            .throttle()
            .args(["--name", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    fn cgroup(&self, name: &str) -> PathBuf {
        self.runs_parent.join(name)
    }

    /// Every pid in the run's cgroup and below.
    fn pids(&self, name: &str) -> Vec<i32> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.cgroup(name)];
        while let Some(dir) = dirs.pop() {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.parse::<i32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
        }
        pids
    }

    fn one_run(&self, name: &str, fault: Fault, url: &str, random: &mut Random, tally: &mut Tally) {
        tally.runs += 1;
        let started = Instant::now();
        let Ok(mut child) = self.spawn(name, &fault.args(url)) else {
            tally
                .wrong_status
                .push(format!("{name}: throttle did not start"));
            return;
        };
        let wrapper = Pid::from_raw(child.id() as i32);
        let mut seen = Vec::new();
        match fault {
            Fault::None | Fault::SelfKill | Fault::Daemon => {}
            Fault::Kill9Early => {
                thread::sleep(random.millis(0, 20));
                let _ = kill(wrapper, Signal::SIGKILL);
            }
            Fault::Kill9 | Fault::Term | Fault::Int => {
                thread::sleep(random.millis(0, 300));
                seen = self.pids(name);
                let signal = match fault {
                    Fault::Term => Signal::SIGTERM,
                    Fault::Int => Signal::SIGINT,
                    _ => Signal::SIGKILL,
                };
                let _ = kill(wrapper, signal);
            }
            Fault::Kill9AndGuard | Fault::Transfer => {
                let wanted = if fault == Fault::Transfer { 3 } else { 1 };
                self.wait_for_processes(name, wanted);
                thread::sleep(random.millis(50, 400));
                seen = self.pids(name);
                if fault == Fault::Kill9AndGuard
                    && let Some(guard) = guard_of(child.id())
                {
                    let _ = kill(Pid::from_raw(guard), Signal::SIGKILL);
                }
                let _ = kill(wrapper, Signal::SIGKILL);
            }
        }
        let status = wait_limited(&mut child, RUN_LIMIT);
        let ended = Instant::now();
        tally.times.push(ended - started);
        match status {
            Some(status) if fault.expected(status) => {}
            other => tally
                .wrong_status
                .push(format!("{name} ({fault:?}): exit status {other:?}")),
        }
        // With the watchdog gone too, the design relies on the sweep, which
        // check_gone runs for what it finds left.
        if fault != Fault::Kill9AndGuard {
            let survivors = || {
                seen.iter()
                    .copied()
                    .filter(|p| alive(*p))
                    .collect::<Vec<_>>()
            };
            while !survivors().is_empty() && ended.elapsed() < SURVIVAL {
                thread::sleep(Duration::from_millis(5));
            }
            let alive = survivors();
            if !alive.is_empty() {
                tally.survivors.push(format!(
                    "{name} ({fault:?}): {alive:?} alive {SURVIVAL:?} after the wrapper ended"
                ));
            }
        }
        self.check_gone_after(name, &seen, tally, fault == Fault::Kill9AndGuard);
    }

    fn wait_for_processes(&self, name: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pids(name).len() < count && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits out teardown's lag, then counts what is left of run `name`. A
    /// wrapper killed before its watchdog existed leaves its files to the
    /// next run's sweep, as designed: what `throttle cleanup` then removes
    /// is counted as left for the sweep, and only what survives it as a leak.
    fn check_gone(&self, name: &str, pids: &[i32], tally: &mut Tally) {
        self.check_gone_after(name, pids, tally, false);
    }

    /// [`Env::check_gone`], but with `sweep_first` the sweep runs at once:
    /// for runs whose watchdog was killed too.
    fn check_gone_after(&self, name: &str, pids: &[i32], tally: &mut Tally, sweep_first: bool) {
        let files = [".lock", ".sock"].map(|s| Path::new(RUNTIME_DIR).join(format!("{name}{s}")));
        let left = || {
            (
                pids.iter()
                    .copied()
                    .filter(|p| alive(*p))
                    .collect::<Vec<_>>(),
                self.cgroup(name).exists(),
                files.iter().filter(|f| f.exists()).count(),
            )
        };
        let settled = || {
            let deadline = Instant::now() + GRACE;
            while left() != (Vec::new(), false, 0) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            left() == (Vec::new(), false, 0)
        };
        if sweep_first || !settled() {
            tally.swept.push(name.to_string());
            let _ = self.throttle().arg("cleanup").output();
            settled();
        }
        let (processes, cgroup, files) = left();
        if !processes.is_empty() {
            tally.leak("process", format!("{name}: {processes:?}"));
        }
        if cgroup {
            tally.leak("cgroup", format!("{name}: {}", self.cgroup(name).display()));
        }
        if files > 0 {
            tally.leak("file", format!("{name}: {files} file(s) in {RUNTIME_DIR}"));
        }
        if let Some(ids) = self.leaked_programs() {
            tally.leak("program", format!("after {name}: {ids:?}"));
        }
    }

    /// Throttle programs loaded since the soak began that outlive [`GRACE`].
    fn leaked_programs(&self) -> Option<Vec<u64>> {
        let deadline = Instant::now() + GRACE;
        loop {
            let extra: Vec<u64> = bpftool::throttle_programs()
                .unwrap_or_default()
                .into_iter()
                .filter(|id| !self.baseline.contains(id))
                .collect();
            if extra.is_empty() {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(extra);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn concurrent_runs(&self, count: usize, url: &str, tally: &mut Tally) {
        let args: Vec<String> = ["--down", "4M", "--", "curl", "-s", "-o", "/dev/null"]
            .into_iter()
            .map(String::from)
            .chain([format!("{url}/{}", 256 << 10)])
            .collect();
        let started = Instant::now();
        let children: Vec<(String, Option<Child>)> = (0..count)
            .map(|i| {
                let name = format!("soak-many-{i}");
                let child = self.spawn(&name, &args).ok();
                (name, child)
            })
            .collect();
        for (name, child) in children {
            tally.runs += 1;
            let status = child.and_then(|mut c| wait_limited(&mut c, RUN_LIMIT));
            if status.is_none_or(|s| !s.success()) {
                tally
                    .wrong_status
                    .push(format!("{name} (concurrent): exit status {status:?}"));
            }
            self.check_gone(&name, &[], tally);
        }
        tally.times.push(started.elapsed());
    }

    /// A live run served to stats and set loops, garbage, half-closes and
    /// slow clients for a few seconds, while `throttle list` is timed.
    fn hostile_phase(&self, tally: &mut Tally) -> Result<Vec<Duration>> {
        let name = "soak-hostile";
        let mut run = self.spawn(
            name,
            &[
                "--down".into(),
                "1M".into(),
                "--".into(),
                "sleep".into(),
                "12".into(),
            ],
        )?;
        let socket = Path::new(RUNTIME_DIR).join(format!("{name}.sock"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let until = Instant::now() + Duration::from_secs(8);
        let clients: Vec<thread::JoinHandle<()>> = (0..8)
            .map(|kind| {
                let socket = socket.clone();
                thread::spawn(move || hostile_client(kind, &socket, until))
            })
            .collect();
        let mut latencies = Vec::new();
        while Instant::now() < until {
            let started = Instant::now();
            let output = self.throttle().args(["list", "--json"]).output()?;
            latencies.push(started.elapsed());
            if !String::from_utf8_lossy(&output.stdout).contains(name) {
                tally.wrong_status.push(format!(
                    "throttle list under hostile clients left out {name}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        for client in clients {
            let _ = client.join();
        }
        tally.runs += 1;
        let status = wait_limited(&mut run, RUN_LIMIT);
        if status.is_none_or(|s| !s.success()) {
            tally
                .wrong_status
                .push(format!("{name}: exit status {status:?}"));
        }
        self.check_gone(name, &[], tally);
        latencies.sort();
        Ok(latencies)
    }

    /// After the final cleanup: no run of the soak left anywhere.
    fn check_everything_gone(&self, tally: &mut Tally) {
        let prefixed = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("soak-"))
                .collect()
        };
        for left in prefixed(&self.runs_parent) {
            tally.leak("cgroup", format!("after cleanup: {left}"));
        }
        for left in prefixed(Path::new(RUNTIME_DIR)) {
            tally.leak("file", format!("after cleanup: {left}"));
        }
        if let Some(ids) = self.leaked_programs() {
            tally.leak("program", format!("after cleanup: {ids:?}"));
        }
    }
}

/// One hostile client, by kind, until `until`.
fn hostile_client(kind: usize, socket: &Path, until: Instant) {
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let Ok(mut stream) = UnixStream::connect(socket) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = [0u8; 512];
        match kind {
            0 | 1 => {
                let _ = stream.write_all(b"{\"version\":1,\"command\":\"stats\"}\n");
                let _ = stream.read(&mut reply);
            }
            2 => {
                let rate = if i.is_multiple_of(2) { "1M" } else { "2M" };
                let line = format!("{{\"version\":1,\"command\":\"set\",\"down\":\"{rate}\"}}\n");
                let _ = stream.write_all(line.as_bytes());
                let _ = stream.read(&mut reply);
            }
            3 => {
                let garbage: Vec<u8> = (0..(i % 300)).map(|b| (b * 37 + i) as u8).collect();
                let _ = stream.write_all(&garbage);
            }
            4 => {
                let _ = stream.write_all(b"{\"version\":1,");
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.read(&mut reply);
            }
            _ => {
                // Slow-loris: a byte every 200 ms, never a line end.
                while Instant::now() < until && stream.write_all(b" ").is_ok() {
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

fn wait_limited(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    netlab::wait_bounded(child, limit, Duration::from_millis(2)).unwrap_or_else(|_| {
        let _ = child.kill();
        let _ = child.wait();
        None
    })
}

/// The watchdog of `wrapper`, waiting up to 2 s for it to be forked.
fn guard_of(wrapper: u32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let guard = procfs::guard_of(wrapper);
        if guard.is_some() || Instant::now() >= deadline {
            return guard;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn table(
    by_fault: &BTreeMap<Fault, Tally>,
    concurrent: &Tally,
    hostile: &Tally,
    after: &Tally,
    list_latency: &[Duration],
) -> String {
    let mut out = String::from(
        "| phase | runs | wrong status | unthrottled survivors | left for the sweep | leaks after it (process/cgroup/file/program) | median | p99 |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut row = |label: &str, t: &Tally| {
        let leaks = ["process", "cgroup", "file", "program"]
            .map(|k| t.leaks.get(k).map_or(0, Vec::len).to_string())
            .join("/");
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {leaks} | {:.0} ms | {:.0} ms |\n",
            t.runs,
            t.wrong_status.len(),
            t.survivors.len(),
            t.swept.len(),
            percentile(&t.times, 0.5).as_secs_f64() * 1e3,
            percentile(&t.times, 0.99).as_secs_f64() * 1e3,
        ));
    };
    let mut total = Tally::default();
    for (fault, tally) in by_fault {
        row(&format!("{fault:?}"), tally);
        total.runs += tally.runs;
        total.times.extend(&tally.times);
        total
            .wrong_status
            .extend(tally.wrong_status.iter().cloned());
        total.survivors.extend(tally.survivors.iter().cloned());
        total.swept.extend(tally.swept.iter().cloned());
        for (kind, list) in &tally.leaks {
            total
                .leaks
                .entry(kind)
                .or_default()
                .extend(list.iter().cloned());
        }
    }
    row("**all faults**", &total);
    row("concurrent (whole phase)", concurrent);
    row("hostile clients", hostile);
    row("after final cleanup", after);
    out.push_str(&format!(
        "\n`throttle list` under hostile clients: {} calls, median {:.0} ms, max {:.0} ms\n",
        list_latency.len(),
        percentile(list_latency, 0.5).as_secs_f64() * 1e3,
        list_latency
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
    ));
    out
}
