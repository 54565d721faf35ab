//! Log lines for the plugin's author.
//!
//! Carnet counts a run's log lines but never writes their text to its own logs (it may hold
//! personal data); `carnet plugin run` reports the count. Outside WebAssembly (a plugin's native
//! unit tests) the lines go to stderr.

#[cfg(target_arch = "wasm32")]
use crate::bindings::carnet::enricher::log::{Level, log};

/// Logs `message` at level debug.
pub fn debug(message: &str) {
    emit(Severity::Debug, message);
}

/// Logs `message` at level info.
pub fn info(message: &str) {
    emit(Severity::Info, message);
}

/// Logs `message` at level warn.
pub fn warn(message: &str) {
    emit(Severity::Warn, message);
}

/// Logs `message` at level error.
pub fn error(message: &str) {
    emit(Severity::Error, message);
}

#[derive(Clone, Copy, Debug)]
enum Severity {
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(target_arch = "wasm32")]
fn emit(severity: Severity, message: &str) {
    let level = match severity {
        Severity::Debug => Level::Debug,
        Severity::Info => Level::Info,
        Severity::Warn => Level::Warn,
        Severity::Error => Level::Error,
    };
    log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn emit(severity: Severity, message: &str) {
    eprintln!("[{severity:?}] {message}");
}
