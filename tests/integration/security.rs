//! Root runs against hostile local users (SECURITY.md, "Threat model"): what
//! another user can write is never followed, adopted, read unbounded or
//! acted on. Each test creates its own users: A, who runs throttle with
//! sudo, and B, who attacks.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::harness::{
    self, RunGuard, TestUser, Unprivileged, assert_clean, cgroup_mount, throttle, wait_with_timeout,
};

/// Longest any root command may take here: none of them may hang.
const BOUND: Duration = Duration::from_secs(30);

fn run_bounded(cmd: &mut Command) -> Output {
    harness::output_within(cmd, BOUND)
}

fn ok(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what}: {:?}: {}",
        output.status,
        harness::stderr(output)
    );
}

/// A cgroup outside throttle's with a process in it, which no planted record
/// may get killed; removed after the test.
struct VictimCgroup {
    path: PathBuf,
    sleeper: Child,
}

impl VictimCgroup {
    fn new(path: PathBuf) -> VictimCgroup {
        fs::create_dir(&path).unwrap();
        let sleeper = Command::new("sleep").arg("120").spawn().unwrap();
        fs::write(path.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        VictimCgroup { path, sleeper }
    }

    fn assert_untouched(&mut self) {
        assert!(
            self.sleeper.try_wait().unwrap().is_none(),
            "the process in {} was killed",
            self.path.display()
        );
        assert!(self.path.exists(), "{} was removed", self.path.display());
    }
}

impl Drop for VictimCgroup {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = fs::remove_dir(&self.path);
    }
}

/// Files (and directories) of root's that no planted link may get
/// overwritten, chowned, chmodded, created or removed; removed after the test.
struct VictimFiles {
    dir: PathBuf,
    file: PathBuf,
    absent: PathBuf,
}

const PRECIOUS: &str = "precious\n";

impl VictimFiles {
    fn new(tag: &str) -> VictimFiles {
        let dir = PathBuf::from(format!("/tmp/thr-victim-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for file in ["svc.lock", "svc.sock", "file"] {
            fs::write(dir.join(file), PRECIOUS).unwrap();
            fs::set_permissions(dir.join(file), fs::Permissions::from_mode(0o644)).unwrap();
        }
        VictimFiles {
            file: dir.join("file"),
            absent: dir.join("absent"),
            dir,
        }
    }

    fn assert_untouched(&self) {
        let meta = fs::metadata(&self.dir).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (0, 0o755),
            "{} changed owner or mode",
            self.dir.display()
        );
        let mut entries: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            ["file", "svc.lock", "svc.sock"],
            "{}",
            self.dir.display()
        );
        for file in ["svc.lock", "svc.sock", "file"] {
            let path = self.dir.join(file);
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.mode() & 0o7777, meta.nlink()),
                (0, 0o644, if file == "file" { meta.nlink() } else { 1 }),
                "{} changed",
                path.display()
            );
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                PRECIOUS,
                "{}",
                path.display()
            );
        }
    }
}

impl Drop for VictimFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A path that a test hands to a user and removes afterwards, whatever is
/// there by then.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.0) {
            Ok(meta) if meta.is_dir() => {
                let _ = fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

fn tmp_dir_of(user: &TestUser) -> Planted {
    let path = PathBuf::from(format!("/tmp/throttle-{}-planted", user.uid));
    drop(Planted(path.clone()));
    Planted(path)
}

/// Item 1, 4, 5: lock files another user planted (naming a cgroup to kill,
/// FIFOs, endless and huge files, a symlinked runtime directory) make no
/// root run, cleanup, doctor or list kill, remove, hang or grow.
#[test]
fn records_other_users_plant_are_never_acted_on() {
    let Some(_serial) = harness::start("records_other_users_plant_are_never_acted_on") else {
        return;
    };
    let (a, b) = (TestUser::create("a"), TestUser::create("b"));
    let mount = cgroup_mount();
    let mut victim = VictimCgroup::new(mount.join(format!("thr-victim-{}", std::process::id())));
    let files = VictimFiles::new("sweep");
    let b_dir = tmp_dir_of(&b);
    let a_dir = tmp_dir_of(&a);
    let mount_name = mount.file_name().unwrap().to_str().unwrap();
    let mut plant = b.sh(&format!(
        "set -e; mkdir -m 700 {b_dir}; cd {b_dir}
         printf 'pid 1\\ncgroup {victim}\\n' > evil.lock
         printf 'pid 1\\ncgroup {victim}\\n' > {victim_name}.lock
         printf 'pid 1\\ncgroup {mount}\\n' > {mount_name}.lock
         mkfifo fifo.lock; ln -s /dev/zero zero.lock; truncate -s 4G huge.lock
         ln -s {files} {a_dir}",
        b_dir = b_dir.0.display(),
        a_dir = a_dir.0.display(),
        victim = victim.path.display(),
        victim_name = victim.path.file_name().unwrap().to_str().unwrap(),
        mount = mount.display(),
        files = files.dir.display(),
    ));
    ok("planting", &plant.output().unwrap());
    // The runtime directory of a user with /run/user, replaced by a link.
    let run_user = Path::new("/run/user");
    let made_run_user = !run_user.exists();
    let b_run = Planted(run_user.join(b.uid.to_string()));
    fs::create_dir_all(&b_run.0).unwrap();
    Command::new("chown")
        .args([&format!("{}:{}", b.name, b.name), b_run.0.to_str().unwrap()])
        .status()
        .unwrap();
    ok(
        "linking",
        &b.sh(&format!(
            "ln -s {} {}/throttle",
            files.dir.display(),
            b_run.0.display()
        ))
        .output()
        .unwrap(),
    );

    let started = Instant::now();
    ok(
        "a root run",
        &run_bounded(throttle().args(["--name", "t-planted", "--", "true"])),
    );
    ok(
        "a sudo run of A",
        &run_bounded(
            throttle()
                .args(["--name", "t-planted-a", "--", "true"])
                .env("SUDO_UID", a.uid.to_string())
                .env("SUDO_GID", a.gid.to_string()),
        ),
    );
    ok("cleanup", &run_bounded(throttle().arg("cleanup")));
    run_bounded(throttle().arg("doctor"));
    // B's linked /run/user directory is passed over, named, and makes the
    // list incomplete.
    let list = run_bounded(throttle().arg("list"));
    assert_eq!(list.status.code(), Some(7), "{}", harness::stderr(&list));
    assert!(
        harness::stderr(&list).contains(&format!(
            "passing over {}",
            b_run.0.join("throttle").display()
        )),
        "{}",
        harness::stderr(&list)
    );
    eprintln!("five root commands took {:?}", started.elapsed());

    victim.assert_untouched();
    files.assert_untouched();
    let b_meta = fs::symlink_metadata(&b_dir.0).unwrap();
    assert_eq!(b_meta.uid(), b.uid, "B's directory changed hands");
    let link = fs::symlink_metadata(&a_dir.0).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "the planted link was replaced"
    );
    assert_clean("t-planted");
    drop(b_run);
    if made_run_user {
        let _ = fs::remove_dir(run_user);
    }
}

/// Item 7 and the record checks: in root's own directory, one unreadable
/// record and one naming a cgroup that is not its run's are passed over
/// with a warning, and a genuine dead run next to them is still removed.
#[test]
fn one_bad_record_does_not_stop_the_sweep_or_name_a_victim() {
    let Some(_serial) = harness::start("one_bad_record_does_not_stop_the_sweep") else {
        return;
    };
    let mount = cgroup_mount();
    let mut victim = VictimCgroup::new(mount.join(format!("thr-victim2-{}", std::process::id())));
    let runs = Path::new("/run/throttle");
    // A root run first, so root's directory exists as throttle makes it.
    ok(
        "a root run",
        &run_bounded(throttle().args(["--name", "t-first", "--", "true"])),
    );
    let mount_name = mount.file_name().unwrap().to_str().unwrap();
    let planted = [
        Planted(runs.join("0bad.lock")),
        Planted(runs.join("t-mismatch.lock")),
        Planted(runs.join("throttle.lock")),
        Planted(runs.join("t-dead.lock")),
        Planted(runs.join(format!("{mount_name}.lock"))),
    ];
    fs::write(&planted[0].0, b"pid 1\ncgroup \xff\xfe\n").unwrap();
    fs::write(
        &planted[1].0,
        format!("pid 1\ncgroup {}\n", victim.path.display()),
    )
    .unwrap();
    fs::write(
        &planted[2].0,
        format!("pid 1\ncgroup {}\n", mount.join("throttle").display()),
    )
    .unwrap();
    fs::write(
        &planted[4].0,
        format!("pid 1\ncgroup {}\n", mount.display()),
    )
    .unwrap();
    let dead = VictimCgroup::new(mount.join("throttle/t-dead"));
    fs::write(
        &planted[3].0,
        format!("pid 1\ncgroup {}\n", dead.path.display()),
    )
    .unwrap();

    let output = run_bounded(throttle().arg("cleanup"));
    let stderr = harness::stderr(&output);
    eprintln!("{stderr}");
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    let mount_lock = format!("{mount_name}.lock");
    for name in ["0bad.lock", "t-mismatch.lock", "throttle.lock", &mount_lock] {
        assert!(stderr.contains(name), "no warning names {name}: {stderr}");
    }
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("removed dead run t-dead"),
        "the genuine dead run was not removed"
    );
    assert!(!dead.path.exists(), "the dead run's cgroup is still there");
    let mut dead = dead;
    // Killed before its cgroup could go, so this wait returns at once.
    dead.sleeper.wait().unwrap();
    victim.assert_untouched();
    assert!(
        mount.join("throttle").exists(),
        "the runs' parent was removed"
    );
    // The bad records' files are gone with their warnings: once is enough.
    let again = run_bounded(throttle().arg("cleanup"));
    ok("a second cleanup", &again);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "nothing to clean up"
    );
    assert_clean("t-first");
}

/// Items 2, 3, 8: a sudo run never uses the /tmp directory another user
/// pre-created for it (links to root's files, dangling links, hard links, or
/// the directory itself a link, swapped back and forth during the runs);
/// it uses a directory only root can write, with the socket its owner's.
#[test]
fn sudo_runs_never_write_where_another_user_can() {
    let Some(_serial) = harness::start("sudo_runs_never_write_where_another_user_can") else {
        return;
    };
    let (a, b) = (TestUser::create("a"), TestUser::create("b"));
    let files = VictimFiles::new("sudo");
    let a_dir = tmp_dir_of(&a);
    ok(
        "planting",
        &b.sh(&format!(
            "set -e; mkdir -m 755 {a_dir}; cd {a_dir}
             for n in t-sudo t-loop; do ln -s {file} $n.lock; ln -s {file} $n.sock; done
             ln -s {absent} t-new.lock",
            a_dir = a_dir.0.display(),
            file = files.file.display(),
            absent = files.absent.display(),
        ))
        .output()
        .unwrap(),
    );
    // protected_hardlinks stops B from linking root's file; a system
    // without it would not, so root makes the link B would have made.
    fs::hard_link(&files.file, a_dir.0.join("t-hard.lock")).unwrap();

    let sudo = |name: &str, script: &str| {
        let mut cmd = throttle();
        cmd.args(["--name", name, "--", "sh", "-c", script])
            .env("SUDO_UID", a.uid.to_string())
            .env("SUDO_GID", a.gid.to_string());
        cmd
    };
    let output = run_bounded(&mut sudo(
        "t-sudo",
        "stat -c '%u %a %F' \"$THROTTLE_SOCKET\"; echo \"$THROTTLE_SOCKET\"",
    ));
    ok("a sudo run", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let a_runs = format!("/run/throttle/user-{}", a.uid);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{} 600 socket", a.uid).as_str(),
            format!("{a_runs}/t-sudo.sock").as_str()
        ]
    );
    let meta = fs::metadata(&a_runs).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, a.gid, 0o750),
        "{a_runs} must be root's, readable by A and writable by nobody else"
    );
    for name in ["t-new", "t-hard"] {
        ok(name, &run_bounded(&mut sudo(name, "true")));
    }
    files.assert_untouched();
    assert_eq!(fs::metadata(&files.file).unwrap().nlink(), 2);
    assert!(
        !files.absent.exists(),
        "a dangling link made root create a file"
    );
    assert_eq!(fs::symlink_metadata(&a_dir.0).unwrap().uid(), b.uid);

    // B swaps A's directory for a link to root's directory and back while
    // A's sudo runs start and end.
    let swapper = b
        .sh(&format!(
            "for i in $(seq 3000); do rm -rf {d}; ln -s {victim} {d}; rm -f {d}; mkdir {d}; \
             ln -s {file} {d}/t-loop.lock; done",
            d = a_dir.0.display(),
            victim = files.dir.display(),
            file = files.file.display(),
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let swapper = RunGuard(Some(swapper));
    for _ in 0..10 {
        ok(
            "a sudo run during the swaps",
            &run_bounded(&mut sudo("t-loop", "true")),
        );
    }
    // The swaps only matter while the runs start and end: its 3000 rounds
    // take about as long as BOUND on two loaded cores, so it is stopped
    // here rather than waited for.
    swapper.stop();
    files.assert_untouched();
    assert_clean_in(&a_runs, &["t-sudo", "t-new", "t-hard", "t-loop"]);
}

fn assert_clean_in(dir: &str, names: &[&str]) {
    for name in names {
        assert_clean(name);
        for suffix in ["lock", "sock"] {
            let path = format!("{dir}/{name}.{suffix}");
            assert!(!Path::new(&path).exists(), "{path} was left behind");
        }
    }
}

/// A sudo run's owner manages it without sudo; another user neither sees
/// it nor reaches it.
#[test]
fn a_sudo_run_is_its_owners_and_no_one_elses() {
    let Some(_serial) = harness::start("a_sudo_run_is_its_owners_and_no_one_elses") else {
        return;
    };
    let (a, b) = (TestUser::create("a"), TestUser::create("b"));
    let run = RunGuard(Some(
        throttle()
            .args(["--name", "t-owned", "--", "sleep", "20"])
            .env("SUDO_UID", a.uid.to_string())
            .env("SUDO_GID", a.gid.to_string())
            .spawn()
            .unwrap(),
    ));
    let socket = format!("/run/throttle/user-{}/t-owned.sock", a.uid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "no socket at {socket}");
        thread::sleep(Duration::from_millis(20));
    }
    let t = harness::THROTTLE;
    let output = a
        .sh(&format!("{t} set t-owned --down 2M"))
        .output()
        .unwrap();
    ok("the owner's set", &output);
    let output = b.sh(&format!("{t} stats t-owned")).output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        harness::stderr(&output)
    );
    let output = b
        .sh(&format!("THROTTLE_SOCKET={socket} {t} stats"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        harness::stderr(&output)
    );
    // B's own sudo run of the same name goes ahead beside A's, in a cgroup
    // of its own.
    let a_cgroup = cgroup_mount().join(format!("throttle/t-owned@{}", a.uid));
    assert!(a_cgroup.exists(), "{} missing", a_cgroup.display());
    let output = run_bounded(
        throttle()
            .args([
                "--name",
                "t-owned",
                "--",
                "sh",
                "-c",
                "cat /proc/self/cgroup",
            ])
            .env("SUDO_UID", b.uid.to_string())
            .env("SUDO_GID", b.gid.to_string()),
    );
    ok("B's sudo run of the same name", &output);
    let own = String::from_utf8_lossy(&output.stdout);
    assert!(
        own.trim_end()
            .ends_with(&format!("/throttle/t-owned@{}", b.uid)),
        "{own}"
    );
    assert!(a_cgroup.exists(), "B's run took A's cgroup");
    run.stop();
    assert!(!a_cgroup.exists(), "{} was left behind", a_cgroup.display());
    assert_clean_in(&format!("/run/throttle/user-{}", a.uid), &["t-owned"]);
}

/// Item 6: root's list, stats and set talk only to sockets that pass their
/// checks, never print the control characters a fake run sends, and stop
/// reading an endless reply.
#[test]
fn root_clients_survive_fake_runs() {
    let Some(_serial) = harness::start("root_clients_survive_fake_runs") else {
        return;
    };
    let b = TestUser::create("b");
    let b_dir = tmp_dir_of(&b);
    // Listed only once it serves: a list that came first (the fake runs
    // start in about as long as a run) had no row for it.
    let root_run = root_run("t-real");
    let server = ready_as(
        &b,
        &format!(
            "set -e; mkdir -m 700 {d}; ln -s /run/throttle/t-real.sock {d}/t-link.sock; \
             exec /usr/bin/python3 -c '{SERVE}{FAKE_RUN}' {d}",
            d = b_dir.0.display()
        ),
    );

    let started = Instant::now();
    let list = run_bounded(throttle().arg("list"));
    let json = run_bounded(throttle().args(["list", "--json"]));
    let set = run_bounded(throttle().args(["set", "t-evil", "--down", "1M"]));
    let endless = run_bounded(throttle().args(["stats", "t-endless"]));
    let link = run_bounded(throttle().args(["stats", "t-link"]));
    eprintln!("four root clients took {:?}", started.elapsed());
    // Finding 5f: JSON escapes what reorders a line, as the table does.
    let reorders = "\u{202e}".as_bytes();
    assert!(
        !json.stdout.windows(3).any(|w| w == reorders),
        "list --json passed U+202E through: {}",
        String::from_utf8_lossy(&json.stdout)
    );
    assert!(String::from_utf8_lossy(&json.stdout).contains("\\u202e"));
    for (what, output) in [
        ("list", &list),
        ("list --json", &json),
        ("set", &set),
        ("stats", &endless),
        ("link", &link),
    ] {
        let all = [&output.stdout[..], &output.stderr[..]].concat();
        assert!(
            !all.iter().any(|b| *b == 0x1b || *b == 0x07),
            "{what} printed a control character: {}",
            String::from_utf8_lossy(&all)
        );
    }
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("t-real"), "{listed}");
    assert!(
        listed.contains("\\u{1b}"),
        "the fake run's row is not shown escaped: {listed}"
    );
    assert_eq!(set.status.code(), Some(6), "{}", harness::stderr(&set));
    assert!(harness::stderr(&set).contains("\\u{1b}]0;pwned"));
    assert_eq!(
        endless.status.code(),
        Some(6),
        "{}",
        harness::stderr(&endless)
    );
    assert!(harness::stderr(&endless).contains("longer than"));
    assert_eq!(link.status.code(), Some(3), "{}", harness::stderr(&link));
    // A link under a socket's name is no run at all.
    assert!(harness::stderr(&link).contains("no run named"));

    server.stop();
    root_run.stop();
    assert_clean("t-real");
}

/// What every fake run's script starts with: `serve(name, handler)` runs
/// `handler` for each connection to the socket `name` in the directory
/// given first.
const SERVE: &str = r#"
import json, os, socket, sys, threading, time
d = sys.argv[1]
def serve(name, handler):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(d, name))
    s.listen(8)
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
"#;

/// A fake run: `t-evil` answers everything with terminal escapes, and
/// `t-endless` sends up to 64 MiB without a line end.
const FAKE_RUN: &str = r#"
ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\u202e"
def evil(c):
    for line in c.makefile("rb"):
        command = json.loads(line).get("command")
        if command == "info":
            none = {"rate": None, "burst": None}
            r = {"name": ESC + "t-evil", "pid": 1, "command": [ESC], "started": 0,
                 "limits": {"down": none, "up": none}}
        elif command == "stats":
            z = {"passed_bytes": 0, "passed_packets": 0, "dropped_bytes": 0, "dropped_packets": 0}
            r = {"elapsed": 1, "down": z, "up": z}
        else:
            r = {"ok": False, "error": ESC + " refused"}
        r = {"version": 1, "ok": True, **r}
        c.sendall((json.dumps(r) + "\n").encode())
def endless(c):
    try:
        for _ in range(4096):
            c.sendall(b"x" * 16384)
    except OSError:
        pass
serve("t-evil.sock", evil)
serve("t-endless.sock", endless)
print("ready", flush=True)
time.sleep(60)
"#;

/// Item 9: a root run from a cgroup delegated to another user is refused
/// (that user could move the command out of its limits or kill it); from
/// one delegated to the run's own owner it goes ahead.
#[test]
fn a_cgroup_delegated_to_another_user_is_refused() {
    let Some(_serial) = harness::start("a_cgroup_delegated_to_another_user_is_refused") else {
        return;
    };
    let (a, b) = (TestUser::create("a"), TestUser::create("b"));
    let delegated = cgroup_mount().join(format!("thr-deleg-{}", std::process::id()));
    fs::create_dir(&delegated).unwrap();
    let _remove = RemoveCgroup(delegated.clone());
    for file in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        Command::new("chown")
            .args([
                &format!("{}:{}", b.name, b.name),
                delegated.join(file).to_str().unwrap(),
            ])
            .status()
            .unwrap();
    }
    let from_delegated = |sudo_uid: u32, sudo_gid: u32| {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec {} --name t-deleg -- true",
                delegated.display(),
                harness::THROTTLE
            ),
        ])
        .env("SUDO_UID", sudo_uid.to_string())
        .env("SUDO_GID", sudo_gid.to_string());
        run_bounded(&mut cmd)
    };
    let refused = from_delegated(a.uid, a.gid);
    assert_eq!(
        refused.status.code(),
        Some(125),
        "{}",
        harness::stderr(&refused)
    );
    let message = harness::stderr(&refused);
    assert!(
        message.contains(&format!("delegated to uid {}", b.uid)) && message.lines().count() == 1,
        "{message}"
    );
    ok(
        "a run for the delegatee itself",
        &from_delegated(b.uid, b.gid),
    );
    assert!(!delegated.join("t-deleg").exists());
}

struct RemoveCgroup(PathBuf);

impl Drop for RemoveCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Item 9: until the run's cgroup exists, SIGTERM ends a root run as it
/// ends any program, so `timeout` can stop a set-up that hangs. strace
/// holds the wrapper in its first mkdirat (creating its runtime
/// directory) while the signal arrives.
#[test]
fn a_set_up_that_hangs_can_be_stopped() {
    let Some(_serial) = harness::start("a_set_up_that_hangs_can_be_stopped") else {
        return;
    };
    let tracer = Command::new("strace")
        .args(["-o", "/dev/null", "-e", "trace=mkdirat", "-e"])
        .arg("inject=mkdirat:delay_enter=5000000:when=1")
        .args([harness::THROTTLE, "--name", "t-stall", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tracer_pid = tracer.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    // strace's children include a short-lived one of its own besides the
    // traced wrapper: the wrapper is the child that runs throttle.
    let wrapper = loop {
        let children = fs::read_to_string(format!("/proc/{tracer_pid}/task/{tracer_pid}/children"))
            .unwrap_or_default();
        let throttle = children.split_whitespace().find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "throttle")
        });
        if let Some(pid) = throttle {
            break pid.parse::<i32>().unwrap();
        }
        assert!(Instant::now() < deadline, "strace started no wrapper");
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wrapper),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = wait_with_timeout(tracer, BOUND);
    use std::os::unix::process::ExitStatusExt as _;
    let by_sigterm = output.status.signal() == Some(15) || output.status.code() == Some(128 + 15);
    assert!(
        by_sigterm,
        "the wrapper held SIGTERM through its set-up: {:?} {}",
        output.status,
        harness::stderr(&output)
    );
    eprintln!(
        "SIGTERM ended the stalled set-up after {:?}",
        started.elapsed()
    );
    assert_clean("t-stall");
}

// Round three (issue 25): each test names its finding.

/// Starts `script` as `user` and returns once it has printed "ready".
fn ready_as(user: &TestUser, script: &str) -> RunGuard {
    let mut child = RunGuard(Some(
        user.sh(script).stdout(Stdio::piped()).spawn().unwrap(),
    ));
    let mut ready = String::new();
    BufReader::new(child.0.as_mut().unwrap().stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "{script}");
    child
}

/// A run of root's, `throttle --name NAME -- sleep 30`, once its socket is there.
fn root_run(name: &str) -> RunGuard {
    let run = RunGuard(Some(
        throttle()
            .args(["--name", name, "--", "sleep", "30"])
            .spawn()
            .unwrap(),
    ));
    wait_for(&format!("/run/throttle/{name}.sock"));
    run
}

/// Waits for a run's socket to appear.
fn wait_for(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(path).exists() {
        assert!(Instant::now() < deadline, "no socket at {path}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sets a sysctl for one test and puts the old value back after it.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Option<Sysctl> {
        let old = fs::read_to_string(path).ok()?;
        fs::write(path, value).ok()?;
        Some(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, self.old.trim());
    }
}

/// Runs `throttle ARGS` on a new pseudo-terminal that is its controlling
/// terminal, as from an interactive shell; after `ctrl_c` seconds (if
/// given) types Ctrl-C. Prints everything the terminal showed, then the
/// exit status.
const ON_A_PTY: &str = r#"
import os, pty, select, sys, time
ctrl_c = float(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
out, start, typed = b"", time.time(), False
while time.time() - start < 25:
    if ctrl_c and not typed and time.time() - start > ctrl_c:
        os.write(fd, b"\x03")
        typed = True
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
print("exit", os.waitstatus_to_exitcode(status))
"#;

/// The command's side: push a line into its terminal's input with TIOCSTI,
/// which a shell on that terminal would run, and say what the kernel said;
/// then whether it has a controlling terminal at all.
const TIOCSTI: &str = r#"
import errno, fcntl, os, termios
try:
    for c in b"id\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
    print("TIOCSTI worked")
except OSError as e:
    print("TIOCSTI", errno.errorcode[e.errno])
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    print("tty: has one")
except OSError as e:
    print("tty:", errno.errorcode[e.errno])
"#;

fn on_a_pty(ctrl_c: f64, args: &[&str]) -> String {
    let output = run_bounded(
        Command::new("python3")
            .args(["-c", ON_A_PTY, &ctrl_c.to_string(), harness::THROTTLE])
            .args(args),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Finding 1: a command run with --user from root's terminal cannot push
/// keystrokes into it (TIOCSTI, with the legacy sysctl on as on Debian 12's
/// kernel) and has no controlling terminal; Ctrl-C on the terminal still
/// ends it, as it would without --user.
#[test]
fn a_user_command_cannot_type_into_roots_terminal() {
    let Some(_serial) = harness::start("a_user_command_cannot_type_into_roots_terminal") else {
        return;
    };
    let b = TestUser::create("b");
    let _legacy = Sysctl::set("/proc/sys/dev/tty/legacy_tiocsti", "1");
    let shown = on_a_pty(
        0.0,
        &[
            "--name", "t-tty", "--user", &b.name, "--", "python3", "-c", TIOCSTI,
        ],
    );
    assert!(shown.contains("TIOCSTI EPERM"), "{shown}");
    assert!(shown.contains("tty: ENXIO"), "{shown}");
    assert!(shown.trim_end().ends_with("exit 0"), "{shown}");
    // Without --user, root's own command keeps its terminal.
    let shown = on_a_pty(0.0, &["--name", "t-tty", "--", "python3", "-c", TIOCSTI]);
    assert!(shown.contains("tty: has one"), "{shown}");
    let shown = on_a_pty(
        1.5,
        &["--name", "t-tty", "--user", &b.name, "--", "sleep", "20"],
    );
    assert!(shown.trim_end().ends_with("exit 130"), "Ctrl-C: {shown}");
    assert_clean("t-tty");
}

/// Findings 5b and 5c: a --user command still dies with its wrapper (its
/// parent-death signal survives the switch of uid) and gets a reset
/// environment: none of root's secrets or PATH, the user's HOME, the
/// terminal type, and what --keep-env names.
#[test]
fn a_user_command_gets_a_reset_environment_and_dies_with_its_wrapper() {
    let Some(_serial) =
        harness::start("a_user_command_gets_a_reset_environment_and_dies_with_its_wrapper")
    else {
        return;
    };
    let b = TestUser::create("b");
    const SHOW: &str = r#"
import ctypes, os
sig = ctypes.c_int()
ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(sig))
print("pdeathsig", sig.value)
for k in ["SSH_AUTH_SOCK", "ROOT_SECRET", "KEPT", "PATH", "HOME", "USER", "TERM", "THROTTLE_NAME"]:
    print(k, os.environ.get(k, "-"))
"#;
    let output = run_bounded(
        throttle()
            .args(["--name", "t-env", "--user", &b.name, "--keep-env", "KEPT"])
            .args(["--", "python3", "-c", SHOW])
            .env("SSH_AUTH_SOCK", "/tmp/root-agent")
            .env("ROOT_SECRET", "s3cr3t")
            .env("KEPT", "kept")
            .env("TERM", "xterm-test")
            .env("PATH", "/root/bin:/usr/bin:/bin"),
    );
    ok("the --user run", &output);
    let shown = String::from_utf8_lossy(&output.stdout);
    for line in [
        "pdeathsig 9",
        "SSH_AUTH_SOCK -",
        "ROOT_SECRET -",
        "KEPT kept",
        "PATH /usr/local/bin:/usr/bin:/bin",
        "TERM xterm-test",
        "THROTTLE_NAME t-env",
        &format!("USER {}", b.name),
    ] {
        assert!(shown.lines().any(|l| l == line), "no '{line}' in:\n{shown}");
    }
    let output = run_bounded(throttle().args(["--keep-env", "KEPT", "--", "true"]));
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        harness::stderr(&output)
    );
    assert!(harness::stderr(&output).contains("--keep-env KEPT applies only with --user"));
    let output =
        run_bounded(throttle().args(["--user", &b.name, "--keep-env", "A=B", "--", "true"]));
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        harness::stderr(&output)
    );
    assert!(
        harness::stderr(&output).contains("'A=B'"),
        "{}",
        harness::stderr(&output)
    );
    assert_clean("t-env");
}

/// Finding 2: names another user takes first in /tmp, the old fixed
/// `/tmp/throttle-UID` and ones shaped like the user's own directories,
/// stop none of that user's runs, lists or doctors, and doctor names them.
#[test]
fn names_planted_in_tmp_stop_no_users_runs() {
    let Some(_serial) = harness::start("names_planted_in_tmp_stop_no_users_runs") else {
        return;
    };
    let a = Unprivileged::new("sq");
    a.setcap("cap_bpf,cap_perfmon,cap_net_admin");
    let b = TestUser::create("b");
    let planted: Vec<Planted> = [
        format!("/tmp/throttle-{}", a.user.uid),
        format!("/tmp/throttle-{}-0", a.user.uid),
    ]
    .into_iter()
    .map(|p| {
        drop(Planted(PathBuf::from(&p)));
        Planted(PathBuf::from(p))
    })
    .collect();
    for dir in &planted {
        ok(
            "planting",
            &b.sh(&format!("mkdir -m 700 {}", dir.0.display()))
                .output()
                .unwrap(),
        );
    }
    ok(
        "A's run",
        &run_bounded(&mut a.throttle(&["--name", "t-sq", "--", "true"])),
    );
    ok("A's list", &run_bounded(&mut a.throttle(&["list"])));
    let doctor = run_bounded(&mut a.throttle(&["doctor"]));
    let shown = String::from_utf8_lossy(&doctor.stdout);
    let line = shown
        .lines()
        .find(|l| l.contains("runtime directory"))
        .unwrap_or_default();
    assert!(line.starts_with("ok"), "{shown}");
    for dir in &planted {
        assert!(
            line.contains(&format!("{} (uid {})", dir.0.display(), b.uid)),
            "{line}"
        );
    }
    let own = harness::tmp_dirs_of(a.user.uid);
    assert!(
        own.iter()
            .any(|d| fs::metadata(d)
                .is_ok_and(|m| m.uid() == a.user.uid && m.mode() & 0o777 == 0o700)),
        "A has no 0700 directory of their own: {own:?}"
    );
    assert!(!a.run_cgroup("t-sq").exists());
}

/// Finding 3: sockets planted to stall root's clients (a listener whose
/// backlog is full, listeners that accept and never answer) cost `list` one
/// bounded wait in all, and `set` by name and `stats` by pid none.
#[test]
fn stalled_sockets_cost_roots_clients_seconds_not_forever() {
    let Some(_serial) = harness::start("stalled_sockets_cost_roots_clients_seconds_not_forever")
    else {
        return;
    };
    let b = TestUser::create("b");
    let b_dir = tmp_dir_of(&b);
    let root_run = root_run("t-real");
    let server = ready_as(
        &b,
        &format!(
            "mkdir -m 700 {d} && exec /usr/bin/python3 -c '{STALLING_RUNS}' {d}",
            d = b_dir.0.display()
        ),
    );
    let pid = root_run.0.as_ref().unwrap().id().to_string();

    let started = Instant::now();
    let list = run_bounded(throttle().arg("list"));
    let list_took = started.elapsed();
    let started = Instant::now();
    let set = run_bounded(throttle().args(["set", "t-real", "--down", "1M"]));
    let stats = run_bounded(throttle().args(["stats", &pid]));
    let others_took = started.elapsed();
    eprintln!("list took {list_took:?}, set and stats {others_took:?}");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        list.status.code(),
        Some(7),
        "{listed}{}",
        harness::stderr(&list)
    );
    assert!(listed.contains("t-real"), "{listed}");
    for stalled in ["t-full", "t-mute-1", "t-mute-5"] {
        assert!(listed.contains(stalled), "{stalled} has no row: {listed}");
    }
    assert!(
        list_took < Duration::from_secs(8),
        "list took {list_took:?}"
    );
    ok("set by name", &set);
    ok("stats by pid", &stats);
    assert!(
        others_took < Duration::from_secs(8),
        "set and stats took {others_took:?}"
    );
    server.stop();
    root_run.stop();
    assert_clean("t-real");
}

/// A fake user's runs that stall: `t-full` listens with a full backlog and
/// never accepts; `t-mute-N` accept and never answer.
const STALLING_RUNS: &str = r#"
import os, socket, sys, time
d = sys.argv[1]
keep = []
full = socket.socket(socket.AF_UNIX)
full.bind(os.path.join(d, "t-full.sock"))
full.listen(0)
for _ in range(4):
    c = socket.socket(socket.AF_UNIX)
    c.setblocking(False)
    try:
        c.connect(os.path.join(d, "t-full.sock"))
    except OSError:
        pass
    keep.append(c)
for n in range(1, 6):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(d, "t-mute-%d.sock" % n))
    s.listen(64)
    keep.append(s)
print("ready", flush=True)
time.sleep(60)
"#;

/// Finding 4: what a command leaves behind is signalled through pidfds
/// (or `cgroup.kill`), never by a pid read from `cgroup.procs` that may
/// since name another process.
#[test]
fn leftovers_are_signalled_through_pidfds() {
    let Some(_serial) = harness::start("leftovers_are_signalled_through_pidfds") else {
        return;
    };
    let output = run_bounded(
        Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=kill,tgkill,pidfd_open,pidfd_send_signal",
            ])
            .arg(harness::THROTTLE)
            .args(["--name", "t-left", "--kill-after", "1", "--", "sh", "-c"])
            .arg("trap '' TERM; sleep 30 & sleep 30 & sleep 0.2"),
    );
    let trace = harness::stderr(&output);
    assert!(output.status.success(), "{trace}");
    assert!(trace.contains("pidfd_send_signal("), "{trace}");
    let kills: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(" kill(") || l.starts_with("kill("))
        .filter(|l| !l.contains(", 0)"))
        .collect();
    assert!(kills.is_empty(), "signals sent by pid: {kills:?}");
    assert_clean("t-left");
}

/// Finding 5a: root's `set NAME` refuses a name that more than one user's
/// run has, naming each as NAME@UID, which then picks one; `stats PID`
/// finds the run whose wrapper the kernel says has that pid, whatever fake
/// runs claim or fail to say.
#[test]
fn an_ambiguous_name_is_refused_and_a_pid_cannot_be_claimed() {
    let Some(_serial) = harness::start("an_ambiguous_name_is_refused_and_a_pid_cannot_be_claimed")
    else {
        return;
    };
    let b = TestUser::create("b");
    let b_dir = tmp_dir_of(&b);
    let root_run = root_run("t-dup");
    let pid = root_run.0.as_ref().unwrap().id();
    let server = ready_as(
        &b,
        &format!(
            "mkdir -m 700 {d} && exec /usr/bin/python3 -c '{SERVE}{CLAIMING_RUNS}' {d} {pid}",
            d = b_dir.0.display()
        ),
    );

    let set = run_bounded(throttle().args(["set", "t-dup", "--down", "1M"]));
    let said = harness::stderr(&set);
    assert_eq!(set.status.code(), Some(8), "{said}");
    assert!(
        said.contains("t-dup@0") && said.contains(&format!("t-dup@{}", b.uid)),
        "{said}"
    );
    let set = run_bounded(throttle().args(["set", "t-dup@0", "--down", "1M"]));
    ok("set t-dup@0", &set);
    let stats = run_bounded(throttle().args(["stats", "--json", &pid.to_string()]));
    ok("stats by pid", &stats);
    server.stop();
    root_run.stop();
    assert_clean("t-dup");
}

/// A fake user's runs: `t-dup` claims root's run's pid and name, `t-broken`
/// fails every request.
const CLAIMING_RUNS: &str = r#"
pid = int(sys.argv[2])
def claim(c):
    for line in c.makefile("rb"):
        none = {"rate": None, "burst": None}
        z = {"passed_bytes": 0, "passed_packets": 0, "dropped_bytes": 0, "dropped_packets": 0}
        if json.loads(line).get("command") == "info":
            r = {"name": "t-dup", "pid": pid, "command": ["sleep"], "started": 0,
                 "limits": {"down": none, "up": none}}
        else:
            r = {"elapsed": 1, "down": z, "up": z}
        c.sendall((json.dumps({"version": 1, "ok": True, **r}) + "\n").encode())
def broken(c):
    c.sendall(b"not json\n")
serve("t-broken.sock", broken)
serve("t-dup.sock", claim)
print("ready", flush=True)
time.sleep(60)
"#;

/// Finding 5d: the watchdog holds no more than CAP_KILL and
/// CAP_DAC_OVERRIDE from the moment it is forked.
#[test]
fn the_watchdog_keeps_only_what_cleaning_up_needs() {
    let Some(_serial) = harness::start("the_watchdog_keeps_only_what_cleaning_up_needs") else {
        return;
    };
    let run = root_run("t-dog");
    let wrapper = run.0.as_ref().unwrap().id().to_string();
    let status_of =
        |pid: &str| fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let watchdog = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|pid| status_of(&pid))
        .find(|s| field(s, "Name:") == "throttle-guard" && field(s, "PPid:") == wrapper)
        .expect("the run has no watchdog");
    let held = u64::from_str_radix(&field(&watchdog, "CapEff:"), 16).unwrap();
    let allowed = 1u64 << 1 | 1u64 << 5;
    assert_eq!(held & !allowed, 0, "the watchdog holds {held:#x}");
    run.stop();
    assert_clean("t-dog");
}

/// Finding 5e: an ordinary user holds at most 64 live runs; the 65th is
/// refused in one line, and leaves nothing behind.
#[test]
fn one_user_holds_a_bounded_number_of_runs() {
    let Some(_serial) = harness::start("one_user_holds_a_bounded_number_of_runs") else {
        return;
    };
    let a = Unprivileged::new("cap");
    a.setcap("cap_bpf,cap_perfmon,cap_net_admin");
    // 64 live runs as the registry sees them: locked records in A's directory.
    let holder = ready_as(
        &a.user,
        &format!(
            "exec /usr/bin/python3 -c '{HOLD_RUNS}' /tmp/throttle-{}-0000",
            a.user.uid
        ),
    );
    let refused = run_bounded(&mut a.throttle(&["--name", "t-many", "--", "true"]));
    let said = harness::stderr(&refused);
    assert_eq!(refused.status.code(), Some(125), "{said}");
    assert!(said.contains("already has 64 live runs"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(!a.run_cgroup("t-many").exists());
    holder.stop();
    ok(
        "once they end",
        &run_bounded(&mut a.throttle(&["--name", "t-many", "--", "true"])),
    );
}

/// Holds 64 run records locked, as 64 live runs hold theirs.
const HOLD_RUNS: &str = r#"
import fcntl, os, sys, time
d = sys.argv[1]
os.mkdir(d, 0o700)
held = []
for n in range(64):
    f = open(os.path.join(d, "held-%d.lock" % n), "w")
    f.write("pid 1\ncgroup /nonexistent/held-%d\n" % n)
    f.flush()
    fcntl.flock(f, fcntl.LOCK_EX)
    held.append(f)
print("ready", flush=True)
time.sleep(60)
"#;

/// Finding 5f: what a user's own directory holds that is not a run (a FIFO
/// or a link under a socket's name) and names made for other uids in /tmp
/// pass without a warning; a refused directory makes `list` and `cleanup`
/// fail; a run's name in `list --json` cannot reorder the line; and
/// XDG_RUNTIME_DIR=/run is pointed out, not root's /run/throttle.
#[test]
fn junk_is_passed_over_quietly_and_refusals_are_not() {
    let Some(_serial) = harness::start("junk_is_passed_over_quietly_and_refusals_are_not") else {
        return;
    };
    let (a, b) = (TestUser::create("a"), TestUser::create("b"));
    let (a_dir, b_dir) = (tmp_dir_of(&a), tmp_dir_of(&b));
    let fixed = PathBuf::from(format!("/tmp/throttle-{}", a.uid));
    drop(Planted(fixed.clone()));
    let fixed = Planted(fixed);
    ok(
        "planting",
        &b.sh(&format!(
            "set -e; mkdir -m 700 {b} {fixed} {a}; cd {b}; mkfifo x.sock; ln -s /run/throttle/t-q.sock y.sock",
            a = a_dir.0.display(),
            b = b_dir.0.display(),
            fixed = fixed.0.display(),
        ))
        .output()
        .unwrap(),
    );
    let run = root_run("t-q");
    let list = run_bounded(throttle().arg("list"));
    assert_eq!(list.status.code(), Some(0), "{}", harness::stderr(&list));
    assert_eq!(harness::stderr(&list), "", "warnings for junk");
    run.stop();

    // A directory of the user's own that is open to others is refused:
    // list and cleanup say so and fail.
    let np = Unprivileged::new("rf");
    let xdg = Planted(PathBuf::from(format!(
        "/tmp/thr-xdg-{}",
        std::process::id()
    )));
    fs::create_dir_all(xdg.0.join("throttle")).unwrap();
    Command::new("chown")
        .args(["-R", &np.user.name])
        .arg(&xdg.0)
        .status()
        .unwrap();
    fs::set_permissions(&xdg.0, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(xdg.0.join("throttle"), fs::Permissions::from_mode(0o755)).unwrap();
    np.setcap("cap_bpf,cap_perfmon,cap_net_admin");
    for (what, args, code) in [
        ("list", &["list"][..], 7),
        ("cleanup", &["cleanup"][..], 125),
    ] {
        let output = run_bounded(np.throttle(args).env("XDG_RUNTIME_DIR", &xdg.0));
        let said = harness::stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{what}: {said}");
        assert!(said.contains("is open to other users"), "{what}: {said}");
    }
    let output = run_bounded(np.throttle(&["--", "true"]).env("XDG_RUNTIME_DIR", "/run"));
    let said = harness::stderr(&output);
    assert_eq!(output.status.code(), Some(125), "{said}");
    assert!(
        said.contains("XDG_RUNTIME_DIR=/run is not your own runtime directory"),
        "{said}"
    );
    assert!(!said.contains("remove it"), "{said}");
    assert_clean("t-q");
}
