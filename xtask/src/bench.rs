//! `cargo xtask bench`: throttle, trickle and no limiter side by side, on a
//! veth pair into a network namespace and on loopback, with iperf3 and curl.
//!
//! Every contender runs the same command with the same limit; the figures
//! come from the receiver (iperf3's receiving side, curl's stdout), from the
//! sender's TcpRetransSegs, and from throttle's own drop counters.

use std::{
    cell::RefCell,
    fs,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::resource::{UsageWho, getrusage};
use serde_json::Value;

use crate::{
    netlab::{Netns, Stopper, measure_file_growth, measure_progress},
    plot,
    report::{self, Case, Contender, Dir, Link, Measurement, Traffic},
};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

pub struct Options {
    pub quick: bool,
    /// Whether the full benchmark ends with the round-trip section.
    pub rtt: bool,
    /// Runs per row of the round-trip section.
    pub reps: usize,
    /// Only the cases whose label contains this.
    pub filter: Option<String>,
    /// Only throttle's rows.
    pub throttle_only: bool,
    /// Only the picture of a 1 MiB/s download.
    pub picture: bool,
    /// Only what each program costs per run.
    pub costs: bool,
    /// Only 10 000 connections in one run and 500 runs at once.
    pub scale: bool,
    /// Only the overhead of programs attached without a limit.
    pub overhead: bool,
    /// An older binary whose programs' costs are measured beside these.
    pub before: Option<PathBuf>,
    pub throttle: PathBuf,
    pub out: PathBuf,
}

/// How long each run lasts and how often it repeats.
pub struct Plan {
    pub cases: Vec<Case>,
    pub reps: usize,
    /// Seconds measured, after `warmup` seconds left out of every figure
    /// except the waste (the bucket's initial burst is not the steady state).
    pub secs: u32,
    pub warmup: u32,
    pub overhead_runs: usize,
    pub plot: bool,
}

fn full_plan() -> Plan {
    let mut cases = Vec::new();
    for limit in [64 * KIB, MIB, 16 * MIB, 128 * MIB] {
        for dir in [Dir::Down, Dir::Up] {
            for flows in [1, 8] {
                cases.push(Case::new(Link::Veth, Traffic::Tcp { flows }, dir, limit));
            }
        }
        cases.push(Case::new(
            Link::Veth,
            Traffic::Curl { whole_file: false },
            Dir::Down,
            limit,
        ));
        for dir in [Dir::Down, Dir::Up] {
            cases.push(Case::new(Link::Veth, Traffic::Udp, dir, limit));
        }
    }
    // What users of fast links throttle big parallel transfers to.
    for limit in [512 * MIB, 1024 * MIB] {
        for dir in [Dir::Down, Dir::Up] {
            for flows in [1, 8] {
                cases.push(Case::new(Link::Veth, Traffic::Tcp { flows }, dir, limit));
            }
        }
    }
    for limit in [MIB, 16 * MIB, 128 * MIB] {
        for dir in [Dir::Down, Dir::Up] {
            cases.push(Case::new(
                Link::Loopback,
                Traffic::Tcp { flows: 1 },
                dir,
                limit,
            ));
        }
    }
    Plan {
        cases,
        reps: 3,
        secs: 8,
        warmup: 1,
        // Throughput over veth varies by ±10% from run to run on two CPUs;
        // more interleaved runs keep the median ratio meaningful.
        overhead_runs: 7,
        plot: true,
    }
}

fn quick_plan() -> Plan {
    Plan {
        cases: [Dir::Down, Dir::Up]
            .map(|dir| Case::new(Link::Veth, Traffic::Tcp { flows: 1 }, dir, MIB))
            .to_vec(),
        reps: 1,
        secs: 3,
        warmup: 1,
        overhead_runs: 1,
        plot: false,
    }
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark creates network namespaces and cgroups: run it as root"
    );
    check_tools(&[
        "iperf3", "trickle", "curl", "aria2c", "ping", "bpftool", "strace",
    ])?;
    let throttle = options.throttle.clone();
    let mut plan = if options.quick {
        quick_plan()
    } else {
        full_plan()
    };
    // A partial run, while working on the limiter: its rows alone.
    let partial = options.filter.is_some() || options.throttle_only;
    if let Some(filter) = &options.filter {
        plan.cases.retain(|c| c.label().contains(filter.as_str()));
        ensure!(
            !plan.cases.is_empty(),
            "no case's label contains {filter:?}"
        );
    }
    if partial {
        plan.plot = false;
        plan.overhead_runs = 0;
    }
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let lab = Lab::new()?;
    let bench = Bench {
        lab: &lab,
        throttle: &throttle,
        plan: &plan,
    };

    if options.picture {
        let path = picture(&bench, &options.out)?;
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let mut binaries = vec![("this", throttle.as_path())];
    if let Some(before) = &options.before {
        binaries.push(("before", before.as_path()));
    }
    // A section measured alone is its own report.
    let alone = if options.scale {
        Some((crate::scale::section(&lab, &throttle)?, "scale.md"))
    } else if options.overhead {
        Some((bench.overhead()?.markdown(), "overhead.md"))
    } else if options.costs {
        let costs = crate::costs::section(&lab, &binaries)?;
        let startup = crate::startup::section(&throttle)?;
        Some((format!("{costs}\n{startup}"), "costs.md"))
    } else {
        None
    };
    if let Some((text, file)) = alone {
        let path = options.out.join(file);
        fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        print!("{text}");
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let veth_ping = lab.ping();
    let veth_bars = report::Bars::Veth {
        ping_ms: veth_ping.as_ref().ok().copied(),
    };
    let mut rows = Vec::new();
    // Without a limiter a TCP or curl run does not depend on the limit, so
    // it is measured once per kind of case and shown in each limit's rows.
    let mut unlimited: Vec<(Case, Vec<Result<Measurement, String>>)> = Vec::new();
    for case in &plan.cases {
        for contender in Contender::ALL {
            if options.throttle_only && contender != Contender::Throttle {
                continue;
            }
            let shared = contender == Contender::Bare && case.traffic != Traffic::Udp;
            let cached = unlimited
                .iter()
                .find(|(c, _)| {
                    shared && c.link == case.link && c.traffic == case.traffic && c.dir == case.dir
                })
                .map(|(_, runs)| runs.clone());
            let runs = match cached {
                Some(runs) => runs,
                None => {
                    // A failed run is reported in the table, not fatal: trickle's
                    // select() wrapper sometimes makes iperf3 fail with EINVAL.
                    let runs: Vec<_> = (0..plan.reps)
                        .map(|_| bench.measure(case, contender).map_err(|e| format!("{e:#}")))
                        .collect();
                    if shared {
                        unlimited.push((*case, runs.clone()));
                    }
                    runs
                }
            };
            let mut row = report::Row::new(*case, contender, &runs);
            if case.link == Link::Veth {
                row = row.held_to(veth_bars);
            }
            eprintln!("{}", row.progress_line());
            rows.push(row);
        }
    }
    let overhead = if partial {
        None
    } else {
        Some(bench.overhead()?)
    };
    let mut plot_file = None;
    if plan.plot {
        plot_file = Some(picture(&bench, &options.out)?);
        let contenders = [Contender::Throttle, Contender::Trickle];
        let cases = options.out.join("cases.png");
        plot::cases(&cases, &rows, &contenders)?;
    }
    let mut text = report::markdown(
        &rows,
        overhead.as_ref(),
        plot_file.as_deref(),
        plan.secs,
        plan.warmup,
        plan.reps,
        &veth_ping,
    );
    if !partial && !options.quick {
        let costs = crate::costs::section(&lab, &binaries)?;
        let startup = crate::startup::section(&throttle)?;
        text = format!("{text}\n{costs}\n{startup}");
    }
    let path = options.out.join("report.md");
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    // The full benchmark ends with the round trips users see, measured in
    // the kernel lab; its report becomes a section of this one.
    let text = if options.quick || !options.rtt || partial {
        text
    } else {
        let rtt = crate::rtt::run(
            root,
            &crate::rtt::Options {
                quick: false,
                filter: None,
                throttle_only: false,
                reps: options.reps,
                throttle: throttle.clone(),
                out: options.out.clone(),
            },
        )?;
        let section: String = rtt
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("#{l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let text = format!("{text}\n{section}");
        fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        text
    };
    print!("{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The average round trip of five pings to `addr`, in milliseconds.
fn ping(addr: &str) -> Result<f64> {
    let out = Command::new("ping")
        .args(["-q", "-c", "5", "-i", "0.2", "-W", "2", addr])
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ping_average(&text).with_context(|| format!("ping {addr} gave no round trip: {}", text.trim()))
}

/// The average of ping's "rtt min/avg/max/mdev = 20.1/20.3/20.6/0.1 ms".
fn ping_average(summary: &str) -> Option<f64> {
    let line = summary.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    values.split('/').nth(1)?.trim().parse().ok()
}

/// The intervals (seconds, bytes, omitted) of an iperf3 run of `run_secs`
/// that rate it: those after the warm-up and within its -t seconds, or
/// None where they cover less than all but its last 1.5 s.
///
/// The receiver's end summary also counts what arrived while iperf3's end
/// stalled, and its time, and so do the intervals the client kept
/// reporting through that stall (eight downloads at 8 KiB/s, 80 ms, BBR
/// read 0.18 either way, in two runs). A run whose end hangs
/// (esnet/iperf#819) leaves out its last interval, which runs on until the
/// stop: eight downloads at 8 KiB/s with BBR senders did so with 29 full
/// seconds at the limit, then one of 125 s with nothing in it.
fn measured_intervals(intervals: &[(f64, u64, bool)], run_secs: u32) -> Option<Vec<(f64, u64)>> {
    let within = f64::from(run_secs) + 0.5;
    let measured: Vec<(f64, u64)> = intervals
        .iter()
        .filter(|(_, _, omitted)| !omitted)
        .scan(0.0, |elapsed, &(secs, bytes, _)| {
            *elapsed += secs;
            (*elapsed <= within).then_some((secs, bytes))
        })
        .collect();
    let covered: f64 = measured.iter().map(|i| i.0).sum();
    (covered >= f64::from(run_secs) - 1.5).then_some(measured)
}

/// Fails naming the first of `tools` that cannot be run.
pub fn check_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        // Every one of them answers -V or -h; whether it can start is what counts.
        let started = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        ensure!(started, "{tool} is missing; scripts/setup.sh installs it");
    }
    Ok(())
}

/// The network side: a namespace with iperf3 and HTTP servers, and an
/// iperf3 server on loopback.
pub struct Lab {
    pub netns: Netns,
    veth_iperf: RefCell<Server>,
    loopback_iperf: RefCell<Server>,
    http: crate::netlab::Server,
    /// Where curl and aria2c write their downloads.
    scratch: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

struct Server {
    child: Child,
    addr: Ipv4Addr,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// The round trip over the veth in milliseconds, as ping measures it
    /// now, or why it could not.
    /// The lab HTTP server's `http://ADDR:PORT`.
    pub(crate) fn http_url(&self) -> String {
        self.http.url.clone()
    }

    pub fn ping(&self) -> Result<f64, String> {
        ping(&self.netns.peer.to_string()).map_err(|e| format!("{e:#}"))
    }

    pub fn new() -> Result<Lab> {
        let netns = Netns::new();
        let veth_iperf = iperf_server(Some(&netns.name), netns.peer)?;
        let loopback_iperf = iperf_server(None, Ipv4Addr::LOCALHOST)?;
        let http = netns.serve();
        let scratch =
            std::env::temp_dir().join(format!("throttle-bench-downloads-{}", std::process::id()));
        fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        Ok(Lab {
            netns,
            veth_iperf: RefCell::new(veth_iperf),
            loopback_iperf: RefCell::new(loopback_iperf),
            http,
            scratch,
        })
    }

    fn iperf_server(&self, link: Link) -> &RefCell<Server> {
        match link {
            Link::Veth => &self.veth_iperf,
            Link::Loopback => &self.loopback_iperf,
        }
    }

    /// Where the link's iperf3 server listens.
    pub(crate) fn iperf(&self, link: Link) -> (Ipv4Addr, u16) {
        let server = self.iperf_server(link).borrow();
        (server.addr, server.port)
    }

    /// Replaces the link's iperf3 server with a fresh one.
    pub(crate) fn restart_iperf(&self, link: Link) -> Result<()> {
        let netns = (link == Link::Veth).then_some(self.netns.name.as_str());
        let addr = self.iperf(link).0;
        let mut server = self.iperf_server(link).borrow_mut();
        let old = std::mem::replace(&mut *server, iperf_server(netns, addr)?);
        drop(old);
        Ok(())
    }

    /// TcpRetransSegs of the namespace the sender of `dir` lives in.
    fn retransmitted_segments(&self, link: Link, dir: Dir) -> Result<u64> {
        let snmp = if link == Link::Veth && dir == Dir::Down {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns.name, "cat", "/proc/net/snmp"])
                .output()
                .context("reading the namespace's /proc/net/snmp")?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?
        };
        tcp_counter(&snmp, "RetransSegs")
    }
}

/// A counter from the two "Tcp:" lines of /proc/net/snmp (names, then values).
fn tcp_counter(snmp: &str, name: &str) -> Result<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Tcp {name} in /proc/net/snmp"))
}

fn iperf_server(netns: Option<&str>, addr: Ipv4Addr) -> Result<Server> {
    let port = free_port()?;
    let mut cmd = match netns {
        Some(name) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name, "iperf3"]);
            c
        }
        None => Command::new("iperf3"),
    };
    let child = cmd
        .args(["-s", "-J", "-B", &addr.to_string(), "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting an iperf3 server")?;
    let server = Server { child, addr, port };
    // The server is ready once a client could connect; iperf3 says nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = match netns {
            Some(name) => Command::new("ip")
                .args(["netns", "exec", name, "ss", "-Htln"])
                .output()?,
            None => Command::new("ss").args(["-Htln"]).output()?,
        };
        if String::from_utf8_lossy(&probe.stdout).contains(&format!("{addr}:{port}")) {
            return Ok(server);
        }
        ensure!(Instant::now() < deadline, "iperf3 server did not start");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on right now (the kernel picks it).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

pub struct Bench<'a> {
    pub lab: &'a Lab,
    pub throttle: &'a Path,
    pub plan: &'a Plan,
}

impl Bench<'_> {
    /// The command prefix that puts `contender` in front of a program.
    fn wrap(&self, contender: Contender, limit: Option<u64>) -> Command {
        match (contender, limit) {
            (Contender::Throttle, Some(limit)) => {
                let mut c = Command::new(self.throttle);
                let rate = limit.to_string();
                c.args(["--summary=json", "--down", &rate, "--up", &rate, "--"]);
                c
            }
            (Contender::Throttle, None) => {
                let mut c = Command::new(self.throttle);
                c.args(["--summary=json", "--"]);
                c
            }
            (Contender::Trickle, limit) => {
                // trickle counts in KiB/s.
                let kib = limit.map_or(u64::MAX / KIB, |l| l / KIB).to_string();
                let mut c = Command::new("trickle");
                c.args(["-s", "-d", &kib, "-u", &kib]);
                c
            }
            (Contender::Bare | Contender::Link, _) => {
                // A no-op prefix keeps the command line shape the same.
                let mut c = Command::new("env");
                c.arg("--");
                c
            }
        }
    }

    pub fn measure(&self, case: &Case, contender: Contender) -> Result<Measurement> {
        match case.traffic {
            Traffic::Curl { .. } | Traffic::Aria2 { .. } => self.download(case, contender),
            _ => {
                // Every run gets a server of its own, so that no run
                // depends on what the one before left: a server that served
                // the last run may still be draining it (what eight uploads
                // at 64 KiB/s had queued stays in flight after their client
                // exits) and refuse the next client as busy.
                self.lab.restart_iperf(case.link)?;
                self.iperf(case, contender, Some(case.limit))
            }
        }
    }

    fn iperf(&self, case: &Case, contender: Contender, limit: Option<u64>) -> Result<Measurement> {
        self.iperf_under(case, self.wrap(contender, limit))
    }

    /// iperf3 for `case`, started by the command prefix `cmd`.
    fn iperf_under(&self, case: &Case, mut cmd: Command) -> Result<Measurement> {
        let (addr, port) = self.lab.iperf(case.link);
        let (secs, warmup) = (self.plan.secs.to_string(), self.plan.warmup.to_string());
        cmd.args(["iperf3", "-J", "-c"])
            .arg(addr.to_string())
            .args(["-p", &port.to_string(), "-t", &secs, "-O", &warmup]);
        // An upload's receiver is the server, whose report comes back over
        // the control connection. A download's is the client itself; asking
        // for the server's report there too would send it (tens of KB of
        // JSON for eight flows) down the throttled direction after the run,
        // behind what the eight flows still have queued: at 8 KiB/s that
        // took longer than the run's bound.
        match case.dir {
            Dir::Down => cmd.arg("-R"),
            Dir::Up => cmd.arg("--get-server-output"),
        };
        match case.traffic {
            Traffic::Tcp { flows } if flows > 1 => {
                cmd.args(["-P", &flows.to_string()]);
            }
            Traffic::Udp => {
                let bits = 2 * case.limit * 8;
                cmd.args(["-u", "-l", "1400", "-b", &bits.to_string()]);
            }
            _ => {}
        }
        // iperf3 ends itself after -t seconds, but a run whose control
        // connection starves may never end: every run is bounded.
        let bound = Duration::from_secs(u64::from(4 * (self.plan.secs + self.plan.warmup)) + 30);
        let (run, cost) = self.costed(case, || output_within(&mut cmd, bound))?;
        let (output, stopped) = run?;
        let stopped_error = || anyhow!("still running after {} s, stopped", bound.as_secs());
        let json: Value = match serde_json::from_slice(&output.stdout) {
            Ok(json) => json,
            Err(_) if stopped => return Err(stopped_error()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "iperf3 printed no JSON: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                });
            }
        };
        // A download is measured by the client's own intervals. In reverse
        // mode iperf3's end (the server closes its streams, then the two
        // exchange results) can stall behind what eight flows at 8 KiB/s
        // still have queued, past any bound (esnet/iperf#1527 is one such
        // stall): stopped then, the client's intervals still hold the run.
        let cut_short = stopped && case.dir == Dir::Down;
        if stopped && !cut_short {
            return Err(stopped_error());
        }
        if let Some(error) = json["error"].as_str().filter(|_| !cut_short) {
            bail!("iperf3: {error}");
        }
        ensure!(
            output.status.success() || cut_short,
            "the run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The receiving side's intervals: the client's for a download, the
        // server's (handed back with --get-server-output) for an upload.
        let intervals = match case.dir {
            Dir::Down => &json["intervals"],
            Dir::Up => &json["server_output_json"]["intervals"],
        };
        let intervals: Vec<(f64, u64, bool)> = intervals
            .as_array()
            .context("iperf3 JSON without intervals")?
            .iter()
            .map(|i| {
                let sum = &i["sum"];
                (
                    sum["seconds"].as_f64().unwrap_or(0.0),
                    sum["bytes"].as_u64().unwrap_or(0),
                    sum["omitted"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let Some(measured) = measured_intervals(&intervals, self.plan.secs) else {
            // Where the stall came: before the intervals began (the test
            // started late), or in them (they end in empty seconds).
            let reported: f64 = intervals.iter().map(|i| i.0).sum();
            let empty = intervals.iter().rev().take_while(|i| i.1 == 0).count();
            let total: u64 = intervals.iter().map(|i| i.1).sum();
            let told = format!(
                "iperf3 reported {reported:.1} s of intervals, {total} bytes, the last \
                 {empty} empty, of its {} s and {} s of warm-up; throttle dropped {} bytes",
                self.plan.secs,
                self.plan.warmup,
                throttle_drops(&output.stderr)
            );
            if cut_short {
                return Err(stopped_error().context(told));
            }
            bail!("{told}");
        };
        let (secs, bytes) = measured
            .iter()
            .fold((0.0, 0), |(t, b), i| (t + i.0, b + i.1));
        let achieved = bytes as f64 / secs;
        let per_second: Vec<f64> = measured
            .iter()
            .filter(|(secs, _)| *secs > 0.5)
            .map(|(secs, bytes)| *bytes as f64 / secs)
            .collect();
        let delivered = intervals.iter().map(|i| i.1).sum();
        // Each flow's received bytes: the client's streams for a download,
        // the server's for an upload.
        let streams = match case.dir {
            Dir::Down => json["end"]["streams"].as_array().map(|s| {
                s.iter()
                    .map(|s| &s["receiver"]["bytes"])
                    .collect::<Vec<_>>()
            }),
            Dir::Up => json["server_output_json"]["end"]["streams"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|s| &s["receiver"]["bytes"])
                        .collect::<Vec<_>>()
                }),
        };
        let per_flow: Vec<f64> = streams
            .unwrap_or_default()
            .iter()
            .filter_map(|b| b.as_f64())
            .collect();
        Ok(Measurement {
            achieved,
            delivered,
            dropped: throttle_drops(&output.stderr),
            retransmitted_bytes: cost.retransmitted_bytes,
            per_second,
            cpu: cost.cpu,
            fairness: crate::netlab::jain(&per_flow),
        })
    }

    /// A download by curl or aria2c into a file. Most are stopped after the
    /// warm-up and the measured seconds, the file being larger than the
    /// limit could deliver in that time, so every contender runs for the
    /// same time; a whole-file download is the file the limit delivers in
    /// that time, run to its end (or four times as long).
    fn download(&self, case: &Case, contender: Contender) -> Result<Measurement> {
        let run_for = u64::from(self.plan.secs + self.plan.warmup);
        let whole = case.traffic.whole_file();
        let size = match (contender, whole) {
            (Contender::Bare, true) => 16 * MIB * run_for,
            (Contender::Bare, false) => 64 * MIB * run_for,
            (_, true) => case.limit * run_for,
            (_, false) => (4 * case.limit * run_for).max(16 * MIB),
        };
        if let Traffic::Aria2 { connections, .. } = case.traffic {
            ensure!(
                case.traffic.fits(size),
                "not run: {run_for} s at {} is {size} bytes, less than the {connections} \
                 pieces of 1 MiB (the least aria2c splits a file into) its connections need",
                report::rate(case.limit as f64)
            );
        }
        let stop_after = if whole { 4 * run_for + 30 } else { run_for };
        let url = format!("{}/{size}", self.lab.http.url);
        self.fresh_scratch("download")?;
        let mut cmd = self.wrap(contender, Some(case.limit));
        self.client(&mut cmd, case.traffic, &url, "download");
        // Measured by what the server's TCP saw acknowledged, not by the
        // file's blocks (see netlab's `Delivered`).
        let ((samples, output), cost) = self.costed(case, || {
            measure_progress(
                &mut cmd,
                || self.lab.http.delivered(),
                Duration::from_secs(stop_after),
                Duration::from_secs(10),
            )
        })?;
        ensure!(
            samples.total() > 0,
            "the download delivered nothing: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let warmup = Duration::from_secs(self.plan.warmup.into());
        let end = samples.duration();
        // A timed download that ended early without its whole file (the
        // client gave up, or the limiter broke it) measured nothing: its
        // few bytes over a moment are no rate. Without a limiter the whole
        // file may well take less than the warm-up.
        let complete = samples.total() >= size;
        let brief = end <= warmup + Duration::from_secs(1);
        // A whole file's rate is its size over its time: a client that gave
        // up early would be rated by its first bytes, which the start-up
        // credit lets through fast (aria2c's whole file at 1 MiB/s once read
        // 1.71, which a finished file cannot: the run's credit and debt are
        // two bursts, half a second of the limit).
        ensure!(
            !whole || complete,
            "the download ended after {} of its {size} bytes: {}",
            samples.total(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        ensure!(
            whole || complete || !brief,
            "the download ended {:.1} s after its first byte, before the run's {run_for} s: {}",
            end.as_secs_f64(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let per_second: Vec<f64> = (u64::from(self.plan.warmup)..)
            .map(Duration::from_secs)
            .take_while(|t| *t + Duration::from_secs(1) <= end)
            .map(|t| samples.rate_between(t, t + Duration::from_secs(1)))
            .collect();
        // A whole file's rate is the user's: its size over the time it took.
        let achieved = if whole || (complete && brief) {
            samples.overall_rate()
        } else {
            samples.rate_between(warmup, end)
        };
        Ok(Measurement {
            achieved,
            delivered: samples.total(),
            dropped: throttle_drops(&output.stderr),
            retransmitted_bytes: cost.retransmitted_bytes,
            per_second,
            cpu: cost.cpu,
            fairness: None,
        })
    }

    /// The path of scratch file `name`, with no file there: aria2c resumes
    /// from what it finds, and every run starts afresh.
    fn fresh_scratch(&self, name: &str) -> Result<PathBuf> {
        let file = self.lab.scratch.join(name);
        for stale in [file.clone(), file.with_extension("aria2")] {
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", stale.display()));
                }
                _ => {}
            }
        }
        Ok(file)
    }

    /// Appends the download client of `traffic` (aria2c for aria2 cases,
    /// else curl), fetching `url` into scratch file `name`.
    fn client(&self, cmd: &mut Command, traffic: Traffic, url: &str, name: &str) {
        match traffic {
            Traffic::Aria2 { connections, .. } => {
                let n = connections.to_string();
                // Pieces of 1 MiB (the least aria2c takes) so that even a
                // small file is split over every connection; no disk cache,
                // so the file grows as bytes arrive.
                cmd.args(["aria2c", "-q", "-x", &n, "-s", &n, "-k", "1M"])
                    .args(["--file-allocation=none", "--disk-cache=0"])
                    .args(["--allow-overwrite=true", "--auto-file-renaming=false"])
                    .arg("-d")
                    .arg(&self.lab.scratch)
                    .args(["-o", name, url]);
            }
            _ => {
                cmd.args(["curl", "-sS", "--fail", "-o"])
                    .arg(self.lab.scratch.join(name))
                    .arg(url);
            }
        }
    }

    /// Runs `run` and measures what it cost: CPU seconds of the children it
    /// waited for, and the bytes the case's sender retransmitted meanwhile.
    fn costed<T>(&self, case: &Case, run: impl FnOnce() -> T) -> Result<(T, Cost)> {
        let retransmitted = self.lab.retransmitted_segments(case.link, case.dir)?;
        let cpu = children_cpu();
        let value = run();
        let cost = Cost {
            cpu: children_cpu() - cpu,
            retransmitted_bytes: (self.lab.retransmitted_segments(case.link, case.dir)?
                - retransmitted)
                * case.link.mss(),
        };
        Ok((value, cost))
    }

    /// Programs attached but no limit, and the same with `--exclude` lists
    /// the traffic does not match (so every packet is looked up), against
    /// no throttle at all; and the start-up cost of `throttle -- true`.
    fn overhead(&self) -> Result<report::Overhead> {
        let mut throughput = Vec::new();
        for dir in [Dir::Down, Dir::Up] {
            let case = Case::new(Link::Veth, Traffic::Tcp { flows: 1 }, dir, 0);
            let mut bare = Vec::new();
            let mut attached = Vec::new();
            let mut listed = Vec::new();
            for _ in 0..self.plan.overhead_runs {
                bare.push(self.iperf(&case, Contender::Bare, None)?.achieved);
                attached.push(self.iperf(&case, Contender::Throttle, None)?.achieved);
                listed.push(self.iperf_under(&case, self.with_lists())?.achieved);
            }
            throughput.push(report::Throughput {
                dir,
                bare: report::median(&bare),
                attached: report::median(&attached),
                listed: report::median(&listed),
            });
        }
        let runs = 30;
        let time = |cmd: &mut Command| -> Result<f64> {
            let mut times = Vec::new();
            for _ in 0..runs {
                let started = Instant::now();
                let status = cmd.status().context("running true")?;
                ensure!(status.success(), "{cmd:?} failed");
                times.push(started.elapsed().as_secs_f64());
            }
            Ok(report::median(&times))
        };
        let bare = time(&mut Command::new("true"))?;
        let wrapped = time(Command::new(self.throttle).args(["--down", "1M", "--", "true"]))?;
        Ok(report::Overhead {
            throughput,
            true_bare: bare,
            true_throttled: wrapped,
            true_runs: runs,
        })
    }

    /// throttle without a limit but with `--exclude` lists of
    /// [`LISTED_NETWORKS`] networks that the lab's traffic never matches.
    fn with_lists(&self) -> Command {
        let mut c = Command::new(self.throttle);
        c.arg("--summary=json");
        for i in 0..LISTED_NETWORKS {
            c.args(["--exclude", &format!("192.0.2.{}/32", i * 4)]);
        }
        c.arg("--exclude").arg("local").arg("--");
        c
    }

    /// The rate every 100 ms of a download of [`TRACE_SECS`] at `limit`
    /// by the client of `traffic`, from its start.
    fn trace(&self, contender: Contender, limit: u64, traffic: Traffic) -> Result<Vec<(f64, f64)>> {
        let url = format!("{}/{}", self.lab.http.url, limit * TRACE_SECS);
        let file = self.fresh_scratch("trace")?;
        let mut cmd = self.wrap(contender, Some(limit));
        self.client(&mut cmd, traffic, &url, "trace");
        let (samples, output) = measure_file_growth(
            &mut cmd,
            &file,
            Duration::from_secs(6 * TRACE_SECS + 30),
            Duration::from_secs(10),
        );
        ensure!(
            output.status.success(),
            "the download failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(samples.per_step(Duration::from_millis(100)))
    }
}

/// Draws the README's picture of a 1 MiB/s download, every 100 ms, under
/// throttle and trickle: curl's one connection beside aria2c's eight.
fn picture(bench: &Bench, out: &Path) -> Result<PathBuf> {
    let mut panels = Vec::new();
    for (title, traffic) in [
        ("curl, one connection", Traffic::Curl { whole_file: false }),
        (
            "aria2c, 8 connections",
            Traffic::Aria2 {
                connections: 8,
                whole_file: true,
            },
        ),
    ] {
        let traces = [Contender::Throttle, Contender::Trickle]
            .into_iter()
            .map(|c| Ok((c, bench.trace(c, MIB, traffic)?)))
            .collect::<Result<Vec<_>>>()?;
        panels.push(plot::Traces {
            title: format!("{title}: 1 MiB/s download over veth, every 100 ms"),
            traces,
        });
    }
    let path = out.join("rate-1MiB-download.png");
    plot::rates(&path, MIB, 1.5 * TRACE_SECS as f64, &panels)?;
    Ok(path)
}

/// How long the plotted downloads take at their limit.
const TRACE_SECS: u64 = 10;

/// How many networks the overhead's `--exclude` run lists (besides `local`).
const LISTED_NETWORKS: usize = 16;

/// Runs `cmd` to its end, or stops it (SIGTERM, then SIGKILL 5 s later)
/// after `bound`; returns its output and whether it was stopped.
pub(crate) fn output_within(
    cmd: &mut Command,
    bound: Duration,
) -> Result<(std::process::Output, bool)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    // Read both pipes while waiting: iperf3's JSON outgrows a pipe.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut buf);
        buf
    });
    let mut stop = Stopper::new(bound, Duration::from_secs(5));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        stop.check(&mut child);
        thread::sleep(Duration::from_millis(50));
    };
    let output = std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    Ok((output, stop.stopped()))
}

struct Cost {
    cpu: f64,
    retransmitted_bytes: u64,
}

/// CPU seconds (user + system) of all waited-for children so far.
fn children_cpu() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// Bytes throttle's programs dropped, from its `--summary=json` line.
fn throttle_drops(stderr: &[u8]) -> u64 {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("down").is_some())
        .map_or(0, |v| {
            ["down", "up"]
                .iter()
                .map(|d| v[d]["dropped_bytes"].as_u64().unwrap_or(0))
                .sum()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_whose_end_hangs_is_rated_by_its_full_seconds() {
        let warm_up = [(1.0, 8192, true), (1.0, 8192, true)];
        let seconds = |n, bytes| vec![(1.0, bytes, false); n];
        let hung = [&warm_up[..], &seconds(29, 7700), &[(125.0, 0, false)]].concat();
        let rated = measured_intervals(&hung, 30).expect("29 of 30 s are enough");
        assert_eq!(rated.len(), 29);
        assert!(rated.iter().all(|&(_, bytes)| bytes == 7700));
        // Stalled early, the run is short and not rated.
        let stalled = [&warm_up[..], &seconds(10, 7700), &[(125.0, 0, false)]].concat();
        assert_eq!(measured_intervals(&stalled, 30), None);
        // Intervals past the -t seconds (a slow end) are left out.
        let long = [&warm_up[..], &seconds(33, 7700)].concat();
        assert_eq!(measured_intervals(&long, 30).map(|m| m.len()), Some(30));
    }

    #[test]
    fn reads_the_average_round_trip() {
        let out = "--- 10.213.1.2 ping statistics ---\n\
                   5 packets transmitted, 5 received, 0% packet loss, time 801ms\n\
                   rtt min/avg/max/mdev = 20.112/20.348/20.610/0.180 ms\n";
        assert_eq!(ping_average(out), Some(20.348));
        assert_eq!(ping_average("5 packets transmitted, 0 received"), None);
    }

    #[test]
    fn reads_tcp_counters_by_name() {
        let snmp = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 42 0\n";
        assert_eq!(tcp_counter(snmp, "RetransSegs").unwrap(), 42);
        assert!(tcp_counter(snmp, "Nope").is_err());
    }

    #[test]
    fn finds_the_summary_among_other_stderr() {
        let stderr =
            b"curl: warning\n{\"down\":{\"dropped_bytes\":5},\"up\":{\"dropped_bytes\":7}}\n";
        assert_eq!(throttle_drops(stderr), 12);
        assert_eq!(throttle_drops(b"nothing"), 0);
    }

    #[test]
    fn plans_cover_the_matrix() {
        let full = full_plan();
        assert_eq!(full.cases.len(), 4 * 7 + 2 * 4 + 3 * 2);
        assert!(full.reps >= 3 && full.secs >= 8);
        assert_eq!(quick_plan().cases.len(), 2);
    }
}
