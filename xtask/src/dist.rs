//! `cargo xtask dist`: what a user installs. A static x86_64 binary (musl,
//! with the eBPF object embedded, so one file runs on any distribution) and
//! a Debian package of it with the man page and the bash, zsh and fish
//! completions, whose maintainer scripts grant the file capabilities that
//! let ordinary users run it without sudo.
//!
//! The package is assembled here and built by `dpkg-deb`, not by cargo-deb:
//! the binary must come from the musl build and the man page and completions
//! from the CLI definition, so the tree is ours to lay out either way, and
//! dpkg-deb is on every Debian host that would install the result.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap_complete::Shell;

/// The target of the static build.
const TARGET: &str = "x86_64-unknown-linux-musl";

/// The capabilities the package grants, as `throttle doctor` and the
/// docs/without-root.md name them for kernels 5.8 and later.
const CAPABILITIES: &str = "cap_bpf,cap_perfmon,cap_net_admin+ep";

/// Builds the static binary and the Debian package into `target/dist`;
/// returns the package.
pub fn run(root: &Path) -> Result<PathBuf> {
    let out = root.join("target/dist");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let built = build_static(root)?;
    let version = version_of(&built)?;
    let version = version.as_str();
    let binary = out.join(format!("throttle-{version}-x86_64-linux-musl"));
    fs::copy(&built, &binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    run_tool(Command::new("strip").arg(&binary))?;
    ensure!(
        !has_interpreter(&fs::read(&binary)?),
        "{} asks for a dynamic loader; the musl build should be static",
        binary.display()
    );

    let tree = out.join(format!("throttle_{version}_amd64"));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    lay_out_package(&tree, &binary, version)?;
    let deb = out.join(format!("throttle_{version}_amd64.deb"));
    run_tool(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&tree)
            .arg(&deb),
    )?;
    println!("wrote {}\nwrote {}", binary.display(), deb.display());
    Ok(deb)
}

/// `cargo build --release` for [`TARGET`]; returns the binary.
fn build_static(root: &Path) -> Result<PathBuf> {
    let status = crate::cargo()
        .args(["build", "--release", "--quiet", "--package", "throttle"])
        .args(["--bin", "throttle", "--target", TARGET])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(
        status.success(),
        "building the static throttle failed; scripts/setup.sh adds the {TARGET} target and musl-tools"
    );
    Ok(root.join(format!("target/{TARGET}/release/throttle")))
}

/// The version the binary reports, e.g. `0.1.0` from `throttle 0.1.0`.
fn version_of(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix("throttle ")
        .map(str::to_string)
        .with_context(|| format!("{} --version printed '{}'", binary.display(), text.trim()))
}

/// Whether an ELF file names a program interpreter (PT_INTERP), i.e. is
/// dynamically linked.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..usize::from(count))
        .map(|i| phoff as usize + i * usize::from(size))
        .any(|header| u32_at(header) == Some(PT_INTERP))
}

/// Grants the capabilities on install. A failure (a filesystem without
/// extended attributes, say) leaves a throttle only root can use, which is
/// worth a warning and not a failed install.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! setcap CAPABILITIES /usr/bin/throttle; then
        echo "throttle: could not set file capabilities on /usr/bin/throttle; only root can run it ('throttle doctor' says what is missing)" >&2
    fi
fi
"#;

/// Before the binary goes, it sweeps what dead runs left (cgroups, records);
/// live runs are left alone and clean up after themselves.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -x /usr/bin/throttle ]; then
    /usr/bin/throttle cleanup >/dev/null 2>&1 || true
fi
"#;

/// Once removed, the directories runs shared, if no run holds them.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    for dir in /run/throttle /sys/fs/cgroup/throttle /sys/fs/cgroup/unified/throttle; do
        rmdir "$dir" 2>/dev/null || true
    done
fi
"#;

/// Where each shell looks for a package's completions.
const COMPLETIONS: [(Shell, &str); 3] = [
    (
        Shell::Bash,
        "usr/share/bash-completion/completions/throttle",
    ),
    (Shell::Zsh, "usr/share/zsh/vendor-completions/_throttle"),
    (
        Shell::Fish,
        "usr/share/fish/vendor_completions.d/throttle.fish",
    ),
];

/// Lays out the package's tree in `tree`: the files, then DEBIAN/.
fn lay_out_package(tree: &Path, binary: &Path, version: &str) -> Result<()> {
    let install = |relative: &str, contents: &[u8], mode: u32| -> Result<()> {
        let path = tree.join(relative);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))
    };
    let executable = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    install("usr/bin/throttle", &executable, 0o755)?;
    install("usr/share/man/man1/throttle.1", &crate::man_page(), 0o644)?;
    run_tool(
        Command::new("gzip")
            .args(["-9n"])
            .arg(tree.join("usr/share/man/man1/throttle.1")),
    )?;
    for (shell, relative) in COMPLETIONS {
        install(relative, &crate::completion(shell), 0o644)?;
    }
    install(
        "usr/share/doc/throttle/copyright",
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: throttle\n\n\
             Files: *\nLicense: {}\n",
            env!("CARGO_PKG_LICENSE")
        )
        .as_bytes(),
        0o644,
    )?;

    let installed_kib = installed_size(tree)?.div_ceil(1024);
    install(
        "DEBIAN/control",
        format!(
            "Package: throttle\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: throttle developers <throttle@localhost>\n\
             Depends: libcap2-bin\n\
             Section: net\n\
             Priority: optional\n\
             Installed-Size: {installed_kib}\n\
             Description: run one command with its network bandwidth limited\n \
             Limits the download and upload bandwidth of one command and everything\n \
             it starts, in the kernel (cgroup v2 and eBPF), and changes the limits of\n \
             a running command. Installed with file capabilities, so ordinary users\n \
             run it without sudo.\n",
        )
        .as_bytes(),
        0o644,
    )?;
    install(
        "DEBIAN/postinst",
        POSTINST.replace("CAPABILITIES", CAPABILITIES).as_bytes(),
        0o755,
    )?;
    install("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    install("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)
}

/// The bytes of the regular files under `dir`.
fn installed_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += installed_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// Runs a packaging or image-building tool; fails naming it if it fails.
pub fn run_tool(command: &mut Command) -> Result<()> {
    let name = command.get_program().to_string_lossy().into_owned();
    let status = command
        .status()
        .with_context(|| format!("running {name}; scripts/setup.sh installs it"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_or_no_elf_at_all_is_not_static() {
        let this = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(
            has_interpreter(&this),
            "the test binary is dynamically linked"
        );
        assert!(has_interpreter(b"not an ELF file"));
    }
}
