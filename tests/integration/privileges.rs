//! Issue 13, least privilege: `--user`, what the wrapper keeps once the
//! command runs, and a run without root, with the file capabilities and the
//! delegated cgroup an installed throttle has.

use std::{
    fs,
    process::{Command, Output},
    time::Duration,
};

use crate::harness::{
    self, MIB, Netns, TestUser, Unprivileged, assert_clean, assert_ratio, measure_stdout, throttle,
};

const BOUND: Duration = Duration::from_secs(30);

/// Capability numbers, as /proc/PID/status shows them (bit N of a mask).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_KILL: u32 = 5;
const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, cap| m | 1 << cap)
}

fn run(cmd: &mut Command) -> Output {
    harness::output_within(cmd, BOUND)
}

/// The masks of every `field:` line (CapEff, CapPrm, …) in `status` text.
fn masks(status: &str, field: &str) -> Vec<u64> {
    status
        .lines()
        .filter_map(|l| l.strip_prefix(field))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .collect()
}

/// Prints the command's own status, then its parent's (the wrapper's)
/// status for each of its threads, after a line `--`.
const SHOW_CAPS: &str = "cat /proc/self/status; echo --; cat /proc/$PPID/task/*/status";

/// Asserts the command holds no capability and every thread of the
/// wrapper holds at most `allowed`; `output` is SHOW_CAPS's.
fn assert_caps(output: &Output, allowed: u64) {
    let text = String::from_utf8_lossy(&output.stdout);
    let (command, wrapper) = text.split_once("\n--\n").expect("no wrapper status");
    for field in ["CapPrm:", "CapEff:", "CapAmb:", "CapInh:"] {
        assert_eq!(
            masks(command, field),
            [0],
            "the command's {field}\n{command}"
        );
    }
    let threads = masks(wrapper, "CapEff:");
    assert!(!threads.is_empty(), "no wrapper thread seen:\n{wrapper}");
    for field in ["CapPrm:", "CapEff:"] {
        for held in masks(wrapper, field) {
            assert_eq!(
                held & !allowed,
                0,
                "a wrapper thread's {field} holds {:#x} beyond {allowed:#x}",
                held & !allowed
            );
        }
    }
}

#[test]
fn user_runs_the_command_as_that_user_without_capabilities() {
    let Some(_serial) = harness::start("user_runs_the_command_as_that_user_without_capabilities")
    else {
        return;
    };
    let user = TestUser::create("u");
    let output = run(throttle().args([
        "--user",
        &user.name,
        "--down",
        "1M",
        "--name",
        "t-user",
        "--",
        "sh",
        "-c",
        &format!("id -u; id -g; echo \"$HOME $USER $LOGNAME\"; {SHOW_CAPS}"),
    ]));
    assert!(output.status.success(), "{}", harness::stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(user.uid.to_string().as_str()));
    assert_eq!(lines.next(), Some(user.gid.to_string().as_str()));
    let home = nix::unistd::User::from_name(&user.name)
        .unwrap()
        .unwrap()
        .dir;
    let names = format!("{} {} {}", home.display(), user.name, user.name);
    assert_eq!(lines.next(), Some(names.as_str()));
    assert_caps(
        &output,
        mask(&[CAP_DAC_OVERRIDE, CAP_KILL, CAP_NET_ADMIN, CAP_BPF]),
    );
    assert_clean("t-user");
}

#[test]
fn an_unknown_user_is_refused_in_one_line() {
    let Some(_serial) = harness::start("an_unknown_user_is_refused_in_one_line") else {
        return;
    };
    let output = run(throttle().args([
        "--user",
        "no-such-user-13",
        "--name",
        "t-nouser",
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(2));
    let err = harness::stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("'no-such-user-13'") && err.contains("expected a user name or uid"),
        "{err}"
    );
    assert_clean("t-nouser");
}

/// The wrapper of a root run keeps CAP_BPF, CAP_NET_ADMIN, CAP_KILL and
/// CAP_DAC_OVERRIDE once the command runs, in every thread.
#[test]
fn a_root_wrapper_keeps_only_what_serving_and_teardown_need() {
    let Some(_serial) = harness::start("a_root_wrapper_keeps_only_what_serving_and_teardown_need")
    else {
        return;
    };
    let output = run(throttle().args([
        "--down", "1M", "--name", "t-keep", "--", "sh", "-c", SHOW_CAPS,
    ]));
    assert!(output.status.success(), "{}", harness::stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let threads = text.matches("Name:").count() - 1;
    assert!(
        threads >= 3,
        "main, control and signals threads expected:\n{text}"
    );
    let (_, wrapper) = text.split_once("\n--\n").unwrap();
    let allowed = mask(&[CAP_DAC_OVERRIDE, CAP_KILL, CAP_NET_ADMIN, CAP_BPF]);
    for held in masks(wrapper, "CapEff:") {
        assert_eq!(held & !allowed, 0, "{held:#x}");
    }
    assert_clean("t-keep");
}

/// With CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN on the binary and a cgroup
/// of their own, an ordinary user's run holds its limit; the command holds
/// no capability, the wrapper keeps CAP_BPF and CAP_NET_ADMIN alone. One
/// capability short, the run is refused naming it and the setcap that
/// fixes it, not with a verifier log.
#[test]
fn without_root_three_capabilities_and_a_delegated_cgroup_suffice() {
    let Some(_serial) =
        harness::start("without_root_three_capabilities_and_a_delegated_cgroup_suffice")
    else {
        return;
    };
    let np = Unprivileged::new("np");
    np.setcap("cap_bpf,cap_net_admin");
    let output = run(&mut np.throttle(&["--down", "1M", "--name", "t-np", "--", "true"]));
    let err = harness::stderr(&output);
    assert_eq!(output.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("missing capability CAP_PERFMON")
            && err.contains("setcap cap_bpf,cap_perfmon,cap_net_admin+ep"),
        "{err}"
    );
    assert!(!err.contains("verification time"), "a verifier log: {err}");

    np.setcap("cap_bpf,cap_perfmon,cap_net_admin");
    let output = run(&mut np.throttle(&[
        "--down", "1M", "--name", "t-np", "--", "sh", "-c", SHOW_CAPS,
    ]));
    assert!(output.status.success(), "{}", harness::stderr(&output));
    assert_caps(&output, mask(&[CAP_NET_ADMIN, CAP_BPF]));
    assert!(
        !np.run_cgroup("t-np").exists(),
        "the run's cgroup was left in {}",
        np.cgroup().display()
    );

    let netns = Netns::create();
    let server = netns.serve();
    let mut download = np.throttle(&[
        "--down", "1M", "--name", "t-np", "--", "curl", "-sS", "--fail",
    ]);
    download.arg(format!("{}/{}", server.url, 6 * MIB));
    let (samples, output) = measure_stdout(&mut download, BOUND);
    assert!(output.status.success(), "{}", harness::stderr(&output));
    assert_ratio(
        "a download without root at --down 1M",
        samples.steady_rate(Duration::from_secs(1), Duration::from_secs(4)),
        MIB,
        0.90,
        1.05,
    );
    assert_clean("t-np");
}

/// Two ordinary users, each with their own runs: B cannot list, read,
/// change or stop A's run, B's run of the same name goes ahead apart from
/// it, and B's `throttle cleanup` leaves A's run alone.
#[test]
fn ordinary_users_cannot_reach_each_others_runs() {
    let Some(_serial) = harness::start("ordinary_users_cannot_reach_each_others_runs") else {
        return;
    };
    let (a, b) = (Unprivileged::new("ia"), Unprivileged::new("ib"));
    for user in [&a, &b] {
        user.setcap("cap_bpf,cap_perfmon,cap_net_admin");
    }
    let mut a_run = a.throttle(&["--down", "1M", "--name", "t-same", "--", "sleep", "20"]);
    let a_run = harness::RunGuard(Some(a_run.spawn().unwrap()));
    // Without XDG_RUNTIME_DIR, A's runs live in a /tmp directory of theirs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let a_socket = loop {
        let found = harness::tmp_dirs_of(a.user.uid)
            .into_iter()
            .map(|dir| dir.join("t-same.sock"))
            .find(|socket| socket.exists());
        if let Some(socket) = found {
            break socket;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no socket t-same.sock in A's directories"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let b_throttle = |args: &[&str]| run(&mut b.throttle(args));
    let listed = b_throttle(&["list"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("t-same"),
        "B lists A's run: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    for args in [&["stats", "t-same"][..], &["set", "t-same", "--down", "2M"]] {
        let output = b_throttle(args);
        assert_eq!(
            output.status.code(),
            Some(3),
            "B's {args:?}: {}",
            harness::stderr(&output)
        );
    }
    let mut through_socket = b.throttle(&["stats"]);
    through_socket.env("THROTTLE_SOCKET", &a_socket);
    let output = run(&mut through_socket);
    assert!(
        !output.status.success(),
        "B reached A's socket: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    // B's runtime directory holding a link named `throttle` to A's: B's
    // run is refused, and nothing of A's changes.
    let a_dir = a_socket.parent().unwrap().to_path_buf();
    let b_runtime = std::env::temp_dir().join(format!("throttle-xdg-{}", b.user.uid));
    let _ = fs::remove_dir_all(&b_runtime);
    fs::create_dir(&b_runtime).unwrap();
    std::os::unix::fs::symlink(&a_dir, b_runtime.join("throttle")).unwrap();
    let owner = (
        Some(nix::unistd::Uid::from_raw(b.user.uid)),
        Some(nix::unistd::Gid::from_raw(b.user.gid)),
    );
    nix::unistd::chown(&b_runtime, owner.0, owner.1).unwrap();
    std::os::unix::fs::lchown(
        b_runtime.join("throttle"),
        Some(b.user.uid),
        Some(b.user.gid),
    )
    .unwrap();
    let before = fs::read_dir(&a_dir).unwrap().count();
    let mut hostile = b.throttle(&["--name", "t-same", "--", "true"]);
    hostile.env("XDG_RUNTIME_DIR", &b_runtime);
    let output = run(&mut hostile);
    let _ = fs::remove_dir_all(&b_runtime);
    assert!(
        !output.status.success(),
        "B ran through a link to A's directory"
    );
    assert_eq!(
        fs::read_dir(&a_dir).unwrap().count(),
        before,
        "A's directory changed"
    );
    let same = b_throttle(&["--down", "1M", "--name", "t-same", "--", "true"]);
    assert!(
        same.status.success(),
        "B's run of the same name: {}",
        harness::stderr(&same)
    );
    let cleanup = b_throttle(&["cleanup"]);
    assert!(
        cleanup.status.success(),
        "B's cleanup: {}",
        harness::stderr(&cleanup)
    );
    assert!(a.run_cgroup("t-same").exists(), "A's run lost its cgroup");
    let stats = run(&mut a.throttle(&["stats", "t-same"]));
    assert!(
        stats.status.success(),
        "A's own stats after B's attempts: {}",
        harness::stderr(&stats)
    );
    // SIGTERM reaches the command, whose death by it the wrapper mirrors.
    assert_eq!(a_run.stop().code(), Some(128 + 15));
    assert!(!a.run_cgroup("t-same").exists(), "A's run left its cgroup");
    assert_clean("t-same");
}
