#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test throttle. Idempotent:
# every step checks first, so a second run only costs the checks.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "must run as root (apt-get and BPF need it); try: sudo $0"
        exit 1
    fi
}

# Debian packages: LLVM 22 for bpf-linker, iproute2 for the test namespaces,
# bpftool for inspecting attachments, the benchmark's peers, a font for its
# plot, aria2 for the benchmark's parallel ranged downloads, and strace and
# python3 for the security tests (a stalled set-up, a fake run served by
# another user).
APT_PACKAGES=(llvm-22-dev iproute2 bpftool iperf3 trickle curl aria2 fonts-dejavu-core strace python3)
# setcap, for the tests of runs without root.
APT_PACKAGES+=(libcap2-bin)
# The kernel lab (cargo xtask vm, vm-test): qemu, what virtme-ng needs (kmod
# for depmod, busybox for its initramfs, a venv to install it in), and tini
# to reap orphans in the guest, whose init does not.
APT_PACKAGES+=(qemu-system-x86 kmod busybox-static tini python3-venv iputils-ping)
# cargo xtask dist (musl's C toolchain for the static binary) and
# install-test (mmdebstrap builds the Debian 12 system image, qemu-img its
# throwaway overlays).
APT_PACKAGES+=(musl-tools mmdebstrap qemu-utils)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    need_root
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain (the eBPF crate needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

if ! rustup target list --installed | grep -q '^x86_64-unknown-linux-musl$'; then
    log "adding the x86_64-unknown-linux-musl target (cargo xtask dist)"
    rustup target add x86_64-unknown-linux-musl
fi

# .ci/run holds the house rules with rustfmt and clippy.
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        log "adding $component"
        rustup component add "$component"
    fi
done

if ! command -v bpf-linker >/dev/null 2>&1; then
    log "building bpf-linker against LLVM 22 (a few minutes, once)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker \
        --no-default-features --features llvm-22
fi

# Debian's own kernels for the lab, unpacked (not installed) into a cache
# outside the checkout, so fresh clones share them: 6.1 (Debian 12's
# default) and 6.12 (its LTS option), as the meta-packages name them now.
LAB=/var/lib/throttle-lab
if [ ! -x "$LAB/venv/bin/vng" ]; then
    need_root
    log "installing virtme-ng into $LAB/venv"
    mkdir -p "$LAB"
    /usr/bin/python3 -m venv "$LAB/venv"
    "$LAB/venv/bin/pip" install --quiet virtme-ng
fi
for meta in linux-image-amd64 linux-image-6.12-amd64; do
    pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        log "apt knows no kernel behind $meta; run: apt-get update"
        exit 1
    fi
    if [ ! -d "$LAB/kernels/$pkg/boot" ]; then
        need_root
        log "downloading and unpacking $pkg into $LAB/kernels"
        mkdir -p "$LAB/kernels"
        (cd "$LAB/kernels" && apt-get download -qq "$pkg" 2>/dev/null && dpkg -x "$pkg"_*.deb "$pkg" && rm -f "$pkg"_*.deb)
    fi
done

log "ready"
