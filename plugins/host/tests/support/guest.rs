//! Builds the example plugins from source into components, as a plugin author would: Rust for
//! `wasm32-unknown-unknown` with Debian's `rustc-web` (rustup cannot add wasm targets on these
//! machines, see ../shared/TOOLCHAIN.md), then lifted into a component with wit-component.
//!
//! The examples are one cargo workspace (plugins/examples, over the SDK in plugins/sdk): the
//! first call in a test process builds all of them, later calls reuse that build. Included with
//! `#[path]` by the tests of several crates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const RUSTC: &str = "/usr/bin/rustc";
const CARGO: &str = "/usr/bin/cargo";
const WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";
const TARGET: &str = "wasm32-unknown-unknown";

/// The outcome of this process's one build of the examples workspace: the directory holding the
/// modules, or why the build failed (every caller then fails with it).
static BUILD: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The component of example `name` (plugins/examples/<name>), or `None` (skipped) when the wasm
/// toolchain is missing and `CARNET_REQUIRE_WASM` is not 1.
#[allow(dead_code)]
pub fn component(name: &str) -> Option<Vec<u8>> {
    let wasm = module(name)?;
    Some(carnet_plugin_host::componentize(&std::fs::read(&wasm).expect("the built module")).expect("a component"))
}

/// Builds the examples (once per process) and returns the path of example `name`'s core module
/// (as `cargo build` leaves it), or `None` as [`component`] does.
#[allow(dead_code)]
pub fn module(name: &str) -> Option<PathBuf> {
    if !toolchain_present() {
        return None;
    }
    let dir = match BUILD.get_or_init(build_examples) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let wasm = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(wasm.is_file(), "no example plugin named {name} (expected {})", wasm.display());
    Some(wasm)
}

/// The manifest beside example `name`.
#[allow(dead_code)]
pub fn manifest(name: &str) -> String {
    let path = manifest_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// The path of the manifest beside example `name` (plugins/examples/<name>/carnet-plugin.toml).
#[allow(dead_code)]
pub fn manifest_path(name: &str) -> PathBuf {
    examples_dir().join(name).join("carnet-plugin.toml")
}

/// Whether Debian's rustc and wasm-ld are installed; panics when they are not and
/// `CARNET_REQUIRE_WASM=1` (so a CI run cannot skip silently).
fn toolchain_present() -> bool {
    if Path::new(RUSTC).exists() && Path::new(CARGO).exists() && Path::new(WASM_LD).exists() {
        return true;
    }
    assert!(
        std::env::var("CARNET_REQUIRE_WASM").as_deref() != Ok("1"),
        "CARNET_REQUIRE_WASM=1 but the wasm toolchain is missing (apt-get install rustc-web cargo-web rust-web-src lld-22)"
    );
    eprintln!("skipped: no wasm toolchain (run the README's test command)");
    false
}

/// Runs `cargo build --release --workspace` in plugins/examples with Debian's toolchain, in its
/// own target dir and cargo home under the host's `target/` (so it never fights the host build;
/// cargo's own locks serialise concurrent test processes).
fn build_examples() -> Result<PathBuf, String> {
    let target = root().join("target");
    let target_dir = target.join("guest");
    let mut cmd = Command::new(CARGO);
    // The test runs under rustup's cargo: none of its settings may leak into Debian's.
    for (key, _) in std::env::vars() {
        if ["CARGO", "RUSTUP", "RUSTC", "RUSTFLAGS", "RUSTDOCFLAGS"].iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .current_dir(examples_dir())
        .args(["build", "--release", "--workspace", "--locked", "--target", TARGET, "-Zbuild-std=std,panic_abort"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", "/usr/bin:/bin")
        .env("RUSTC", RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_HOME", target.join("guest-cargo-home"))
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", WASM_LD)
        .status()
        .map_err(|e| format!("failed to run {CARGO}: {e}"))?;
    if !status.success() {
        return Err(format!("building the example plugins (plugins/examples) failed: {status}"));
    }
    Ok(target_dir.join(TARGET).join("release"))
}

/// The examples workspace.
fn examples_dir() -> PathBuf {
    root().join("plugins/examples")
}

/// The repository root: the first directory above the including crate that holds
/// plugins/examples (this file is included by tests of several crates).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("plugins/examples/Cargo.toml").is_file())
        .expect("the repository root (a directory holding plugins/examples)")
        .to_path_buf()
}
