//! `cargo xtask bench --quick` end to end, so the benchmark cannot rot: it
//! measures the workspace's debug `throttle` (built by the same
//! `cargo test`) against trickle and no limiter, and writes its report.

mod common;

use std::process::Command;

#[test]
fn quick_bench_writes_a_report() {
    let Some(throttle) = common::debug_throttle("quick_bench_writes_a_report", "the benchmark")
    else {
        return;
    };
    let out = tempdir();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "--quick", "--throttle"])
        .arg(&throttle)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running cargo xtask bench --quick");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench --quick failed: {stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for row in [
        "| veth TCP down 1 MiB/s | throttle |",
        "| veth TCP up 1 MiB/s | throttle |",
        "| veth TCP down 1 MiB/s | trickle |",
        "| veth TCP up 1 MiB/s | no limiter |",
        "wall time of `throttle --down 1M -- true`",
    ] {
        assert!(report.contains(row), "report lacks {row:?}:\n{report}");
    }
    // Every throttle row carries a measured ratio, not a failure.
    for line in report
        .lines()
        .filter(|l| l.starts_with("| veth") && l.contains("| throttle |"))
    {
        let ratio: f64 = line.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(ratio > 0.5 && ratio < 1.5, "implausible row: {line}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("throttle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
