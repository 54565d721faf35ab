//! A test plugin that returns what it saw: writes `seen_fields`, the sorted, comma-separated
//! keys of the fields it received (never their values). Run on a contact with more fields than
//! the manifest's `reads`, it proves that only the declared ones reach a plugin. A contact with
//! none of them is declined (unsupported) rather than given an empty value.

use carnet_plugin_sdk::{Enricher, Error, Input, Output};

struct SeenFields;

impl Enricher for SeenFields {
    fn enrich(input: &Input) -> Result<Output, Error> {
        if input.is_empty() {
            return Err(Error::unsupported("no declared field present"));
        }
        let mut keys: Vec<&str> = input.keys().collect();
        keys.sort_unstable();
        keys.dedup();
        Ok(Output::new().set("seen_fields", keys.join(",")))
    }
}

carnet_plugin_sdk::export_enricher!(SeenFields);
