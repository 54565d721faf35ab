//! The host against components built here from WAT (core modules lifted into
//! `carnet:enricher` components in-process): only declared fields reach a plugin, undeclared
//! writes are refused, and hostile plugins — an infinite loop, a memory bomb, deep recursion, an
//! oversized output, a trap — each fail alone within the limits while others keep working.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carnet_plugin_host::{Host, Limits, Manifest, RunError};

/// The canonical-ABI plumbing every test module shares: memory, a bump `cabi_realloc`, and the
/// return area at 16 (`result<list<field>, enrich-error>`: tag at 16, payload at 20..32).
const PRELUDE: &str = r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    global.get $heap
    local.get 2 i32.const 1 i32.sub i32.add
    local.get 2 i32.const 1 i32.sub i32.const -1 i32.xor i32.and
    local.set $p
    local.get $p local.get 3 i32.add global.set $heap
    (block $ok
      global.get $heap memory.size i32.const 65536 i32.mul i32.le_u br_if $ok
      global.get $heap memory.size i32.const 65536 i32.mul i32.sub
      i32.const 65535 i32.add i32.const 65536 i32.div_u memory.grow drop)
    local.get $p)
"#;

fn component(body: &str) -> Vec<u8> {
    let wat = format!("(module {PRELUDE} {body})");
    let mut module = wat::parse_str(&wat).expect("valid wat");
    let mut resolve = wit_parser::Resolve::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let (pkg, _) = resolve.push_dir(&dir).expect("the WIT package parses");
    let world = resolve.select_world(&[pkg], Some("enricher")).expect("world");
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8, false)
        .expect("metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("component")
}

/// Returns `ok(input)`: what it saw.
const ECHO: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32)
    i32.const 16 i32.const 0 i32.store8
    i32.const 20 local.get 0 i32.store
    i32.const 24 local.get 1 i32.store
    i32.const 16)
"#;

/// Returns `ok([{key: "salary", value: "1"}])`.
const WRITES_SALARY: &str = r#"
  (data (i32.const 100) "salary1")
  (func (export "enrich") (param i32 i32) (result i32)
    i32.const 200 i32.const 100 i32.store
    i32.const 204 i32.const 6 i32.store
    i32.const 208 i32.const 106 i32.store
    i32.const 212 i32.const 1 i32.store
    i32.const 16 i32.const 0 i32.store8
    i32.const 20 i32.const 200 i32.store
    i32.const 24 i32.const 1 i32.store
    i32.const 16)
"#;

/// Returns `ok([{key: "company", value: <2,000,000 NUL bytes>}])`.
const HUGE_OUTPUT: &str = r#"
  (data (i32.const 100) "company")
  (func (export "enrich") (param i32 i32) (result i32)
    (drop (memory.grow (i32.const 40)))
    i32.const 200 i32.const 100 i32.store
    i32.const 204 i32.const 7 i32.store
    i32.const 208 i32.const 131072 i32.store
    i32.const 212 i32.const 2000000 i32.store
    i32.const 16 i32.const 0 i32.store8
    i32.const 20 i32.const 200 i32.store
    i32.const 24 i32.const 1 i32.store
    i32.const 16)
"#;

const INFINITE_LOOP: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32)
    (loop $l br $l)
    unreachable)
"#;

const MEMORY_BOMB: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32)
    (loop $l (drop (memory.grow (i32.const 16))) br $l)
    unreachable)
"#;

const DEEP_RECURSION: &str = r#"
  (func $down (param i32) (result i32) local.get 0 i32.const 1 i32.add call $down)
  (func (export "enrich") (param i32 i32) (result i32) i32.const 0 call $down)
"#;

const TRAP: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32) unreachable)
"#;

fn manifest(name: &str, reads: &[&str], writes: &[&str]) -> Manifest {
    Manifest {
        name: name.into(),
        version: "1.0.0".into(),
        api_version: "0.1.0".into(),
        reads: reads.iter().map(|s| s.to_string()).collect(),
        writes: writes.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        purposes: vec![],
        profiling: false,
        hosts: vec![],
    }
}

fn contact() -> BTreeMap<String, String> {
    [("email", "ada@example.org"), ("first_name", "Ada"), ("salary", "secret")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn host() -> Host {
    Host::new(Limits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_millis(200),
        max_output_bytes: 64 << 10,
        pool_size: 8,
        max_stack_bytes: 256 << 10,
    })
    .unwrap()
}

#[test]
fn test_a_plugin_sees_only_the_fields_it_declares() {
    let host = host();
    let echo = host.load(manifest("echo", &["email"], &["email", "first_name", "salary"]), &component(ECHO)).unwrap();
    let (seen, report) = host.run(&echo, &contact()).unwrap();
    assert_eq!(seen, vec![("email".to_string(), "ada@example.org".to_string())]);
    assert_eq!(report.read, vec!["email"]);
}

#[test]
fn test_undeclared_writes_are_refused() {
    let host = host();
    let p = host.load(manifest("sneaky", &["email"], &["company"]), &component(WRITES_SALARY)).unwrap();
    assert_eq!(host.run(&p, &contact()).unwrap_err(), RunError::UndeclaredWrite("salary".into()));
}

#[test]
fn test_hostile_plugins_fail_alone_within_the_limits() {
    let host = host();
    let echo = host.load(manifest("echo", &["first_name"], &["first_name"]), &component(ECHO)).unwrap();
    type Expect = fn(&RunError) -> bool;
    let cases: Vec<(&str, &str, Expect)> = vec![
        ("loop", INFINITE_LOOP, |e| *e == RunError::Timeout),
        ("bomb", MEMORY_BOMB, |e| *e == RunError::MemoryLimit),
        ("recursion", DEEP_RECURSION, |e| *e == RunError::StackOverflow),
        ("huge", HUGE_OUTPUT, |e| matches!(e, RunError::OutputTooLarge(n) if *n > 1_000_000)),
        ("trap", TRAP, |e| matches!(e, RunError::Trap(_))),
    ];
    for (name, body, expected) in cases {
        let p = host.load(manifest(name, &["email"], &["company"]), &component(body)).unwrap();
        let started = Instant::now();
        let err = host.run(&p, &contact()).unwrap_err();
        assert!(expected(&err), "{name}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
        // The host and the other plugins are unharmed.
        let (out, _) = host.run(&echo, &contact()).unwrap();
        assert_eq!(out, vec![("first_name".to_string(), "Ada".to_string())], "after {name}");
    }
}

#[test]
fn test_hostile_and_healthy_plugins_run_side_by_side() {
    let host = std::sync::Arc::new(host());
    let echo = std::sync::Arc::new(host.load(manifest("echo", &["email"], &["email"]), &component(ECHO)).unwrap());
    let looping =
        std::sync::Arc::new(host.load(manifest("loop", &["email"], &["email"]), &component(INFINITE_LOOP)).unwrap());
    let mut threads = Vec::new();
    for i in 0..8 {
        let (host, plugin) = (host.clone(), if i % 2 == 0 { echo.clone() } else { looping.clone() });
        threads.push(std::thread::spawn(move || host.run(&plugin, &contact()).map(|(o, _)| o)));
    }
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, r) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(r.as_ref().unwrap().len(), 1);
        } else {
            assert_eq!(r.as_ref().unwrap_err(), &RunError::Timeout);
        }
    }
}

#[test]
fn test_a_component_of_another_world_is_refused_at_load() {
    let host = host();
    let core_only = wat::parse_str("(module)").unwrap();
    assert!(host.load(manifest("empty", &["email"], &[]), &core_only).is_err());
}
