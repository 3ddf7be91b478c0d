//! `cargo xtask bench --costs`: what each of throttle's programs costs per
//! run, from the kernel's own statistics (`kernel.bpf_stats_enabled`), at
//! 1, 8 and 64 iperf3 flows each way over the lab's veth, and at one flow
//! with no limit (what a run started without one pays); with `--before
//! PATH`, an older binary measured the same way, alternating with this one.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    lab::Lab,
    plan::MIB,
    report::{Dir, Link},
};
use crate::netlab::wait_bounded;

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const PROGRAMS: [&str; 3] = [
    throttle_common::PROG_DOWN,
    throttle_common::PROG_UP,
    throttle_common::PROG_TUNING,
];
const FLOWS: [u32; 3] = [1, 8, 64];
/// High enough that the limit, not the link, sets the pace only at one
/// flow's start; the programs' work per packet is what is measured.
const LIMIT: u64 = 128 * MIB;
const SECS: u64 = 4;
/// Runs per row, alternating binaries; the table shows the median.
const REPS: usize = 3;

/// Turns the kernel's program statistics on for as long as it lives, and
/// back to what they were.
struct StatsOn(String);

impl StatsOn {
    fn new() -> Result<StatsOn> {
        let was = fs::read_to_string(STATS).with_context(|| format!("reading {STATS}"))?;
        fs::write(STATS, "1").with_context(|| format!("writing {STATS}"))?;
        Ok(StatsOn(was))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = fs::write(STATS, self.0.trim());
    }
}

/// The ids and statistics of the loaded programs named as throttle's.
fn programs() -> Result<Vec<(u64, String, u64, u64)>> {
    Ok(crate::bpftool::show("prog")?
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            PROGRAMS.contains(&name).then(|| {
                (
                    p["id"].as_u64().unwrap_or(0),
                    name.to_owned(),
                    p["run_cnt"].as_u64().unwrap_or(0),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect())
}

/// Nanoseconds per run of each program of one throttle run of `flows`
/// iperf3 flows in `dir`, under [`LIMIT`] each way or, if not `limited`,
/// under no limit, read near its end; programs loaded before it started
/// (anyone else's runs) are left out.
fn measure(
    lab: &Lab,
    throttle: &Path,
    dir: Dir,
    flows: u32,
    limited: bool,
) -> Result<BTreeMap<String, f64>> {
    lab.restart_iperf(Link::Veth)?;
    let (addr, port) = lab.iperf(Link::Veth);
    let before = programs()?.iter().map(|p| p.0).max().unwrap_or(0);
    let rate = LIMIT.to_string();
    let mut cmd = Command::new(throttle);
    if limited {
        cmd.args(["--down", &rate, "--up", &rate]);
    }
    cmd.args(["--", "iperf3", "-c"])
        .arg(addr.to_string())
        .args(["-p", &port.to_string(), "-t", &SECS.to_string()])
        .args(["-P", &flows.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if dir == Dir::Down {
        cmd.arg("-R");
    }
    let mut child = cmd.spawn().context("starting throttle")?;
    thread::sleep(Duration::from_secs(SECS - 1));
    let stats = programs();
    let ended = wait_bounded(
        &mut child,
        Duration::from_secs(SECS + 30),
        Duration::from_millis(100),
    )?;
    if ended.is_none() {
        bail!("throttle with {flows} flows still running, stopped");
    }
    let costs: BTreeMap<String, f64> = stats?
        .into_iter()
        .filter(|p| p.0 > before && p.2 > 0)
        .map(|(_, name, runs, ns)| (name, ns as f64 / runs as f64))
        .collect();
    if costs.is_empty() {
        bail!("no program of the run had run (is bpf_stats_enabled honoured?)");
    }
    Ok(costs)
}

/// The median over `runs` of `program`'s nanoseconds per run, as a cell.
fn median(runs: &[BTreeMap<String, f64>], program: &str) -> String {
    let mut values: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.get(program).copied())
        .collect();
    values.sort_by(f64::total_cmp);
    match values.get(values.len() / 2) {
        Some(ns) => format!("{ns:.0}"),
        None => "–".into(),
    }
}

/// The report's section: a row per direction, flow count and binary.
pub fn section(lab: &Lab, binaries: &[(&str, &Path)]) -> Result<String> {
    let _stats = StatsOn::new()?;
    let mut text = String::from(
        "## What each program costs\n\n\
         Nanoseconds per program run, from the kernel's statistics \
         (`kernel.bpf_stats_enabled=1`, which itself adds a little to each), \
         read near the end of a 4 s iperf3 run over veth under `--down 128M \
         --up 128M` (\"no limit\": under none, as a run started without one \
         to be `set` later), the median of three; binaries alternate.\n\n\
         | traffic | binary | throttle_down | throttle_up | throttle_tuning |\n\
         |---|---|---|---|---|\n",
    );
    for dir in [Dir::Down, Dir::Up] {
        for (flows, limited) in FLOWS.map(|f| (f, true)).into_iter().chain([(1, false)]) {
            let mut runs: Vec<Vec<BTreeMap<String, f64>>> = vec![Vec::new(); binaries.len()];
            let mut failures: Vec<Option<String>> = vec![None; binaries.len()];
            for _ in 0..REPS {
                for (i, (_, throttle)) in binaries.iter().enumerate() {
                    match measure(lab, throttle, dir, flows, limited) {
                        Ok(costs) => runs[i].push(costs),
                        Err(e) => failures[i] = Some(format!("{e:#}")),
                    }
                }
            }
            for ((label, _), (runs, failure)) in binaries.iter().zip(runs.iter().zip(&failures)) {
                let row = match failure {
                    Some(e) if runs.is_empty() => format!("failed: {e} | | "),
                    _ => PROGRAMS.map(|p| median(runs, p)).join(" | "),
                };
                let way = match dir {
                    Dir::Down => "down",
                    Dir::Up => "up",
                };
                let limit = if limited { "" } else { ", no limit" };
                let traffic = format!("{way} ×{flows}{limit}");
                eprintln!("costs: {traffic}, {label}: {row}");
                let _ = writeln!(text, "| {traffic} | {label} | {row} |");
            }
        }
    }
    Ok(text)
}
