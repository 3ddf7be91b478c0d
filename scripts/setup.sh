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
# plot, and strace and python3 for the security tests (a stalled set-up, a
# fake run served by another user).
APT_PACKAGES=(llvm-22-dev iproute2 bpftool iperf3 trickle curl fonts-dejavu-core strace python3)

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

if ! command -v bpf-linker >/dev/null 2>&1; then
    log "building bpf-linker against LLVM 22 (a few minutes, once)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker \
        --no-default-features --features llvm-22
fi

log "ready"
