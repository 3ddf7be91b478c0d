//! Where `throttle --down 1M -- true` spends its start-up and teardown,
//! step by step, from `strace --seccomp-bpf -f -ttt -T` of a few runs:
//! strace slows the calls it traces, so the steps are shares of a traced
//! run, next to the untraced median the overhead table gives.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

const RUNS: usize = 9;

/// One traced call: its process, when it started, how long it took (0
/// when strace could not say), and its text.
struct Call {
    pid: u32,
    start: f64,
    took: f64,
    text: String,
}

/// The calls of an strace log, an interrupted call joined to the line
/// that resumes it.
fn calls(log: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    for line in log.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(pid), Some(time), Some(text)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), time.parse::<f64>()) else {
            continue;
        };
        let took = text
            .rsplit_once('<')
            .and_then(|(_, t)| t.trim_end_matches('>').parse().ok())
            .unwrap_or(0.0);
        // A resumed call's time is the whole call's.
        if text.starts_with("<...") {
            if let Some(open) = calls.iter_mut().rev().find(|c| c.pid == pid) {
                open.took = took;
            }
            continue;
        }
        calls.push(Call {
            pid,
            start,
            took,
            text: text.to_owned(),
        });
    }
    calls
}

/// The steps of one traced run, in seconds.
fn steps(calls: &[Call]) -> Result<Vec<(&'static str, f64)>> {
    let first = calls.first().context("an empty trace")?;
    let main = first.pid;
    let find = |what: &str, pred: &dyn Fn(&Call) -> bool| {
        calls
            .iter()
            .position(pred)
            .with_context(|| format!("no {what} in the trace"))
    };
    let cgroup = find("cgroup mkdir", &|c| {
        c.text.starts_with("mkdir(") && c.text.contains(") = 0")
    })?;
    let maps = find("LIMITS map", &|c| c.text.contains("map_name=\"LIMITS\""))?;
    let loads: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.text.starts_with("bpf(BPF_PROG_LOAD")
                && (c.text.contains("CGROUP_SKB") || c.text.contains("SOCK_OPS"))
        })
        .collect();
    let links: Vec<&Call> = calls
        .iter()
        .filter(|c| c.text.contains("BPF_LINK_CREATE") && c.text.contains("BPF_CGROUP"))
        .collect();
    let command = find("the command's clone3", &|c| {
        c.text.contains("CLONE_INTO_CGROUP")
    })?;
    let reaped = find("the command's wait4", &|c| {
        c.pid == main && c.start > calls[command].start && c.text.starts_with("wait4(")
    })?;
    let end = find("the exit", &|c| {
        c.pid == main && c.text.starts_with("exit_group(")
    })?;
    if loads.len() != 3 || links.len() != 3 {
        bail!(
            "{} program loads and {} links in the trace",
            loads.len(),
            links.len()
        );
    }
    // The programs load on threads of their own, side by side: the step
    // lasts from the first load's start to the last one's end.
    let verified = loads
        .iter()
        .map(|c| c.start + c.took)
        .fold(f64::MIN, f64::max)
        - loads.iter().map(|c| c.start).fold(f64::MAX, f64::min);
    let attached: f64 = links.iter().map(|c| c.took).sum();
    let loaded_from = calls[maps].start;
    let attached_at = links[2].start + links[2].took;
    let at = |i: usize| calls[i].start;
    Ok(vec![
        (
            "from exec to the run's cgroup (arguments, mount, run directory, lock, watchdog)",
            at(cgroup) - first.start,
        ),
        (
            "aya's feature probes and the object's BTF",
            loaded_from - at(cgroup),
        ),
        (
            "maps, limits and the rest of loading",
            attached_at - loaded_from - verified - attached,
        ),
        ("verifying the three programs, side by side", verified),
        ("attaching them (three bpf_link)", attached),
        (
            "control socket, then starting the command",
            at(command) - attached_at,
        ),
        ("the command (true)", at(reaped) - at(command)),
        (
            "teardown: detach, check, remove the cgroup, unlock",
            calls[end].start - at(reaped),
        ),
    ])
}

/// The report's table: each step's median over the traced runs.
pub fn section(throttle: &Path) -> Result<String> {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let output = Command::new("strace")
            .args([
                // Stops only at the traced calls, which keeps the run
                // close to its untraced time.
                "--seccomp-bpf",
                "-f",
                "-ttt",
                "-T",
                "-e",
                "trace=execve,mkdir,bpf,clone3,wait4,exit_group",
                "-o",
                "/dev/stderr",
            ])
            .arg(throttle)
            .args(["--down", "1M", "--", "true"])
            .output()
            .context("running strace (see scripts/setup.sh)")?;
        let log = String::from_utf8_lossy(&output.stderr);
        runs.push(steps(&calls(&log))?);
    }
    let mut text = String::from(
        "## Start-up by step\n\n`throttle --down 1M -- true` under `strace --seccomp-bpf -f`, \
         the median of nine runs of each step; strace slows every traced \
         call, so these are shares of a traced run (its total below), not \
         the untraced figure of the overhead table.\n\n| step | ms |\n|---|---|\n",
    );
    let mut total = 0.0;
    for (i, (name, _)) in runs[0].iter().enumerate() {
        let mut values: Vec<f64> = runs.iter().map(|r| r[i].1).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2] * 1e3;
        total += median;
        text.push_str(&format!("| {name} | {median:.1} |\n"));
    }
    text.push_str(&format!("| total (of the medians) | {total:.1} |\n"));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of `strace -f -ttt -T` output, cut to the calls the
    /// steps are read from: the loads on three threads at once, one of
    /// them interrupted by another process.
    const TRACE: &str = "\
100 1.000000 mkdir(\"/sys/fs/cgroup/unified/throttle\", 0777) = -1 EEXIST (File exists) <0.000010>
100 1.001000 mkdir(\"/sys/fs/cgroup/unified/throttle/true-100\", 0777) = 0 <0.000050>
101 1.001500 wait4(-1,  <unfinished ...>
100 1.003000 bpf(BPF_MAP_CREATE, {map_type=BPF_MAP_TYPE_ARRAY, map_name=\"LIMITS\"}, 152) = 12 <0.000050>
104 1.004000 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_CGROUP_SKB, insn_cnt=485}, 152) = 22 <0.002000>
105 1.004500 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_CGROUP_SKB, insn_cnt=479} <unfinished ...>
106 1.005000 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_SOCK_OPS, insn_cnt=800}, 152) = 26 <0.003000>
102 1.007000 exit_group(0) = ?
105 1.008800 <... bpf resumed>) = 24 <0.004300>
100 1.009000 bpf(BPF_LINK_CREATE, {link_create={prog_fd=22, attach_type=BPF_CGROUP_INET_INGRESS}}, 152) = 23 <0.000100>
100 1.009200 bpf(BPF_LINK_CREATE, {link_create={prog_fd=24, attach_type=BPF_CGROUP_INET_EGRESS}}, 152) = 25 <0.000100>
100 1.011700 bpf(BPF_LINK_CREATE, {link_create={prog_fd=26, attach_type=BPF_CGROUP_SOCK_OPS}}, 152) = 27 <0.000100>
100 1.012800 clone3({flags=CLONE_INTO_CGROUP, exit_signal=SIGCHLD, cgroup=9}, 88) = 103 <0.000300>
100 1.015800 wait4(103, [{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 103 <0.000010>
100 1.019800 exit_group(0) = ?
";

    #[test]
    fn reads_each_step_from_a_trace() {
        let steps = steps(&calls(TRACE)).unwrap();
        let ms: Vec<f64> = steps.iter().map(|s| (s.1 * 1e6).round() / 1e3).collect();
        // The cgroup at 1.001, the maps from 1.003, the last link done at
        // 1.0118: 8.8 ms, of which 4.8 verifying (from 1.004 to the
        // resumed load's end at 1.0088) and 0.3 attaching; the command
        // from 1.0128 to 1.0158; the exit at 1.0198.
        assert_eq!(ms, [1.0, 2.0, 3.7, 4.8, 0.3, 1.0, 3.0, 4.0]);
    }
}
