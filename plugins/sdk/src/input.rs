//! The fields a plugin receives.

use crate::Error;

/// The fields of one contact that reached the plugin: only those its manifest declares in
/// `reads`, and of those only the ones the contact has. Values are text (Carnet converts
/// numbers, dates and booleans to and from their text form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Input {
    fields: Vec<(String, String)>,
}

impl Input {
    /// Returns the value of `key`, or `None` when the contact has no such field (or the
    /// manifest does not declare it: then it never arrives).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Returns the value of `key` with surrounding whitespace trimmed, or
    /// [`Error::Unsupported`] naming the key when it is missing or blank.
    ///
    /// With `?` this declines a contact the plugin cannot handle without failing the run.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        match self.get(key).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Error::unsupported(format!("no `{key}` field"))),
        }
    }

    /// Returns whether the contact's `key` reached the plugin.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Returns the keys received, in the order of the manifest's `reads`.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_str())
    }

    /// Returns the `(key, value)` pairs received, in the order of the manifest's `reads`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Returns the number of fields received.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Returns whether no field was received.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Builds an input from `(key, value)` pairs: how Carnet's fields arrive, and how a plugin's
/// unit tests make one.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Input {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Input {
        Input { fields: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_input_looks_fields_up_by_key() {
        let input: Input = [("email", "ada@example.org"), ("company", "  ")].into_iter().collect();
        assert_eq!(input.get("email"), Some("ada@example.org"));
        assert_eq!(input.get("phone"), None);
        assert_eq!(input.get("company"), Some("  "));
        assert!(input.contains("company") && !input.contains("phone"));
        assert_eq!(input.keys().collect::<Vec<_>>(), ["email", "company"]);
        assert_eq!(input.len(), 2);
        assert!(!input.is_empty() && Input::default().is_empty());
    }

    #[test]
    fn test_input_require_declines_naming_the_missing_or_blank_key() {
        let input: Input = [("email", " ada@example.org "), ("company", "  ")].into_iter().collect();
        assert_eq!(input.require("email"), Ok("ada@example.org"));
        assert_eq!(input.require("company"), Err(Error::unsupported("no `company` field")));
        assert_eq!(input.require("phone"), Err(Error::Unsupported("no `phone` field".into())));
    }
}
