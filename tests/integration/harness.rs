//! What the integration tests share beyond the network laboratory: a root
//! check, one-at-a-time execution, and checks that a run left nothing behind.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

pub use crate::netlab::{
    MIB, Netns, Samples, measure_file_growth, measure_stdout, wait_with_timeout,
};

pub const THROTTLE: &str = env!("CARGO_BIN_EXE_throttle");

/// Rate tests share two cores; a test holds this for its whole run.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the one-test-at-a-time lock, or returns None (test skipped) when
/// not root. Under CI a missing root is a failure, never a silent skip.
pub fn start(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !nix::unistd::Uid::effective().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{test}: the integration tests need root (cgroups, BPF, network namespaces); CI must run them as root"
            );
        }
        eprintln!(
            "SKIPPED {test}: needs root (cgroups, BPF, network namespaces); run: sudo -E cargo test"
        );
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    *BASELINE.lock().unwrap_or_else(|p| p.into_inner()) = loaded_throttle_programs();
    Some(serial)
}

/// Throttle programs loaded when the running test started: anybody else's,
/// which the test's checks leave alone.
static BASELINE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

pub fn throttle() -> Command {
    Command::new(THROTTLE)
}

/// Runs `cmd` with its output captured, stopping it after `bound`: no
/// command a test starts may hang it.
pub fn output_within(cmd: &mut Command, bound: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_timeout(child, bound)
}

/// Asserts `ratio` of a measured rate to its limit is within `[low, high]`.
pub fn assert_ratio(what: &str, measured: f64, limit: u64, low: f64, high: f64) {
    let ratio = measured / limit as f64;
    eprintln!(
        "{what}: {:.0} B/s against {limit} B/s, ratio {ratio:.3}",
        measured
    );
    assert!(
        (low..=high).contains(&ratio),
        "{what}: achieved/limit {ratio:.3} is outside [{low}, {high}]"
    );
}

pub fn cgroup_mount() -> PathBuf {
    crate::procfs::cgroup_mount().expect("cgroup2 is not mounted")
}

/// The cgroup a top-level run named `name` uses (the tests run in the root
/// cgroup): `name`, or `name@UID` when the runs are a sudo user's.
pub fn run_cgroup(name: &str) -> PathBuf {
    let sudo = std::env::var("SUDO_UID").ok().filter(|uid| uid != "0");
    let leaf = match sudo {
        Some(uid) => format!("{name}@{uid}"),
        None => name.to_string(),
    };
    cgroup_mount().join("throttle").join(leaf)
}

/// Ids of the loaded BPF programs that are throttle's (all three kinds).
pub fn loaded_throttle_programs() -> Vec<u64> {
    crate::bpftool::throttle_programs().expect("listing the loaded programs")
}

/// Throttle programs loaded since the running test started, other than
/// those a live throttle of someone else's run holds (a benchmark or a
/// user's download on the same machine).
pub fn programs_since_start() -> Vec<u64> {
    let baseline = BASELINE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let others = programs_of_other_runs();
    loaded_throttle_programs()
        .into_iter()
        .filter(|id| !baseline.contains(id) && !others.contains(id))
        .collect()
}

/// Ids of the programs that throttle processes hold (by program or link
/// fd, as their fdinfo's `prog_id` says) whose command line names none of
/// the test's runs (`--name t-…`). A program leaked into a command is held
/// by that command, not by a throttle, so it still counts.
fn programs_of_other_runs() -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return ids;
    };
    for entry in procs.flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let ours = cmdline.split(|b| *b == 0).any(|arg| arg.starts_with(b"t-"));
        if comm.trim_end() != "throttle" || ours {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(dir.join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u64>().ok()),
            );
        }
    }
    ids
}

/// Asserts the run named `name` left no cgroup, lock file or program behind:
/// no throttle program loaded since the test started may remain, so runs
/// of anybody else on the machine do not fail the test. The kernel frees
/// programs after their last reference goes, which may lag the wrapper's
/// exit a little.
pub fn assert_clean(name: &str) {
    let cgroup = run_cgroup(name);
    assert!(!cgroup.exists(), "{} was left behind", cgroup.display());
    for file in [format!("{name}.lock"), format!("{name}.sock")] {
        let path = Path::new("/run/throttle").join(file);
        assert!(!path.exists(), "{} was left behind", path.display());
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let programs = programs_since_start();
        if programs.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "throttle programs still loaded: {programs:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The `--summary=json` lines of a run's stderr (one per run, nested runs
/// too), each an object naming its run.
pub fn summaries(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("name").is_some())
        .collect()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A real local user, created for one test and deleted after it.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// `role` tells a test's users apart: "a", "b", "own".
    pub fn create(role: &str) -> TestUser {
        let name = format!("thr{role}{}", std::process::id() % 100_000);
        let add = || {
            Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ])
                .status()
                .unwrap()
                .success()
        };
        // One left by a test that was killed takes the name: replace it.
        if !add() {
            let _ = Command::new("userdel").arg(&name).status();
            assert!(add(), "useradd {name} failed");
        }
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user has no passwd entry");
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    /// `sh -c script` as this user, with its own group and no other.
    pub fn sh(&self, script: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.name,
            "--regid",
            &self.name,
            "--clear-groups",
        ])
        .args(["sh", "-c", script]);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// A run (or a test user's process) a test started, ended with SIGTERM
/// (then SIGKILL) if the test fails before it does, so one failure does not
/// leave a run or a user's process for the next test to trip over.
pub struct RunGuard(pub Option<std::process::Child>);

impl RunGuard {
    /// Ends the process with SIGTERM and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().unwrap()
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A copy of the binary with file capabilities, and a cgroup delegated to a
/// test user with a shell of theirs in it, as an installed throttle and a
/// login session have them; all removed afterwards.
pub struct Unprivileged {
    pub user: TestUser,
    dir: PathBuf,
    cgroup: PathBuf,
}

impl Unprivileged {
    /// `role` tells a test's users apart, as [`TestUser::create`]'s.
    pub fn new(role: &str) -> Unprivileged {
        let user = TestUser::create(role);
        let dir = PathBuf::from(format!("/tmp/throttle-{role}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(THROTTLE, dir.join("throttle")).unwrap();
        let cgroup = cgroup_mount().join(format!("throttle-{role}-{}", std::process::id()));
        let _ = fs::remove_dir(&cgroup);
        fs::create_dir(&cgroup).unwrap();
        for file in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ] {
            nix::unistd::chown(
                &cgroup.join(file),
                Some(nix::unistd::Uid::from_raw(user.uid)),
                Some(nix::unistd::Gid::from_raw(user.gid)),
            )
            .unwrap();
        }
        Unprivileged { user, dir, cgroup }
    }

    pub fn setcap(&self, caps: &str) {
        let status = Command::new("setcap")
            .arg(format!("{caps}+ep"))
            .arg(self.dir.join("throttle"))
            .status()
            .expect("setcap (libcap2-bin) is missing");
        assert!(status.success(), "setcap {caps} failed");
    }

    /// `throttle ARGS` as the user, from a shell in the delegated cgroup.
    pub fn throttle(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
            "sh",
        ])
        .arg(&self.cgroup)
        .args([
            "setpriv",
            "--reuid",
            &self.user.name,
            "--regid",
            &self.user.name,
        ])
        .args(["--clear-groups", "--inh-caps=-all"])
        .arg(self.dir.join("throttle"))
        .args(args)
        .env_remove("XDG_RUNTIME_DIR");
        cmd
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The cgroup of this user's run `name`: `name@UID` in theirs.
    pub fn run_cgroup(&self, name: &str) -> PathBuf {
        self.cgroup.join(format!("{name}@{}", self.user.uid))
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(&self.cgroup);
        // The user's runtime directories, without XDG_RUNTIME_DIR.
        for dir in tmp_dirs_of(self.user.uid) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The runtime directories of uid in /tmp, `throttle-UID-STAMP`, whoever made them.
pub fn tmp_dirs_of(uid: u32) -> Vec<PathBuf> {
    let prefix = format!("throttle-{uid}-");
    let Ok(entries) = fs::read_dir("/tmp") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect()
}
