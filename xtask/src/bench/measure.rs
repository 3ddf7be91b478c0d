//! One measured run of a case: the contender's command around iperf3, curl
//! or aria2c, and the figures its receiver, its sender's retransmissions
//! and throttle's own counters give.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::resource::{UsageWho, getrusage};
use serde_json::Value;

use super::{
    lab::Lab,
    plan::{KIB, MIB, Plan},
    plot,
    report::{self, Case, Contender, Dir, Link, Measurement, Traffic},
};
use crate::netlab::{Stopper, measure_file_growth, measure_progress};

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

    pub(super) fn iperf(
        &self,
        case: &Case,
        contender: Contender,
        limit: Option<u64>,
    ) -> Result<Measurement> {
        self.iperf_under(case, self.wrap(contender, limit))
    }

    /// iperf3 for `case`, started by the command prefix `cmd`.
    fn iperf_under(&self, case: &Case, mut cmd: Command) -> Result<Measurement> {
        self.iperf_args(case, &mut cmd);
        // iperf3 ends itself after -t seconds, but a run whose control
        // connection starves may never end: every run is bounded.
        let bound = Duration::from_secs(u64::from(4 * (self.plan.secs + self.plan.warmup)) + 30);
        let (run, cost) = self.costed(case, || output_within(&mut cmd, bound))?;
        let (output, stopped) = run?;
        let stopped_error = || anyhow!("still running after {} s, stopped", bound.as_secs());
        // A download is measured by the client's own intervals. In reverse
        // mode iperf3's end (the server closes its streams, then the two
        // exchange results) can stall behind what eight flows at 8 KiB/s
        // still have queued, past any bound (esnet/iperf#1527 is one such
        // stall): stopped then, the client's intervals still hold the run.
        let cut_short = stopped && case.dir == Dir::Down;
        if stopped && !cut_short {
            return Err(stopped_error());
        }
        let json = iperf_json(&output, cut_short)
            .map_err(|e| if stopped { stopped_error() } else { e })?;
        let intervals = receiver_intervals(&json, case.dir)?;
        let Some(measured) = measured_intervals(&intervals, self.plan.secs) else {
            let told = self.unrated(&intervals, &output.stderr);
            if cut_short {
                return Err(stopped_error().context(told));
            }
            bail!("{told}");
        };
        let (secs, bytes) = measured
            .iter()
            .fold((0.0, 0), |(t, b), i| (t + i.0, b + i.1));
        Ok(Measurement {
            achieved: bytes as f64 / secs,
            delivered: intervals.iter().map(|i| i.1).sum(),
            dropped: throttle_drops(&output.stderr),
            retransmitted_bytes: cost.retransmitted_bytes,
            per_second: measured
                .iter()
                .filter(|(secs, _)| *secs > 0.5)
                .map(|(secs, bytes)| *bytes as f64 / secs)
                .collect(),
            cpu: cost.cpu,
            fairness: crate::netlab::jain(&per_flow(&json, case.dir)),
        })
    }

    /// iperf3's arguments for `case`, after the command prefix in `cmd`.
    fn iperf_args(&self, case: &Case, cmd: &mut Command) {
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
    }

    /// Why a run's intervals rate nothing: where the stall came, before the
    /// intervals began (the test started late) or in them (they end in
    /// empty seconds).
    fn unrated(&self, intervals: &[(f64, u64, bool)], stderr: &[u8]) -> String {
        let reported: f64 = intervals.iter().map(|i| i.0).sum();
        let empty = intervals.iter().rev().take_while(|i| i.1 == 0).count();
        let total: u64 = intervals.iter().map(|i| i.1).sum();
        format!(
            "iperf3 reported {reported:.1} s of intervals, {total} bytes, the last \
             {empty} empty, of its {} s and {} s of warm-up; throttle dropped {} bytes",
            self.plan.secs,
            self.plan.warmup,
            throttle_drops(stderr)
        )
    }

    /// A download by curl or aria2c into a file. Most are stopped after the
    /// warm-up and the measured seconds, the file being larger than the
    /// limit could deliver in that time, so every contender runs for the
    /// same time; a whole-file download is the file the limit delivers in
    /// that time, run to its end (or four times as long).
    fn download(&self, case: &Case, contender: Contender) -> Result<Measurement> {
        let run_for = u64::from(self.plan.secs + self.plan.warmup);
        let whole = case.traffic.whole_file();
        let size = self.download_size(case, contender)?;
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

    /// The file a download fetches: as much as the limit delivers in the
    /// run for a whole file, else more than it could (and more again
    /// without a limiter), so every contender runs for the same time.
    fn download_size(&self, case: &Case, contender: Contender) -> Result<u64> {
        let run_for = u64::from(self.plan.secs + self.plan.warmup);
        let size = match (contender, case.traffic.whole_file()) {
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
        Ok(size)
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
    pub(super) fn overhead(&self) -> Result<report::Overhead> {
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

/// iperf3's JSON report, checked for its own error and the run's status
/// unless the run was `cut_short` (stopped while its end stalled).
fn iperf_json(output: &std::process::Output, cut_short: bool) -> Result<Value> {
    let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = json["error"].as_str().filter(|_| !cut_short) {
        bail!("iperf3: {error}");
    }
    ensure!(
        output.status.success() || cut_short,
        "the run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(json)
}

/// The receiving side's intervals (seconds, bytes, omitted): the client's
/// for a download, the server's (handed back with --get-server-output) for
/// an upload.
fn receiver_intervals(json: &Value, dir: Dir) -> Result<Vec<(f64, u64, bool)>> {
    let intervals = match dir {
        Dir::Down => &json["intervals"],
        Dir::Up => &json["server_output_json"]["intervals"],
    };
    Ok(intervals
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
        .collect())
}

/// Each flow's received bytes: the client's streams for a download, the
/// server's for an upload.
fn per_flow(json: &Value, dir: Dir) -> Vec<f64> {
    let end = match dir {
        Dir::Down => &json["end"],
        Dir::Up => &json["server_output_json"]["end"],
    };
    end["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["receiver"]["bytes"].as_f64())
        .collect()
}

/// Draws docs/benchmark.md's picture of a 1 MiB/s download, every 100 ms, under
/// throttle and trickle: curl's one connection beside aria2c's eight.
pub(super) fn picture(bench: &Bench, out: &Path) -> Result<PathBuf> {
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
pub(super) fn throttle_drops(stderr: &[u8]) -> u64 {
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
    fn finds_the_summary_among_other_stderr() {
        let stderr =
            b"curl: warning\n{\"down\":{\"dropped_bytes\":5},\"up\":{\"dropped_bytes\":7}}\n";
        assert_eq!(throttle_drops(stderr), 12);
        assert_eq!(throttle_drops(b"nothing"), 0);
    }
}
