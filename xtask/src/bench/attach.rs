//! `cargo xtask bench --attach`: a download already running, held by
//! `throttle attach --cgroup`, beside the same download started under
//! throttle, at 1 and 16 MiB/s.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use throttle_lab::cgroup::Scratch;

use super::{
    lab::Lab,
    measure::{Bench, throttle_drops},
    plan::MIB,
    report::{self, Case, Contender, Dir, Link, Measurement, Traffic},
};

/// Seconds measured, from a second after the attach.
const SECS: u64 = 8;
const LIMITS: [u64; 2] = [MIB, 16 * MIB];
/// The cgroup the attached download runs in, under the cgroup2 mount.
const CGROUP: &str = "throttle-bench-attach";

/// The section's markdown: per limit, the run's row and the attach's.
pub fn section(bench: &Bench) -> Result<String> {
    let mut out = String::from(
        "## A running download, attached\n\n\
         One curl download over veth, unlimited for a second, then held by \
         `throttle attach --cgroup` (its connection opened before the attach), \
         beside the same download started under `throttle --down`. \
         achieved/limit over the 8 s from a second after the attach (the run: \
         after its warm-up); waste: max(bytes dropped, bytes the sender \
         retransmitted) from the attach on, over bytes delivered in the 8 s. A \
         download running at link speed has its whole window in flight when the \
         limit arrives; that window is dropped and sent again.\n\n\
         | limit | started under throttle | attached while running |\n|---|---:|---:|\n",
    );
    // The attached download first: a run's download, stopped, must not
    // still be delivering while the attach's window is counted.
    for limit in LIMITS {
        let case = Case::new(
            Link::Veth,
            Traffic::Curl { whole_file: false },
            Dir::Down,
            limit,
        );
        let attached = attached(bench.lab, bench.throttle, limit)?;
        let started = bench.measure(&case, Contender::Throttle)?;
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            report::rate(limit as f64),
            cell(&started, limit),
            cell(&attached, limit)
        );
    }
    Ok(out)
}

fn cell(measured: &Measurement, limit: u64) -> String {
    format!(
        "{:.3}, waste {:.1} %",
        measured.achieved / limit as f64,
        measured.waste() * 100.0
    )
}

/// A download started in a cgroup of its own, attached after a second.
fn attached(lab: &Lab, throttle: &Path, limit: u64) -> Result<Measurement> {
    let mut cgroup = Scratch::create(CGROUP).context("making the download's cgroup")?;
    let url = format!("{}/{}", lab.http_url(), 1u64 << 40);
    cgroup
        .spawn(&["curl", "-sS", "-o", "/dev/null", &url])
        .context("starting the download")?;
    thread::sleep(Duration::from_secs(1));
    let retransmitted = lab.retransmitted_segments(Link::Veth, Dir::Down)?;
    let mut attach = Command::new(throttle)
        .args(["attach", "--summary=json", "--down", &limit.to_string()])
        .args(["--name", "bench-attach", "--cgroup"])
        .arg(cgroup.path())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting throttle attach")?;
    thread::sleep(Duration::from_secs(1));
    let before = lab.delivered();
    let started = Instant::now();
    thread::sleep(Duration::from_secs(SECS));
    let delivered = lab.delivered() - before;
    let secs = started.elapsed().as_secs_f64();
    let retransmitted_bytes =
        (lab.retransmitted_segments(Link::Veth, Dir::Down)? - retransmitted) * Link::Veth.mss();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(attach.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let output = wait(&mut attach)?;
    drop(cgroup);
    Ok(Measurement {
        achieved: delivered as f64 / secs,
        delivered,
        dropped: throttle_drops(&output),
        retransmitted_bytes,
        per_second: Vec::new(),
        cpu: 0.0,
        fairness: None,
    })
}

/// The attach's stderr, once it has ended (within 10 s of its SIGTERM).
fn wait(attach: &mut Child) -> Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while attach.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "throttle attach did not end");
        thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = Vec::new();
    if let Some(mut pipe) = attach.stderr.take() {
        std::io::Read::read_to_end(&mut pipe, &mut stderr)?;
    }
    Ok(stderr)
}
