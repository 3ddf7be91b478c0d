//! Exit statuses, signals, and cleanup on every way a run can end.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    harness::{
        self, Netns, THROTTLE, assert_clean, output_within, run_cgroup, start, stderr, throttle,
        wait_with_timeout,
    },
    procfs::{alive, guard_of},
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn status_of(name: &str, command: &[&str]) -> (Option<i32>, String) {
    status_with(name, &[], command)
}

fn status_with(name: &str, options: &[&str], command: &[&str]) -> (Option<i32>, String) {
    let child = throttle()
        .args(options)
        .args(["--name", name, "--"])
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_with_timeout(child, TIMEOUT);
    assert_clean(name);
    (output.status.code(), harness::stderr(&output))
}

#[test]
fn exit_statuses_mirror_the_command() {
    let Some(_serial) = harness::start("exit_statuses_mirror_the_command") else {
        return;
    };
    assert_eq!(status_of("t-exit0", &["true"]).0, Some(0));
    assert_eq!(status_of("t-exit3", &["sh", "-c", "exit 3"]).0, Some(3));
    let (code, stderr) = status_of("t-exit127", &["/nonexistent/command"]);
    assert_eq!(code, Some(127));
    assert!(
        stderr.contains("/nonexistent/command: command not found"),
        "{stderr}"
    );
    let not_executable =
        std::env::temp_dir().join(format!("throttle-test-noexec-{}", std::process::id()));
    std::fs::write(&not_executable, "echo should not run\n").unwrap();
    let (code, stderr) = status_of("t-exit126", &[not_executable.to_str().unwrap()]);
    let _ = std::fs::remove_file(&not_executable);
    assert_eq!(code, Some(126));
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(
        status_of("t-exit143", &["sh", "-c", "kill -TERM $$"]).0,
        Some(128 + 15)
    );
}

#[test]
fn the_command_runs_inside_the_run_cgroup_from_its_first_instruction() {
    let Some(_serial) = harness::start("the_command_runs_inside_the_run_cgroup") else {
        return;
    };
    let output = throttle()
        .args(["--name", "t-where", "--", "cat", "/proc/self/cgroup"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().any(|l| l == "0::/throttle/t-where"), "{text}");
    assert_clean("t-where");
}

#[test]
fn bad_input_is_one_line_with_a_distinct_status_and_leaves_nothing() {
    let Some(_serial) = harness::start("bad_input_is_one_line") else {
        return;
    };
    for (args, needle) in [
        (&["--down", "0", "--", "true"][..], "'0'"),
        (&["--up", "5X", "--", "true"][..], "'5X'"),
        (&["--down", "", "--", "true"][..], "''"),
        (&["--burst", "lots", "--", "true"][..], "'lots'"),
        (&["--name", "a/b", "--", "true"][..], "'a/b'"),
        (&["--kill-after", "soon", "--", "true"][..], "'soon'"),
        (&["--down", "1M"][..], "COMMAND"),
    ] {
        let output = throttle().args(args).output().unwrap();
        let stderr = harness::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(harness::programs_since_start().is_empty());
}

#[test]
fn sigterm_to_the_wrapper_reaches_the_command() {
    let Some(_serial) = harness::start("sigterm_to_the_wrapper_reaches_the_command") else {
        return;
    };
    let child = throttle()
        .args([
            "--name",
            "t-term",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; sleep 30 & wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_cgroup_processes("t-term", 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let output = wait_with_timeout(child, TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("got-term"),
        "the command's handler did not run: {stdout}"
    );
    assert_eq!(output.status.code(), Some(7));
    assert_clean("t-term");
}

#[test]
fn leftovers_are_terminated_then_killed_or_waited_for() {
    let Some(_serial) = harness::start("leftovers_are_terminated_then_killed_or_waited_for") else {
        return;
    };
    // A leftover that ignores SIGTERM is killed after --kill-after.
    let started = Instant::now();
    let (code, _) = status_with(
        "t-leftover",
        &["--kill-after", "300ms"],
        &["sh", "-c", "(trap '' TERM; sleep 30) & exit 0"],
    );
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));

    // --wait-all waits for the leftover to finish on its own.
    let started = Instant::now();
    let output = throttle()
        .args([
            "--wait-all",
            "--name",
            "t-waitall",
            "--",
            "sh",
            "-c",
            "(sleep 1; echo late) & exit 0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("late"));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_clean("t-waitall");
}

fn wait_for_cgroup_processes(name: &str, count: usize) {
    let procs = run_cgroup(name).join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = std::fs::read_to_string(&procs)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {count} processes never appeared in its cgroup"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    std::fs::read_to_string(run_cgroup(name).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Starts a throttled download that runs through a shell, so the
/// transferring process is a grandchild without a parent-death signal.
fn start_download(name: &str, url: &str) -> std::process::Child {
    let child = throttle()
        .args(["--down", "1M", "--name", name, "--", "sh", "-c"])
        .arg(format!(
            "curl -sS -o /dev/null {url}/{}; echo finished",
            64 * harness::MIB
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_cgroup_processes(name, 2);
    thread::sleep(Duration::from_millis(500));
    child
}

fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "processes of a killed run survived: {pids:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_of_the_wrapper_leaves_nothing_running_or_attached() {
    let Some(_serial) = harness::start("kill_9_of_the_wrapper") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let mut child = start_download("t-kill9", &server.url);
    let pids = pids_in("t-kill9");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&pids);
    let deadline = Instant::now() + Duration::from_secs(10);
    while run_cgroup("t-kill9").exists() {
        assert!(
            Instant::now() < deadline,
            "the watchdog did not remove the cgroup"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_clean("t-kill9");
}

#[test]
fn the_next_run_sweeps_what_a_killed_run_and_watchdog_left() {
    let Some(_serial) = harness::start("the_next_run_sweeps") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let mut child = start_download("t-stale", &server.url);
    let guard = guard_of(child.id()).expect("the run has no watchdog");
    kill(Pid::from_raw(guard), Signal::SIGKILL).unwrap();
    let pids = pids_in("t-stale");
    child.kill().unwrap();
    child.wait().unwrap();
    // The shell died with the wrapper (parent-death signal); curl, its child,
    // is still in the cgroup, now without programs: the next run must end it.
    thread::sleep(Duration::from_millis(200));
    assert!(run_cgroup("t-stale").exists());
    assert!(
        harness::programs_since_start().is_empty(),
        "the links did not die with the wrapper"
    );
    let status = Command::new(harness::THROTTLE)
        .args(["--name", "t-next", "--", "true"])
        .status()
        .unwrap();
    assert!(status.success());
    wait_gone(&pids);
    assert_clean("t-stale");
    assert_clean("t-next");
}

/// Waits until `pid` has exec'd `program` and sleeps in it: before exec, a
/// child still holds its parent's close-on-exec descriptors, and just after
/// it the dynamic loader briefly opens the libraries it maps (seen on 6.1
/// under qemu as a vanishing "4 -> ").
fn wait_for_exec(pid: u32, program: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the last ')' (the name may contain one).
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        comm.trim() == program && state == Some(Some('S'))
    };
    while !settled() {
        assert!(Instant::now() < deadline, "{pid} never slept in {program}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn descriptors_of(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

/// Issue 10, defect 1: the command starts with exactly the descriptors the
/// caller gave throttle (here also a 5), as the same command started
/// without throttle does, and none of throttle's.
#[test]
fn the_command_inherits_only_the_callers_descriptors() {
    let Some(_serial) = harness::start("the_command_inherits_only_the_callers_descriptors") else {
        return;
    };
    let start = |wrapper: &str| {
        Command::new("sh")
            .args(["-c", &format!("exec 5</dev/null; exec {wrapper} sleep 10")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut bare = start("");
    wait_for_exec(bare.id(), "sleep");
    let expected = descriptors_of(bare.id());
    bare.kill().unwrap();
    bare.wait().unwrap();
    assert!(
        expected.iter().any(|fd| fd.starts_with("5 ")),
        "{expected:?}"
    );
    let run = harness::RunGuard(Some(start(&format!(
        "{} --name t-fds --",
        harness::THROTTLE
    ))));
    wait_for_cgroup_processes("t-fds", 1);
    let command = pids_in("t-fds")[0] as u32;
    wait_for_exec(command, "sleep");
    assert_eq!(descriptors_of(command), expected);
    run.stop();
    assert_clean("t-fds");
}

/// Issue 10, defect 1: after kill -9 of the wrapper, a grandchild in the
/// background (which no parent-death signal reaches) is dead within a
/// second, and the run's cgroup, files and programs are gone.
#[test]
fn kill_9_of_the_wrapper_ends_a_background_grandchild_at_once() {
    let Some(_serial) = harness::start("kill_9_of_the_wrapper_ends_a_background_grandchild") else {
        return;
    };
    let netns = Netns::create();
    let server = netns.serve();
    let mut child = harness::RunGuard(Some(
        throttle()
            .args(["--down", "1M", "--name", "t-kill9bg", "--", "sh", "-c"])
            .arg(format!(
                "curl -sS -o /dev/null {}/{} & sleep 300",
                server.url,
                64 * harness::MIB
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_for_cgroup_processes("t-kill9bg", 3);
    thread::sleep(Duration::from_millis(500));
    let pids = pids_in("t-kill9bg");
    let wrapper = child.0.as_mut().unwrap();
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    let killed = Instant::now();
    while pids.iter().any(|p| alive(*p)) || run_cgroup("t-kill9bg").exists() {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "a second after kill -9: alive {:?}, cgroup there: {}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>(),
            run_cgroup("t-kill9bg").exists()
        );
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("everything gone {:?} after kill -9", killed.elapsed());
    child.0 = None;
    assert_clean("t-kill9bg");
}

#[test]
fn a_report_piped_into_a_reader_that_leaves_ends_quietly() {
    let Some(_serial) = start("a_report_piped_into_a_reader_that_leaves_ends_quietly") else {
        return;
    };
    // head leaves after the first line; doctor has more to print.
    let output = output_within(
        Command::new("sh").args([
            "-c",
            &format!("{THROTTLE} doctor | head -n 1 >/dev/null; exit 0"),
        ]),
        Duration::from_secs(60),
    );
    let stderr = stderr(&output);
    assert!(
        !stderr.contains("panicked"),
        "doctor panicked when its reader left: {stderr}"
    );
}
