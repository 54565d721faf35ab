//! `carnet plugin check` and `carnet plugin run`, as a plugin author uses them on what
//! `cargo build --target wasm32-unknown-unknown` produced.

#[path = "../../../plugins/host/tests/support/guest.rs"]
mod guest;

use std::process::Command;

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");

#[test]
fn test_plugin_check_and_run_on_the_example_module() {
    let Some(module) = guest::module("company-from-domain") else { return };
    let manifest = guest::manifest_path("company-from-domain");
    let check =
        Command::new(CARNET).args(["plugin", "check"]).arg(&module).arg("--manifest").arg(&manifest).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let info: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(info["plugin"], "company-from-domain@1.0.0");
    assert_eq!(info["reads"], serde_json::json!(["email"]));

    let run = Command::new(CARNET)
        .args(["plugin", "run"])
        .arg(&module)
        .arg("--manifest")
        .arg(&manifest)
        .args(["--input", r#"{"email": "grace@hopper-labs.com", "first_name": "Grace"}"#])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["updates"], serde_json::json!({"company": "Hopper Labs"}));
    assert_eq!(out["read"], serde_json::json!(["email"]));

    // A manifest the component does not satisfy, or a broken one, is refused by name.
    let bad = std::env::temp_dir().join(format!("carnet-bad-manifest-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(&manifest).unwrap().replace("api_version = \"0.1.0\"", "api_version = \"9.9.9\""),
    )
    .unwrap();
    let refused =
        Command::new(CARNET).args(["plugin", "check"]).arg(&module).arg("--manifest").arg(&bad).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("api_version"));
    let _ = std::fs::remove_file(bad);
    let not_wasm = Command::new(CARNET)
        .args(["plugin", "check"])
        .arg(&manifest)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(!not_wasm.status.success());
    assert!(String::from_utf8_lossy(&not_wasm.stderr).contains("not a WebAssembly"));
}

#[test]
fn test_plugin_check_shows_a_profiling_plugin_and_run_scores() {
    let Some(module) = guest::module("lead-score") else { return };
    let manifest = guest::manifest_path("lead-score");
    let check =
        Command::new(CARNET).args(["plugin", "check"]).arg(&module).arg("--manifest").arg(&manifest).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let info: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(info["plugin"], "lead-score@1.0.0");
    assert_eq!(info["profiling"], true);
    assert_eq!(info["purposes"], serde_json::json!(["profiling"]));
    assert_eq!(info["writes"], serde_json::json!(["lead_score"]));

    let run = Command::new(CARNET)
        .args(["plugin", "run"])
        .arg(&module)
        .arg("--manifest")
        .arg(&manifest)
        .args(["--input", r#"{"email": "grace@hopper-labs.com", "job_title": "Head of Research", "phone": "+1"}"#])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["updates"], serde_json::json!({"lead_score": "60"}));
    assert_eq!(out["read"], serde_json::json!(["email", "job_title"]));
}
