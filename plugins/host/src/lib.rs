//! carnet-plugin-host: runs enrichment and profiling plugins (WebAssembly components of the
//! `carnet:enricher` world, `plugins/wit`) inside hard limits.
//!
//! One [`Host`] holds the `Engine` (pooling allocator, epoch interruption driven by a ticker
//! thread) and one `Linker` for the WIT version it implements; [`Host::load`] checks a
//! component against the world and its manifest and keeps an `InstancePre`; every
//! [`Host::run`] gets a fresh `Store` with a memory limit, a deadline and an output cap, under a
//! semaphore the size of the pool. A plugin sees only the fields its manifest reads and may
//! write only those it declares; it has no filesystem, no sockets, no clock: only logging and a
//! host-mediated fetch limited to its declared hosts ([`FetchLimits`]). A trap, timeout, memory
//! overrun, oversized output or undeclared write fails that run alone.

mod fetch;
pub mod manifest;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder,
};

pub use fetch::FetchLimits;
pub use manifest::{Manifest, ManifestError};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "enricher",
    // A fetch that reaches the run's deadline ends the run (a trap), like a loop would.
    imports: { "carnet:enricher/http.fetch": trappable },
});

/// How often the epoch advances: the granularity of deadlines.
const TICK: Duration = Duration::from_millis(5);

/// The limits every run gets (the fetch has its own, [`FetchLimits`]).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory of one instance.
    pub memory_bytes: usize,
    /// Wall time of one call.
    pub timeout: Duration,
    /// Total bytes of the keys and values a call may return.
    pub max_output_bytes: usize,
    /// Instances alive at once (the pool size, and the semaphore's).
    pub pool_size: u32,
    /// Wasm stack of one call.
    pub max_stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_millis(500),
            max_output_bytes: 64 << 10,
            pool_size: 16,
            max_stack_bytes: 512 << 10,
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("manifest {0}")]
    Manifest(#[from] ManifestError),
    #[error("the component is not a valid carnet:enricher@0.1.0 component: {0}")]
    Component(String),
}

/// Why a run failed. Ids and sizes only: never the data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin ran past its deadline")]
    Timeout,
    #[error("the plugin went over its memory limit")]
    MemoryLimit,
    #[error("the plugin overflowed its stack")]
    StackOverflow,
    #[error("the plugin returned {0} bytes, more than its limit")]
    OutputTooLarge(usize),
    #[error("the plugin wrote `{0}`, which its manifest does not declare")]
    UndeclaredWrite(String),
    #[error("the plugin returned a value that is not allowed: {0}")]
    Malformed(String),
    #[error("the plugin declined: {0}")]
    Unsupported(String),
    #[error("the plugin's source was unavailable: {0}")]
    Unavailable(String),
    #[error("the plugin failed: {0}")]
    Failed(String),
    #[error("the host is shutting down")]
    Closed,
}

/// What a run produced, besides the values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Keys handed to the plugin.
    pub read: Vec<String>,
    /// Log lines the plugin wrote (their text is not kept).
    pub log_lines: u32,
    /// HTTP fetches the plugin sent (refused ones are not counted; URLs are not kept).
    pub fetches: u32,
}

/// The state of one run's store.
struct RunState {
    limits: StoreLimits,
    hosts: Vec<String>,
    log_lines: u32,
    outbound: Arc<fetch::Outbound>,
    /// When the run's timeout ends: no fetch may wait past it.
    deadline: Instant,
    fetches: u32,
}

impl carnet::enricher::types::Host for RunState {}

impl carnet::enricher::log::Host for RunState {
    fn log(&mut self, _level: carnet::enricher::log::Level, _message: String) {
        self.log_lines += 1;
    }
}

impl carnet::enricher::http::Host for RunState {
    /// Returns the plugin's answer in the inner result; an `Err` of the outer one traps: the
    /// run reached its deadline during the fetch.
    fn fetch(&mut self, url: String) -> wasmtime::Result<Result<carnet::enricher::http::Response, String>> {
        let limits = self.outbound.limits().clone();
        if self.fetches >= limits.max_fetches {
            return Ok(Err(format!("the plugin has used its {} fetches for this run", limits.max_fetches)));
        }
        let uri = match fetch::check_url(&url, &self.hosts, limits.allow_plain_http) {
            Ok(uri) => uri,
            Err(message) => return Ok(Err(message)),
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        self.fetches += 1;
        match self.outbound.get(uri, limits.timeout.min(left)) {
            fetch::Outcome::Answered(status, body) => Ok(Ok(carnet::enricher::http::Response { status, body })),
            fetch::Outcome::Failed(message) => Ok(Err(message)),
            fetch::Outcome::TimedOut if left <= limits.timeout => Err(wasmtime::Trap::Interrupt.into()),
            fetch::Outcome::TimedOut => Ok(Err(format!("the fetch timed out after {} ms", limits.timeout.as_millis()))),
        }
    }
}

/// A loaded plugin: its manifest and its pre-linked component.
pub struct Plugin {
    pub manifest: Manifest,
    pre: EnricherPre<RunState>,
}

/// The plugin host.
pub struct Host {
    engine: Engine,
    linker: Linker<RunState>,
    limits: Limits,
    slots: Arc<tokio_like::Semaphore>,
    stop: Arc<AtomicBool>,
    outbound: Arc<fetch::Outbound>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Host {
    /// Builds the engine (pooling allocator sized by `limits`, epoch interruption) and the linker,
    /// with the default [`FetchLimits`].
    pub fn new(limits: Limits) -> Result<Host, String> {
        Host::with_fetch_limits(limits, FetchLimits::default())
    }

    /// Builds the host as [`Host::new`] does, and the client of the plugins' HTTP fetch (its own
    /// thread and connection pool) with `fetch_limits`.
    pub fn with_fetch_limits(limits: Limits, fetch_limits: FetchLimits) -> Result<Host, String> {
        let outbound = Arc::new(fetch::Outbound::new(fetch_limits)?);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.pool_size)
            .total_core_instances(limits.pool_size * 2)
            .total_memories(limits.pool_size)
            .total_tables(limits.pool_size * 2)
            .max_memory_size(limits.memory_bytes);
        // Where the kernel can report which pages a run touched (PAGEMAP_SCAN, Linux 6.7+), keep
        // a slot's first pages resident and reset only those, instead of releasing them after
        // every run and faulting them in again: measured 22 → 11-12 µs per run (p50) and twice
        // the contacts per second (docs/benchmarks.md). Without it, keeping pages resident
        // means a memset of all of them per run, which is slower than releasing them.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(2 << 20)
                .table_keep_resident(64 << 10);
        }
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.max_stack_bytes)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("failed to build the wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        Enricher::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| format!("failed to link the host functions: {e}"))?;
        // The ticker holds only a weak handle: it ends when the host is dropped.
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop_ticker = stop.clone();
        std::thread::Builder::new()
            .name("carnet-plugin-epoch".into())
            .spawn(move || {
                while !stop_ticker.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| format!("failed to start the epoch ticker: {e}"))?;
        let slots = Arc::new(tokio_like::Semaphore::new(limits.pool_size as usize));
        Ok(Host { engine, linker, limits, slots, stop, outbound })
    }

    /// Compiles a component once, checks it against the world and keeps it ready to
    /// instantiate.
    pub fn load(&self, manifest: Manifest, component: &[u8]) -> Result<Plugin, LoadError> {
        manifest.check()?;
        let component = Component::new(&self.engine, component).map_err(|e| LoadError::Component(e.to_string()))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::Component(e.to_string()))?;
        let pre = EnricherPre::new(pre).map_err(|e| LoadError::Component(e.to_string()))?;
        Ok(Plugin { manifest, pre })
    }

    /// Runs `plugin` on a contact's `fields` (every field it has; only the declared reads are
    /// passed on) in a fresh store. Blocking: call it from a blocking thread.
    pub fn run(
        &self,
        plugin: &Plugin,
        fields: &BTreeMap<String, String>,
    ) -> Result<(Vec<(String, String)>, RunReport), RunError> {
        let _slot = self.slots.acquire().ok_or(RunError::Closed)?;
        let input: Vec<Field> = plugin
            .manifest
            .reads
            .iter()
            .filter_map(|k| fields.get(k).map(|v| Field { key: k.clone(), value: v.clone() }))
            .collect();
        let read = input.iter().map(|f| f.key.clone()).collect();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(4)
            .trap_on_grow_failure(true)
            .build();
        let state = RunState {
            limits,
            hosts: plugin.manifest.hosts.clone(),
            log_lines: 0,
            outbound: self.outbound.clone(),
            deadline: Instant::now() + self.limits.timeout,
            fetches: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = (self.limits.timeout.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let outcome = plugin
            .pre
            .instantiate(&mut store)
            .and_then(|bindings| bindings.call_enrich(&mut store, &input))
            .map_err(classify)?;
        let report = RunReport { read, log_lines: store.data().log_lines, fetches: store.data().fetches };
        let output = match outcome {
            Ok(output) => output,
            Err(EnrichError::Unsupported(m)) => return Err(RunError::Unsupported(truncate(m))),
            Err(EnrichError::Unavailable(m)) => return Err(RunError::Unavailable(truncate(m))),
            Err(EnrichError::Failed(m)) => return Err(RunError::Failed(truncate(m))),
        };
        let size: usize = output.iter().map(|f| f.key.len() + f.value.len()).sum();
        if size > self.limits.max_output_bytes {
            return Err(RunError::OutputTooLarge(size));
        }
        let mut updates = Vec::with_capacity(output.len());
        for f in output {
            if !plugin.manifest.writes.contains(&f.key) {
                return Err(RunError::UndeclaredWrite(f.key.chars().take(64).collect()));
            }
            if f.value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(RunError::Malformed(format!("`{}` holds control characters", f.key)));
            }
            updates.push((f.key, f.value));
        }
        Ok((updates, report))
    }
}

/// Returns `bytes` as a component: a component as is, a core module carrying its component-type
/// metadata (what `cargo build --target wasm32-unknown-unknown` with wit-bindgen produces)
/// lifted into one.
pub fn componentize(bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    // The preamble's layer field: 0x00 0x00 for a core module, 0x01 0x00 for a component.
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(bytes.to_vec()),
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => wit_component::ComponentEncoder::default()
            .module(bytes)
            .and_then(|e| e.validate(true).encode())
            .map_err(|e| LoadError::Component(format!("{e:#}"))),
        _ => Err(LoadError::Component("not a WebAssembly module or component".into())),
    }
}

/// The plugin's own error texts are its author's; they are cut short (they travel to the run
/// ledger, never to logs).
fn truncate(m: String) -> String {
    m.chars().take(200).collect()
}

fn classify(e: wasmtime::Error) -> RunError {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => RunError::Timeout,
            wasmtime::Trap::StackOverflow => RunError::StackOverflow,
            other => RunError::Trap(other.to_string()),
        };
    }
    let text = format!("{e:#}");
    if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
        return RunError::MemoryLimit;
    }
    RunError::Trap(text.chars().take(200).collect())
}

/// A minimal blocking counting semaphore (runs are blocking calls on their own threads).
mod tokio_like {
    use std::sync::{Condvar, Mutex};

    pub struct Semaphore {
        free: Mutex<usize>,
        cond: Condvar,
    }

    pub struct Permit<'a>(&'a Semaphore);

    impl Drop for Permit<'_> {
        fn drop(&mut self) {
            *self.0.free.lock().expect("semaphore lock") += 1;
            self.0.cond.notify_one();
        }
    }

    impl Semaphore {
        pub fn new(n: usize) -> Self {
            Semaphore { free: Mutex::new(n), cond: Condvar::new() }
        }

        pub fn acquire(&self) -> Option<Permit<'_>> {
            let mut free = self.free.lock().ok()?;
            while *free == 0 {
                free = self.cond.wait(free).ok()?;
            }
            *free -= 1;
            Some(Permit(self))
        }
    }
}
