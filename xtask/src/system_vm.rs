//! `cargo xtask install-test`: the Debian package in a real distribution.
//! A Debian 12 system (systemd as PID 1, pure cgroup v2, PAM and logind,
//! Debian's own 6.1 kernel and initramfs), built once with mmdebstrap from
//! Debian's packages and cached under [`crate::vm::CACHE`], boots under qemu
//! from a throwaway overlay; a unit in it runs `guest/install-test.sh` from
//! a directory shared with the host, which holds the package too.
//!
//! The kernel lab ([`crate::vm`]) boots kernels on this machine's own root
//! filesystem, whose init is a script: it cannot show what an installed
//! throttle does for users whose sessions systemd manages.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::dist::run_tool;

/// The longest the guest may run before it is stopped.
const LIMIT: Duration = Duration::from_secs(900);

/// What the image holds beyond a minimal Debian: systemd as init with
/// logind sessions (libpam-systemd) and user managers on a user bus, the
/// kernel with its initramfs, and the tools the script uses (bpftool to
/// prove no program is left loaded; podman and a static busybox for a
/// container to attach to, run from a directory since no registry is
/// reachable).
const PACKAGES: &str = "systemd-sysv,libpam-systemd,dbus,dbus-user-session,linux-image-amd64,\
initramfs-tools,udev,kmod,iproute2,procps,curl,python3,libcap2-bin,bpftool,podman,busybox-static";

/// Mounts the shared directory, runs its script, records the exit status
/// and powers the guest off.
const UNIT: &str = "[Unit]
Description=Runs the host's script from the shared directory, then powers off
After=multi-user.target

[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /lab
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L lab /lab
ExecStart=/bin/sh -c '/lab/guest.sh > /lab/log 2>&1; echo $? > /lab/status'
ExecStopPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
";

const SCRIPT: &str = include_str!("../guest/install-test.sh");

/// The cached system: its root filesystem and the kernel and initramfs
/// that boot it.
struct Image {
    rootfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The image, built first if missing or built from another recipe.
fn image() -> Result<Image> {
    let dir = Path::new(crate::vm::CACHE).join("debian12");
    let image = Image {
        rootfs: dir.join("rootfs.img"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    let recipe = format!("{PACKAGES}\n{UNIT}");
    let stamp = dir.join("recipe");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(recipe.as_str()) {
        return Ok(image);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    eprintln!("install-test: building the Debian 12 image with mmdebstrap (about a minute, once)");
    run_tool(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase", "--mode=root"])
            .arg(format!("--include={PACKAGES}"))
            .arg("bookworm")
            .arg(&tree)
            .arg("http://deb.debian.org/debian"),
    )?;
    let write = |relative: &str, contents: &str| -> Result<()> {
        let path = tree.join(relative);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    write("etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")?;
    write("etc/hostname", "throttle-lab\n")?;
    write("etc/systemd/system/throttle-lab.service", UNIT)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/throttle-lab.service",
        tree.join("etc/systemd/system/multi-user.target.wants/throttle-lab.service"),
    )
    .context("enabling throttle-lab.service")?;
    for (link, to) in [("vmlinuz", &image.kernel), ("initrd.img", &image.initrd)] {
        // The root's vmlinuz and initrd.img are links into /boot.
        let target = fs::read_link(tree.join(link))
            .with_context(|| format!("reading the image's /{link}"))?;
        fs::copy(tree.join(target.strip_prefix("/").unwrap_or(&target)), to)
            .with_context(|| format!("copying the image's /{}", target.display()))?;
    }
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "root", "-d"])
            .arg(&tree)
            .arg(&image.rootfs)
            .arg("3G"),
    )?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    fs::write(&stamp, recipe).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(image)
}

/// Builds the package, boots the image with it and runs the script; fails
/// if any check in the guest failed.
pub fn test(root: &Path) -> Result<()> {
    let deb = crate::dist::run(root)?;
    let image = image()?;
    let shared = crate::vm::tempdir()?;
    let result = boot(&image, &shared, &deb);
    let _ = fs::remove_dir_all(&shared);
    let (status, log, took) = result?;
    print!("{log}");
    println!(
        "install-test: the guest ran for {:.0} s",
        took.as_secs_f64()
    );
    match status {
        Some(0) => Ok(()),
        Some(code) => bail!("install-test failed in the guest (exit status {code})"),
        None => bail!("the guest ended before its script did"),
    }
}

/// Boots `image` from an overlay in `shared`, with `deb` and the script
/// there; returns the script's exit status (if it finished) and its output,
/// or the end of the console if it did not.
fn boot(image: &Image, shared: &Path, deb: &Path) -> Result<(Option<i32>, String, Duration)> {
    fs::copy(deb, shared.join("throttle.deb")).context("sharing the package")?;
    let script = shared.join("guest.sh");
    fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let overlay = shared.join("overlay.qcow2");
    run_tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.rootfs)
            .arg(&overlay),
    )?;
    let accel = if crate::vm::kvm_usable() {
        "kvm"
    } else {
        "tcg"
    };
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", &format!("accel={accel}"), "-cpu", "max"])
        .args([
            "-smp",
            "2",
            "-m",
            "2G",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=lab,security_model=none",
            shared.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64; run scripts/setup.sh")?;
    let started = Instant::now();
    let console = crate::netlab::wait_with_timeout(child, LIMIT);
    let took = started.elapsed();
    let (status, log) = crate::vm::collect(&shared.join("log"), &shared.join("status"), &console);
    Ok((status, log, took))
}
