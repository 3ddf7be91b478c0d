//! Issue 26 at `cargo test` size: many runs at once, each its own limit,
//! listed together and torn down clean; many connections in one run, each
//! with its part of the limit.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{self, Netns, assert_clean, output_within, throttle, wait_with_timeout};
use crate::netlab::jain;
use crate::rates::tempfile_path::TempFile;

const RUNS: usize = 50;
const LIMIT: u64 = 64 * 1024;
const SECS: u64 = 8;
/// What a default 64 KiB/s bucket starts with (its 16 KiB floor), which
/// arrives at once.
const CREDIT: u64 = 16 * 1024;

fn name(i: usize) -> String {
    format!("t-many-{i}")
}

/// A download of `bytes` under its own `--down 64K` run; curl prints the
/// size, when the first byte came and when the last did.
fn start_download(i: usize, url: &str, bytes: u64) -> Child {
    let mut cmd = throttle();
    cmd.args(["--down", "64K", "--name", &name(i), "--"])
        .args(["curl", "-sS", "--fail", "-o", "/dev/null", "-w"])
        .arg("%{size_download} %{time_starttransfer} %{time_total}")
        .arg(format!("{url}/{bytes}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// The names `throttle list --json` shows of this test's runs.
fn listed(stdout: &[u8]) -> usize {
    let rows: Value = serde_json::from_slice(stdout).unwrap_or(Value::Null);
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("t-many-")))
        .count()
}

#[test]
fn fifty_runs_at_once_each_hold_their_own_limit() {
    let Some(_serial) = harness::start("fifty_runs_at_once_each_hold_their_own_limit") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let bytes = LIMIT * SECS + CREDIT;
    let children: Vec<Child> = (0..RUNS)
        .map(|i| start_download(i, &server.url, bytes))
        .collect();

    // Every run listed, and the listing quick: the benchmark holds 500
    // runs to a second; here the bar is loose, as two cores also carry
    // fifty downloads.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (shown, took) = loop {
        let asked = Instant::now();
        let out = output_within(
            Command::new(harness::THROTTLE).args(["list", "--json"]),
            Duration::from_secs(20),
        );
        let took = asked.elapsed();
        let shown = listed(&out.stdout);
        if shown == RUNS || Instant::now() > deadline {
            break (shown, took);
        }
        thread::sleep(Duration::from_millis(200));
    };
    eprintln!("throttle list showed {shown} runs in {took:?}");
    assert_eq!(shown, RUNS, "throttle list did not show every run");
    assert!(
        took < Duration::from_secs(4),
        "listing {RUNS} runs took {took:?}"
    );

    let mut rates = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = wait_with_timeout(child, Duration::from_secs(4 * SECS + 30));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{}: {stdout} {}",
            name(i),
            harness::stderr(&output)
        );
        let fields: Vec<f64> = stdout
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [size, first, last] = fields[..] else {
            panic!("{}: curl printed {stdout:?}", name(i));
        };
        assert_eq!(size as u64, bytes, "{}", name(i));
        rates.push((size - CREDIT as f64) / (last - first) / LIMIT as f64);
    }
    let worst = rates.iter().copied().fold(f64::NAN, f64::min);
    let best = rates.iter().copied().fold(f64::NAN, f64::max);
    eprintln!("{RUNS} runs at 64 KiB/s each: {worst:.3}–{best:.3} of the limit");
    for (i, ratio) in rates.iter().enumerate() {
        assert!(
            (0.85..=1.10).contains(ratio),
            "{} got {ratio:.3} of its 64 KiB/s (all: {worst:.3}–{best:.3})",
            name(i)
        );
    }
    for i in 0..RUNS {
        assert_clean(&name(i));
    }
}

/// A client of `n` concurrent downloads (Python asyncio, which raises its
/// own fd limit): per connection, when it opened, when its first byte came
/// and the bytes of a measured window after a warm-up.
const MANY: &str = include_str!("../../scripts/many_connections.py");
const CONNECTIONS: usize = 2000;

#[test]
fn two_thousand_connections_share_one_run() {
    let Some(_serial) = harness::start("two_thousand_connections_share_one_run") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let (host, port) = server
        .url
        .trim_start_matches("http://")
        .rsplit_once(':')
        .unwrap();
    const RATE: u64 = 16 << 20;
    const WARM: &str = "4";
    // Each connection's share is about six segments a second; over 8 s one
    // in retransmission backoff moved Jain's index across the bar (0.84-0.96
    // in six runs), over 16 s it read 0.938-0.943, as the bench's 30 s
    // window found for 10 000.
    const WINDOW: f64 = 16.0;
    let out = TempFile::new("connections");
    let mut cmd = throttle();
    cmd.args([
        "--down", "16M", "--name", "t-conns", "--", "python3", "-c", MANY,
    ])
    .args([
        host,
        port,
        &CONNECTIONS.to_string(),
        WARM,
        &WINDOW.to_string(),
    ])
    .arg(&out.0);
    let output = output_within(&mut cmd, Duration::from_secs(60));
    assert!(output.status.success(), "{}", harness::stderr(&output));
    let report: Value =
        serde_json::from_slice(&std::fs::read(&out.0).unwrap()).expect("the client's JSON");
    assert_eq!(
        report["failures"], 0,
        "connections failed: {}",
        report["failed"]
    );
    let window: Vec<f64> = report["window"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    let late: Vec<usize> = (0..CONNECTIONS)
        .filter(|&i| {
            let opened = report["opened"][i].as_f64().unwrap_or(f64::MAX);
            report["first"][i]
                .as_f64()
                .is_none_or(|first| first - opened > 10.0)
        })
        .collect();
    let aggregate = window.iter().sum::<f64>() / WINDOW / RATE as f64;
    let fairness = jain(&window).unwrap_or(0.0);
    eprintln!(
        "{CONNECTIONS} connections at --down 16M: {aggregate:.3} of the limit, Jain's index {fairness:.3}, {} without bytes within 10 s",
        late.len()
    );
    assert!(
        late.is_empty(),
        "connections without bytes within 10 s: {late:?}"
    );
    assert!(
        (0.90..=1.05).contains(&aggregate),
        "aggregate {aggregate:.3} of the limit"
    );
    assert!(fairness >= 0.90, "Jain's index {fairness:.3}");
    assert_clean("t-conns");
}
