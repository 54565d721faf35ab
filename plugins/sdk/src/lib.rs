//! carnet-plugin-sdk: writes Carnet enrichment and profiling plugins in Rust.
//!
//! A plugin is a WebAssembly component of the world `carnet:enricher@0.1.0` (`plugins/wit`).
//! Carnet hands it the fields of one contact that its manifest (`carnet-plugin.toml`) declares
//! it reads, and keeps the fields it returns only if the manifest declares it writes them. It
//! has no filesystem, no sockets and no clock: only [`log`] and an HTTP [`http::fetch`] limited
//! to the hosts its manifest declares.
//!
//! This crate hides the generated bindings behind a small API: implement [`Enricher`] on a
//! type and export it with [`export_enricher!`].
//!
//! ```
//! use carnet_plugin_sdk::{Enricher, Error, Input, Output};
//!
//! struct Greeting;
//!
//! impl Enricher for Greeting {
//!     fn enrich(input: &Input) -> Result<Output, Error> {
//!         let name = input.require("first_name")?;
//!         Ok(Output::new().set("salutation", format!("Dear {name}")))
//!     }
//! }
//!
//! carnet_plugin_sdk::export_enricher!(Greeting);
//! # let input: Input = [("first_name", "Ada")].into_iter().collect();
//! # assert_eq!(Greeting::enrich(&input).unwrap().get("salutation"), Some("Dear Ada"));
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` (see `docs/plugins.md`); Carnet (or
//! `carnet plugin check`) lifts the core module into a component. On other targets the crate
//! also builds, so a plugin's rules can be unit-tested natively: [`log`] then writes to stderr
//! and [`http::fetch`] answers [`Error::Unavailable`].

#![warn(missing_docs)]

// Lets the generated export glue name this crate by its path from inside it, too.
extern crate self as carnet_plugin_sdk;

mod error;
pub mod http;
mod input;
pub mod log;
mod output;

pub use error::Error;
pub use input::Input;
pub use output::Output;

/// The `carnet:enricher` version this SDK implements: the manifest's `api_version`.
pub const API_VERSION: &str = "0.1.0";

/// A plugin: turns the fields it reads into the fields it writes.
///
/// `enrich` runs once per contact in a fresh instance: nothing survives from one call to the
/// next. A panic aborts the run (Carnet records it as a trap), so return an [`Error`] instead.
pub trait Enricher {
    /// Returns the updates for one contact, given the declared read fields it has.
    ///
    /// Keys the manifest does not declare in `writes` fail the whole run; an empty [`Output`]
    /// changes nothing.
    fn enrich(input: &Input) -> Result<Output, Error>;
}

/// Exports a type implementing [`Enricher`] as the plugin's `enrich` function.
///
/// Invoke it once, at the root of the plugin crate (a `cdylib`): `export_enricher!(MyPlugin);`.
/// It also embeds the world's type information the host needs to lift the module into a
/// component.
#[macro_export]
macro_rules! export_enricher {
    ($ty:ident) => {
        impl $crate::bindings::Guest for $ty {
            fn enrich(
                input: ::std::vec::Vec<$crate::bindings::Field>,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::bindings::Field>, $crate::bindings::EnrichError> {
                $crate::__run::<$ty>(input)
            }
        }
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

/// The bindings wit-bindgen generates for the world; used by [`export_enricher!`], not a
/// stable API.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "enricher",
        pub_export_macro: true,
        default_bindings_module: "carnet_plugin_sdk::bindings",
    });
}

/// Adapts an [`Enricher`] to the generated `Guest` trait; called by [`export_enricher!`].
#[doc(hidden)]
pub fn __run<E: Enricher>(fields: Vec<bindings::Field>) -> Result<Vec<bindings::Field>, bindings::EnrichError> {
    let input = fields.into_iter().map(|f| (f.key, f.value)).collect::<Input>();
    match E::enrich(&input) {
        Ok(output) => Ok(output.into_pairs().map(|(key, value)| bindings::Field { key, value }).collect()),
        Err(e) => Err(e.into_wit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Enricher for Echo {
        fn enrich(input: &Input) -> Result<Output, Error> {
            let email = input.require("email")?;
            Ok(Output::new().set("copy", email))
        }
    }

    fn field(key: &str, value: &str) -> bindings::Field {
        bindings::Field { key: key.into(), value: value.into() }
    }

    #[test]
    fn test_run_adapts_fields_and_errors_to_the_world() {
        let out = __run::<Echo>(vec![field("email", "ada@example.org")]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].key.as_str(), out[0].value.as_str()), ("copy", "ada@example.org"));
        match __run::<Echo>(vec![field("phone", "+44")]) {
            Err(bindings::EnrichError::Unsupported(m)) => assert!(m.contains("`email`"), "{m}"),
            other => panic!("expected unsupported, got {other:?}"),
        }
    }
}
