use anyhow::Context as _;
use aya_build::{Package, Toolchain};

// Builds the eBPF object for the BPF target with nightly and bpf-linker (the
// set-up script installs both) and leaves it in OUT_DIR for include_bytes!.
fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "throttle-ebpf",
        root_dir: "ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
        .context("building the eBPF programs failed; run scripts/setup.sh to install nightly rust-src and bpf-linker")?;
    println!("cargo:rerun-if-changed=common/src");
    Ok(())
}
