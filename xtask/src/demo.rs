//! The demo: a real download from a server in a network namespace, through
//! `throttle --down 1M`, with the achieved rate printed next to the limit.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};

use crate::netlab::{MIB, Netns, measure_stdout};

const LIMIT: &str = "1M";
const LIMIT_BYTES: u64 = MIB;
const BYTES: u64 = 8 * MIB;

pub fn run(root: &Path) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the demo creates a network namespace and cgroups: run it as root"
    );
    let throttle = build_release(root)?;
    let netns = Netns::create();
    let server = netns.serve();
    let url = format!("{}/{BYTES}", server.url);
    println!(
        "server: {} (in network namespace {})",
        server.url, netns.name
    );

    let (free, output) = measure_stdout(
        Command::new("curl").args(["-sS", "--fail", &url]),
        Duration::from_secs(60),
    );
    ensure!(
        output.status.success(),
        "unthrottled curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "without throttle:           {:>8.2} MiB/s",
        free.overall_rate() / MIB as f64
    );

    println!("running: throttle --down {LIMIT} -- curl {url}");
    let mut cmd = Command::new(&throttle);
    cmd.args(["--down", LIMIT, "--", "curl", "-sS", "--fail", &url]);
    let (samples, output) = measure_stdout(&mut cmd, Duration::from_secs(60));
    if !output.status.success() {
        bail!(
            "throttled curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let achieved = samples.steady_rate(Duration::from_secs(1), Duration::from_secs(5));
    println!(
        "limit:                      {:>8.2} MiB/s",
        LIMIT_BYTES as f64 / MIB as f64
    );
    println!(
        "achieved (after 1st second): {:>6.2} MiB/s = {:.3} of the limit, {} MiB in total",
        achieved / MIB as f64,
        achieved / LIMIT_BYTES as f64,
        samples.total() / MIB
    );
    Ok(())
}

pub fn build_release(root: &Path) -> Result<std::path::PathBuf> {
    let status = crate::cargo()
        .args([
            "build",
            "--release",
            "--quiet",
            "--package",
            "throttle",
            "--bin",
            "throttle",
        ])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building throttle failed");
    Ok(root.join("target/release/throttle"))
}
