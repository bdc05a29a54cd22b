//! Release builds link with the Rust toolchain's lld and the order in
//! `src/hot-code.order`, so the functions a serving homeserver runs sit
//! together and only their pages of code become resident (see
//! `scripts/order-hot-code` and docs/performance.md). Debug builds keep the
//! configured linker (mold): the order only matters for memory.

use std::{path::PathBuf, process::Command};

const ORDER: &str = "src/hot-code.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !release || !linux {
        return;
    }
    let Some(lld_dir) = toolchain_lld_dir() else {
        println!("cargo:warning=no lld in the Rust toolchain: linking without the hot-code order");
        return;
    };
    let order = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(ORDER);
    if !order.exists() {
        return;
    }
    // gcc takes the last -fuse-ld, so this overrides the mold of .cargo/config.toml.
    println!("cargo:rustc-link-arg-bins=-B{}", lld_dir.display());
    println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The `gcc-ld` directory of the toolchain's sysroot, whose `ld.lld` runs
/// the `rust-lld` shipped with every rustup toolchain.
fn toolchain_lld_dir() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    let host = std::env::var("HOST").ok()?;
    let dir = sysroot.join("lib/rustlib").join(host).join("bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}
