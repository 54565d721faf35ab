//! The fields a plugin writes.

/// The updates a plugin returns: field keys and their new values, as text.
///
/// Every key must be one the manifest declares in `writes`, or Carnet refuses the whole run;
/// values may not hold control characters other than newline and tab, and all keys and values
/// together are capped (64 KiB by default). Carnet then writes them through the contacts
/// service, as the tenant's field policy types them (`"70"` becomes a number for a `number`
/// field), with the source `enrichment` / `<name>@<version>`; a value a person entered is never
/// overwritten (a plugin fills empty fields and refreshes its own values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    fields: Vec<(String, String)>,
}

impl Output {
    /// Returns an empty output: it changes nothing.
    pub fn new() -> Output {
        Output::default()
    }

    /// Returns the output with `key` set to `value` (replacing an earlier value of `key`).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Output {
        let (key, value) = (key.into(), value.into());
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key, value)),
        }
        self
    }

    /// Returns the value set for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Returns the `(key, value)` pairs, in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Returns the number of fields set.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Returns whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub(crate) fn into_pairs(self) -> impl Iterator<Item = (String, String)> {
        self.fields.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_output_set_replaces_an_earlier_value_of_the_same_key() {
        let out = Output::new().set("company", "Acme").set("lead_score", "40").set("company", "Initech");
        assert_eq!(out.iter().collect::<Vec<_>>(), [("company", "Initech"), ("lead_score", "40")]);
        assert_eq!(out.get("company"), Some("Initech"));
        assert_eq!(out.len(), 2);
        assert!(Output::new().is_empty());
    }
}
