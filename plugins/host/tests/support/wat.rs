//! Hostile and minimal `carnet:enricher` components written in WAT and lifted in-process, for
//! the host's tests and the enrichment service's (included with `#[path]`).

#![allow(dead_code)]

/// The canonical-ABI plumbing every test module shares: memory, a bump `cabi_realloc`, and the
/// return area at 16 (`result<list<field>, enrich-error>`: tag at 16, payload at 20..32).
pub const PRELUDE: &str = r#"
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

pub fn component(body: &str) -> Vec<u8> {
    let wat = format!("(module {PRELUDE} {body})");
    let mut module = wat::parse_str(&wat).expect("valid wat");
    let mut resolve = wit_parser::Resolve::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("plugins/wit"))
        .find(|d| d.is_dir())
        .expect("plugins/wit");
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
pub const ECHO: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32)
    i32.const 16 i32.const 0 i32.store8
    i32.const 20 local.get 0 i32.store
    i32.const 24 local.get 1 i32.store
    i32.const 16)
"#;

/// Returns `ok([{key: "salary", value: "1"}])`.
pub const WRITES_SALARY: &str = r#"
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

/// Returns `ok(list)` of 50 fields `company` whose values all point at the same 2,000,000 bytes:
/// 100 MB of output from 2 MB of memory. The host refuses it and the run fails alone.
pub const HUGE_OUTPUT: &str = r#"
  (data (i32.const 100) "company")
  (func (export "enrich") (param i32 i32) (result i32)
    (local $i i32)
    (drop (memory.grow (i32.const 40)))
    (block $done
      (loop $fill
        local.get $i i32.const 50 i32.ge_u br_if $done
        ;; field i at 200 + 16 * i: key (100, 7), value (131072, 2000000)
        i32.const 200 local.get $i i32.const 16 i32.mul i32.add i32.const 100 i32.store
        i32.const 204 local.get $i i32.const 16 i32.mul i32.add i32.const 7 i32.store
        i32.const 208 local.get $i i32.const 16 i32.mul i32.add i32.const 131072 i32.store
        i32.const 212 local.get $i i32.const 16 i32.mul i32.add i32.const 2000000 i32.store
        local.get $i i32.const 1 i32.add local.set $i
        br $fill))
    i32.const 16 i32.const 0 i32.store8
    i32.const 20 i32.const 200 i32.store
    i32.const 24 i32.const 50 i32.store
    i32.const 16)
"#;

pub const INFINITE_LOOP: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32)
    (loop $l br $l)
    unreachable)
"#;

pub const MEMORY_BOMB: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32)
    (loop $l (drop (memory.grow (i32.const 16))) br $l)
    unreachable)
"#;

pub const DEEP_RECURSION: &str = r#"
  (func $down (param i32) (result i32) local.get 0 i32.const 1 i32.add call $down)
  (func (export "enrich") (param i32 i32) (result i32) i32.const 0 call $down)
"#;

pub const TRAP: &str = r#"
  (func (export "enrich") (param i32 i32) (result i32) unreachable)
"#;
