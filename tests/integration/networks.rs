//! `--exclude` and `--only`: traffic with the networks they leave out runs
//! at full speed, counted apart, while the rest holds its limit; both
//! address families, both directions, and changed on a live run.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    harness::{self, MIB, Netns, Samples, assert_clean, assert_ratio, measure_stdout, throttle},
    rates::upload_file,
};

const TIMEOUT: Duration = Duration::from_secs(40);
/// What "full speed" must beat: eight times the limit of the other traffic.
const FREE: f64 = 8.0 * MIB as f64;

/// The `--summary=json` line of a run's stderr.
fn summary(stderr: &str) -> Value {
    harness::summaries(stderr)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no --summary=json line in: {stderr}"))
}

/// The speed curl reported on a line `<label> <bytes/s>` of stderr.
fn speed(stderr: &str, label: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' speed in: {stderr}"))
}

/// Runs `script` under `throttle ARGS --summary=json --name NAME`,
/// measuring what it writes to stdout; returns that and stderr.
fn run_script(args: &[String], name: &str, script: &str) -> (Samples, String) {
    let mut cmd = throttle();
    cmd.args(args)
        .args(["--summary=json", "--name", name, "--", "sh", "-c", script]);
    let (samples, output) = measure_stdout(&mut cmd, TIMEOUT);
    let stderr = harness::stderr(&output);
    assert!(output.status.success(), "{stderr}");
    (samples, stderr)
}

fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// Issue 15: a download from an excluded address runs at full speed while a
/// concurrent one from a limited address (IPv6) holds its limit, and the
/// summary counts the excluded bytes apart.
#[test]
fn an_excluded_network_runs_free_while_the_rest_holds_its_limit() {
    let Some(_serial) =
        harness::start("an_excluded_network_runs_free_while_the_rest_holds_its_limit")
    else {
        return;
    };
    let netns = Netns::create();
    let free = netns.serve_at(IpAddr::V4(netns.peer));
    let limited = netns.serve_at(IpAddr::V6(netns.peer6));
    // The free download starts two seconds into the limited one.
    let script = format!(
        "(sleep 2; curl -sS --fail -o /dev/null -w 'free %{{speed_download}}\\n' {}/{} >&2) & \
         curl -sS --fail {}/{}; wait",
        free.url,
        256 * MIB,
        limited.url,
        8 * MIB
    );
    let args = [
        "--down".into(),
        "1M".into(),
        "--exclude".into(),
        host(IpAddr::V4(netns.peer)),
    ];
    let (samples, stderr) = run_script(&args, "t-excl", &script);
    assert_eq!(samples.total(), 8 * MIB);
    assert_ratio(
        "IPv6 download beside an excluded one",
        samples.steady_rate(Duration::from_secs(1), Duration::from_secs(4)),
        MIB,
        0.90,
        1.05,
    );
    let free_speed = speed(&stderr, "free ");
    eprintln!("excluded download: {:.1} MiB/s", free_speed / MIB as f64);
    assert!(
        free_speed > FREE,
        "the excluded download ran at {free_speed} B/s"
    );
    let summary = summary(&stderr);
    let excluded = summary["excluded"]["down"]["passed_bytes"]
        .as_u64()
        .unwrap();
    let counted = summary["down"]["passed_bytes"].as_u64().unwrap();
    assert!(excluded >= 256 * MIB, "{summary}");
    assert!((8 * MIB..12 * MIB).contains(&counted), "{summary}");
    assert_clean("t-excl");
}

/// Issue 15: `--only` limits the network it names (here IPv4, downloading)
/// and nothing else (an IPv6 upload runs free at the same time).
#[test]
fn only_limits_the_networks_it_names() {
    let Some(_serial) = harness::start("only_limits_the_networks_it_names") else {
        return;
    };
    let netns = Netns::create();
    let limited = netns.serve_at(IpAddr::V4(netns.peer));
    let free = netns.serve_at(IpAddr::V6(netns.peer6));
    let file = upload_file(128 * MIB);
    let script = format!(
        "(sleep 2; curl -sS --fail -o /dev/null -H Expect: -w 'free %{{speed_upload}}\\n' -T {} {}/upload >&2) & \
         curl -sS --fail {}/{}; wait",
        file.0.display(),
        free.url,
        limited.url,
        8 * MIB
    );
    let args = ["--down", "1M", "--up", "1M", "--only"]
        .map(String::from)
        .into_iter()
        .chain([host(IpAddr::V4(netns.peer))])
        .collect::<Vec<_>>();
    let (samples, stderr) = run_script(&args, "t-only", &script);
    assert_ratio(
        "IPv4 download under --only",
        samples.steady_rate(Duration::from_secs(1), Duration::from_secs(4)),
        MIB,
        0.90,
        1.05,
    );
    let free_speed = speed(&stderr, "free ");
    eprintln!(
        "IPv6 upload outside --only: {:.1} MiB/s",
        free_speed / MIB as f64
    );
    assert!(free_speed > FREE, "the upload ran at {free_speed} B/s");
    let summary = summary(&stderr);
    assert!(
        summary["excluded"]["up"]["passed_bytes"].as_u64().unwrap() >= 128 * MIB,
        "{summary}"
    );
    assert_clean("t-only");
}

/// Issue 15: `throttle set` changes the lists of a live run, and the
/// connection already open is let go at once.
#[test]
fn set_changes_the_lists_of_a_live_run() {
    let Some(_serial) = harness::start("set_changes_the_lists_of_a_live_run") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let started = Instant::now();
    let run = throttle()
        .args(["--down", "1M", "--name", "t-lists", "--"])
        .args(["curl", "-sS", "--fail", "-o", "/dev/null"])
        .arg(format!("{}/{}", server.url, 64 * MIB))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    let set = throttle()
        .args(["set", "t-lists", "--exclude"])
        .arg(host(IpAddr::V4(netns.peer)))
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", harness::stderr(&set));
    let said = String::from_utf8_lossy(&set.stdout).into_owned();
    assert!(said.contains("; exclude 10.213."), "{said}");
    let output = harness::wait_with_timeout(run, TIMEOUT);
    assert!(output.status.success(), "{}", harness::stderr(&output));
    // 64 MiB at 1 MiB/s would take a minute; set free after 3 s, it does not.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_clean("t-lists");
}

/// Issue 15: a bad network, or one in both lists, is refused in one line
/// with exit status 2 before anything is created.
#[test]
fn bad_networks_are_refused_in_one_line() {
    for (args, names) in [
        (&["--exclude", "10.0.0.0/33"][..], "'10.0.0.0/33'"),
        (&["--only", "example.org"][..], "'example.org'"),
        (
            &["--exclude", "local", "--only", "127.0.0.0/8"][..],
            "127.0.0.0/8 is in both",
        ),
    ] {
        let output = Command::new(harness::THROTTLE)
            .args(["--down", "1M"])
            .args(args)
            .args(["--name", "t-badnet", "--", "true"])
            .output()
            .unwrap();
        let stderr = harness::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(names), "{stderr}");
        assert!(!harness::run_cgroup("t-badnet").exists());
    }
}

/// Issue 15: lists compose with nesting. Each run's lists decide only for
/// its own limit: an outer run that excludes a network leaves an inner
/// run's limit on it in force, and an inner run's exclusion does not lift
/// the outer run's.
#[test]
fn nested_runs_keep_their_own_lists() {
    let Some(_serial) = harness::start("nested_runs_keep_their_own_lists") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let peer = host(IpAddr::V4(netns.peer));
    let outer_excludes: [&[&str]; 2] = [&["--down", "4M", "--exclude", &peer], &["--down", "1M"]];
    let inner_excludes: [&[&str]; 2] = [&["--down", "1M"], &["--down", "4M", "--exclude", &peer]];
    for ([outer, inner], case) in [
        (outer_excludes, "outer excludes"),
        (inner_excludes, "inner excludes"),
    ] {
        let mut cmd = throttle();
        cmd.args(outer)
            .args(["--name", "t-outer-l", "--", harness::THROTTLE])
            .args(inner)
            .args(["--name", "t-inner-l", "--", "curl", "-sS", "--fail"])
            .arg(format!("{}/{}", server.url, 8 * MIB));
        let (samples, output) = measure_stdout(&mut cmd, TIMEOUT);
        assert!(
            output.status.success(),
            "{case}: {}",
            harness::stderr(&output)
        );
        assert_ratio(
            &format!("nested, {case}"),
            samples.steady_rate(Duration::from_secs(1), Duration::from_secs(4)),
            MIB,
            0.90,
            1.05,
        );
        assert_clean("t-outer-l");
    }
}
