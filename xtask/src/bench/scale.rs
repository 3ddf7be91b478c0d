//! `cargo xtask bench --scale`: 10 000 connections in one run and 500
//! runs at once, over the lab's veth, each against the bars of issue 26;
//! `tests/integration/scale.rs` runs both at a fifth and a tenth of the
//! size.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{lab::Lab, measure::output_within, plan::MIB};
use crate::netlab::{jain, wait_bounded};

const CLIENT: &str = include_str!("../../../scripts/many_connections.py");
const SERVER: &str = include_str!("../../../scripts/bulk_server.py");
/// The bulk server's port, in the lab's own namespace.
const BULK_PORT: &str = "8099";
const CONNECTIONS: usize = 10_000;
const CONNECTIONS_RATE: u64 = 16 * MIB;
/// Seconds before the measured window: 10 000 connections open 64 at a
/// time in about three.
const WARM: u64 = 8;
/// Seconds measured. Each connection's share is about a segment a second:
/// over 8 s, Poisson noise alone would put Jain's index of a fair policer
/// near 0.90 (9 segments each); over 30 s near 0.97.
const WINDOW: u64 = 30;
const RUNS: usize = 500;
const RUN_RATE: u64 = 64 * 1024;
/// Long enough for all 500 to be up at once: starting them (each verifies
/// its programs) takes the two cores about 15 s.
const RUN_SECS: u64 = 30;
/// What a default 64 KiB/s bucket starts with, which arrives at once.
const RUN_CREDIT: u64 = 16 * 1024;

/// Ids of the BPF objects of `kind` ("prog" or "map") loaded now, with
/// each one's name and locked memory.
fn objects(kind: &str) -> Result<Vec<(u64, String, u64)>> {
    Ok(crate::bpftool::show(kind)?
        .iter()
        .map(|o| {
            (
                o["id"].as_u64().unwrap_or(0),
                o["name"].as_str().unwrap_or("").to_owned(),
                o["bytes_memlock"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn newest(kind: &str) -> Result<u64> {
    Ok(objects(kind)?.iter().map(|o| o.0).max().unwrap_or(0))
}

/// Locked memory of the maps created since `after`, and how many there are.
fn maps_since(after: u64) -> Result<(u64, usize)> {
    let maps: Vec<_> = objects("map")?
        .into_iter()
        .filter(|m| m.0 > after)
        .collect();
    Ok((maps.iter().map(|m| m.2).sum(), maps.len()))
}

/// Throttle's programs loaded since `after`: none once every run is gone.
fn programs_since(after: u64) -> Result<usize> {
    let programs = objects("prog")?;
    Ok(programs
        .iter()
        .filter(|p| p.0 > after && p.1.starts_with("throttle_"))
        .count())
}

/// Waits up to `bound` for the runs' programs to go: the kernel frees them
/// after their last reference, a little after the runs exit.
fn all_gone(after: u64, bound: Duration) -> Result<usize> {
    let deadline = Instant::now() + bound;
    loop {
        let left = programs_since(after)?;
        if left == 0 || Instant::now() > deadline {
            return Ok(left);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

struct Row {
    what: String,
    measured: String,
    bar: &'static str,
    held: bool,
}

/// The bulk server inside the lab's namespace, stopped when dropped.
struct BulkServer {
    child: Child,
    addr: String,
}

impl BulkServer {
    fn start(lab: &Lab) -> Result<BulkServer> {
        let addr = lab.netns.peer.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.netns.name, "python3", "-c", SERVER])
            .args([addr.as_str(), BULK_PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the bulk server")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the bulk server's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let server = BulkServer { child, addr };
        ensure!(line.trim() == "ready", "the bulk server did not start");
        Ok(server)
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 10 000 downloads in one `--down 16M` run.
fn connections(lab: &Lab, throttle: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let server = BulkServer::start(lab)?;
    let (host, port) = (server.addr.as_str(), BULK_PORT);
    let out = std::env::temp_dir().join(format!("throttle-scale-{}.json", std::process::id()));
    let (maps_before, programs_before) = (newest("map")?, newest("prog")?);
    let mut cmd = Command::new(throttle);
    cmd.args([
        "--down",
        &CONNECTIONS_RATE.to_string(),
        "--name",
        "bench-conns",
    ])
    .args(["--", "python3", "-c", CLIENT, host, port])
    .args([
        CONNECTIONS.to_string(),
        WARM.to_string(),
        WINDOW.to_string(),
    ])
    .arg(&out);
    // The run's maps, read while it runs.
    let sampler = thread::spawn(move || {
        thread::sleep(Duration::from_secs(WARM));
        maps_since(maps_before)
    });
    let (output, stopped) = output_within(&mut cmd, Duration::from_secs(WARM + WINDOW + 60))?;
    let (memlock, maps) = sampler.join().map_err(|_| anyhow::anyhow!("sampler"))??;
    ensure!(!stopped, "the 10 000-connection run did not end, stopped");
    ensure!(
        output.status.success(),
        "the 10 000-connection run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&fs::read(&out).context("the client's report")?)?;
    let _ = fs::remove_file(&out);
    rows.extend(connection_rows(&report)?);
    rows.push(Row {
        what: "… the run's maps (locked memory; socket storage is charged to each socket)".into(),
        measured: format!("{maps} maps, {:.1} KiB", memlock as f64 / 1024.0),
        bar: "",
        held: true,
    });
    let left = all_gone(programs_before, Duration::from_secs(10))?;
    rows.push(Row {
        what: "… programs left after it".into(),
        measured: left.to_string(),
        bar: "0",
        held: left == 0,
    });
    Ok(())
}

/// The bars of the 10 000-connection run, from its client's report: what
/// each connection moved within the window, and when its first byte came.
fn connection_rows(report: &Value) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let window: Vec<f64> = report["window"]
        .as_array()
        .context("no window")?
        .iter()
        .map(|b| b.as_f64().unwrap_or(0.0))
        .collect();
    let late = (0..CONNECTIONS)
        .filter(|&i| {
            let opened = report["opened"][i].as_f64().unwrap_or(f64::MAX);
            report["first"][i]
                .as_f64()
                .is_none_or(|first| first - opened > 10.0)
        })
        .count();
    let aggregate = window.iter().sum::<f64>() / WINDOW as f64 / CONNECTIONS_RATE as f64;
    let fairness = jain(&window).unwrap_or(0.0);
    let failures = report["failures"].as_u64().unwrap_or(0);
    rows.push(Row {
        what: format!("10 000 connections, --down 16M: aggregate over {WINDOW} s"),
        measured: format!("{aggregate:.3} of the limit"),
        bar: "0.95–1.02",
        held: (0.95..=1.02).contains(&aggregate),
    });
    rows.push(Row {
        what: "… Jain's index over connections, of the bytes each moved in them".into(),
        measured: format!("{fairness:.3}"),
        bar: "≥ 0.90",
        held: fairness >= 0.90,
    });
    rows.push(Row {
        what: "… connections without bytes within 10 s, or not opened".into(),
        measured: format!("{late} of {CONNECTIONS}, {failures} failed to open"),
        bar: "0",
        held: late == 0 && failures == 0,
    });
    Ok(rows)
}

fn start_run(throttle: &Path, url: &str, i: usize) -> Result<Child> {
    let bytes = RUN_RATE * RUN_SECS + RUN_CREDIT;
    Command::new(throttle)
        .args([
            "--down",
            &RUN_RATE.to_string(),
            "--name",
            &format!("bench-many-{i}"),
        ])
        .args(["--", "curl", "-sS", "--fail", "-o", "/dev/null", "-w"])
        .arg("%{size_download} %{time_starttransfer} %{time_total}")
        .arg(format!("{url}/{bytes}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a run")
}

/// How many of the benchmark's runs `throttle list --json` shows, and how
/// long it took.
fn list(throttle: &Path) -> Result<(usize, Duration)> {
    let asked = Instant::now();
    let (output, _) = output_within(
        Command::new(throttle).args(["list", "--json"]),
        Duration::from_secs(30),
    )?;
    let took = asked.elapsed();
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    let shown = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("bench-many-"))
        })
        .count();
    Ok((shown, took))
}

/// 500 runs at once, each a download under its own `--down 64K`.
fn runs(lab: &Lab, throttle: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let url = lab.http_url();
    let (maps_before, programs_before) = (newest("map")?, newest("prog")?);
    let children = (0..RUNS)
        .map(|i| start_run(throttle, &url, i))
        .collect::<Result<Vec<_>>>()?;
    // Listed once all are up, the best of three asks, as one may meet the
    // machine busy starting the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listing = list(throttle)?;
    while listing.0 < RUNS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        listing = list(throttle)?;
    }
    for _ in 0..2 {
        let again = list(throttle)?;
        if again.0 >= listing.0 && again.1 < listing.1 {
            listing = again;
        }
    }
    let (memlock, maps) = maps_since(maps_before)?;
    let mut ratios = Vec::new();
    let mut failed = 0;
    for mut child in children {
        let status = wait_bounded(
            &mut child,
            Duration::from_secs(4 * RUN_SECS + 60),
            Duration::from_millis(50),
        )?;
        let mut text = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        }
        let fields: Vec<f64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        match (status, &fields[..]) {
            (Some(s), [size, first, last]) if s.success() && last > first => {
                ratios.push((size - RUN_CREDIT as f64) / (last - first) / RUN_RATE as f64);
            }
            _ => failed += 1,
        }
    }
    let worst = ratios.iter().copied().fold(f64::NAN, f64::min);
    let best = ratios.iter().copied().fold(f64::NAN, f64::max);
    let within = ratios.iter().filter(|r| (0.90..=1.05).contains(*r)).count();
    rows.push(Row {
        what: "500 runs at once, --down 64K each: every run".into(),
        measured: format!("{worst:.3}–{best:.3}; {within} of {RUNS} within, {failed} failed"),
        bar: "0.90–1.05",
        held: within == RUNS,
    });
    rows.push(Row {
        what: "… `throttle list` of all 500 (best of three)".into(),
        measured: format!("{} shown in {:.2} s", listing.0, listing.1.as_secs_f64()),
        bar: "≤ 1 s",
        held: listing.0 == RUNS && listing.1 <= Duration::from_secs(1),
    });
    rows.push(Row {
        what: "… locked memory per run (its maps)".into(),
        measured: format!(
            "{:.1} KiB ({} maps each)",
            memlock as f64 / 1024.0 / RUNS as f64,
            maps / RUNS
        ),
        bar: "",
        held: true,
    });
    let left = all_gone(programs_before, Duration::from_secs(20))?;
    rows.push(Row {
        what: "… programs left after them".into(),
        measured: left.to_string(),
        bar: "0",
        held: left == 0,
    });
    Ok(())
}

/// Runs both cases and returns the report's section. The lab's threaded
/// server, which the 500 runs download from, runs in this process and
/// needs three descriptors per connection: the soft fd limit goes up to
/// the hard one.
pub fn section(lab: &Lab, throttle: &Path) -> Result<String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the fd limit")?;
    let mut rows = Vec::new();
    connections(lab, throttle, &mut rows)?;
    runs(lab, throttle, &mut rows)?;
    let mut text = String::from(
        "## Scale\n\nOver the lab's veth, from one lab HTTP server.\n\n\
         | case | measured | bar | |\n|---|---|---|---|\n",
    );
    for row in &rows {
        let mark = if row.bar.is_empty() {
            ""
        } else if row.held {
            "held"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {mark} |",
            row.what, row.measured, row.bar
        );
    }
    Ok(text)
}
