//! The host against components built here from WAT (core modules lifted into
//! `carnet:enricher` components in-process): only declared fields reach a plugin, undeclared
//! writes are refused, and hostile plugins — an infinite loop, a memory bomb, deep recursion, a
//! 100 MB output, a trap — each fail alone within the limits while others keep working.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carnet_plugin_host::{Host, Limits, Manifest, RunError};

#[path = "support/wat.rs"]
mod wat_components;

use wat_components::*;

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
        ("huge", HUGE_OUTPUT, |e| matches!(e, RunError::OutputTooLarge(n) if *n >= 100_000_000)),
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
