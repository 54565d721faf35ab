//! Builds the example plugins from source into components, as a plugin author would: Rust for
//! `wasm32-unknown-unknown` with Debian's `rustc-web` (rustup cannot add wasm targets on these
//! machines, see ../shared/TOOLCHAIN.md), then lifted into a component with wit-component.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const RUSTC: &str = "/usr/bin/rustc";
const CARGO: &str = "/usr/bin/cargo";
const WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";

/// One guest build at a time (they share a target dir).
static BUILDS: Mutex<()> = Mutex::new(());

/// The component of example `name` (plugins/examples/<name>), or `None` (skipped) when the wasm
/// toolchain is missing and `CARNET_REQUIRE_WASM` is not 1.
#[allow(dead_code)]
pub fn component(name: &str) -> Option<Vec<u8>> {
    let wasm = module(name)?;
    Some(carnet_plugin_host::componentize(&std::fs::read(&wasm).expect("the built module")).expect("a component"))
}

/// Builds example `name` and returns the path of its core module (as `cargo build` leaves it).
#[allow(dead_code)]
pub fn module(name: &str) -> Option<PathBuf> {
    if !Path::new(RUSTC).exists() || !Path::new(WASM_LD).exists() {
        assert!(
            std::env::var("CARNET_REQUIRE_WASM").as_deref() != Ok("1"),
            "CARNET_REQUIRE_WASM=1 but the wasm toolchain is missing (apt-get install rustc-web cargo-web rust-web-src lld-22)"
        );
        eprintln!("skipped: no wasm toolchain (run the README's test command)");
        return None;
    }
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let plugins = root().join("plugins");
    let workspace_target = root().join("target");
    let example = plugins.join("examples").join(name);
    let target_dir = workspace_target.join("guest");
    let mut cmd = Command::new(CARGO);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO") || key.starts_with("RUSTUP") || key == "RUSTFLAGS" || key == "RUSTC_WRAPPER" {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .current_dir(&example)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "-Zbuild-std=std,panic_abort"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", "/usr/bin:/bin")
        .env("RUSTC", RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_HOME", workspace_target.join("guest-cargo-home"))
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", WASM_LD)
        .status()
        .expect("run Debian's cargo");
    assert!(status.success(), "building the example plugin {name} failed");
    Some(target_dir.join("wasm32-unknown-unknown/release").join(format!("{}.wasm", name.replace('-', "_"))))
}

/// The workspace root (this file is included by tests of several crates).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("plugins/examples").is_dir())
        .expect("the workspace root")
        .to_path_buf()
}

/// The manifest beside example `name`.
#[allow(dead_code)]
pub fn manifest(name: &str) -> String {
    let path = root().join("plugins/examples").join(name).join("carnet-plugin.toml");
    std::fs::read_to_string(path).expect("the example's manifest")
}
