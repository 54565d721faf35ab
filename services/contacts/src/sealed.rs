//! How contacts keeps personal values: one sealed value per contact ([`Personal`] as JSON,
//! AES-256-GCM under the person's key from the key store, the tenant and contact id as
//! associated data), blind indexes of the normalised e-mail and phone, and blind-indexed name
//! tokens for exact name search. History reasons are sealed the same way, per change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use carnet_kit::ServiceError;
use carnet_kit::keystore::{BlindIndex, Opened, SubjectKey, open_value, plain_value};

use crate::domain::{Contact, FieldValue};

/// The personal values of one contact, sealed together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Personal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objection_reason: Option<String>,
}

impl Personal {
    pub fn of(contact: &Contact) -> Personal {
        Personal {
            email: contact.email.clone(),
            first_name: contact.first_name.clone(),
            last_name: contact.last_name.clone(),
            phone: contact.phone.clone(),
            fields: contact.fields.clone(),
            restriction_reason: contact.restriction.reason_opt.clone(),
            objection_reason: contact.objection.reason_opt.clone(),
        }
    }
}

fn aad(kind: &[u8], tenant_id: Uuid, id: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(kind.len() + 32);
    aad.extend_from_slice(kind);
    aad.extend_from_slice(tenant_id.as_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// The associated data of a contact's sealed values.
pub fn contact_aad(tenant_id: Uuid, contact_id: Uuid) -> Vec<u8> {
    aad(b"carnet.contacts.contact:", tenant_id, contact_id)
}

/// The associated data of a change's sealed reason (the change id, so it survives a merge
/// moving the change to the surviving contact, where it is sealed again with that key).
pub fn change_aad(tenant_id: Uuid, change_id: Uuid) -> Vec<u8> {
    aad(b"carnet.contacts.change:", tenant_id, change_id)
}

/// Seals `plaintext` with `key_opt`, or keeps it plain when encryption is off (`None`).
pub fn seal(key_opt: Option<&SubjectKey>, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    match key_opt {
        Some(key) => key.seal(aad, plaintext),
        None => plain_value(plaintext),
    }
}

pub fn seal_personal(key_opt: Option<&SubjectKey>, tenant_id: Uuid, contact_id: Uuid, p: &Personal) -> Vec<u8> {
    let json = serde_json::to_vec(p).expect("personal values serialise");
    seal(key_opt, &contact_aad(tenant_id, contact_id), &json)
}

/// Opens a contact's sealed values: `None` when its key is destroyed (the person was erased and
/// the row came back, e.g. from a backup).
pub fn open_personal(
    key_opt: Option<&SubjectKey>,
    tenant_id: Uuid,
    contact_id: Uuid,
    stored_opt: Option<&[u8]>,
) -> Result<Option<Personal>, ServiceError> {
    let Some(stored) = stored_opt else { return Ok(Some(Personal::default())) };
    match open_value(key_opt, &contact_aad(tenant_id, contact_id), stored)? {
        Opened::Value(json) => serde_json::from_slice(&json)
            .map(Some)
            .map_err(|_| ServiceError::internal("stored personal values are unreadable")),
        Opened::Shredded => Ok(None),
    }
}

/// Opens a change's sealed reason; a shredded one reads as none.
pub fn open_reason(
    key_opt: Option<&SubjectKey>,
    tenant_id: Uuid,
    change_id: Uuid,
    stored: &[u8],
) -> Result<Option<String>, ServiceError> {
    match open_value(key_opt, &change_aad(tenant_id, change_id), stored)? {
        Opened::Value(text) => {
            String::from_utf8(text).map(Some).map_err(|_| ServiceError::internal("a stored reason is unreadable"))
        }
        Opened::Shredded => Ok(None),
    }
}

/// The lower-cased tokens of a name: runs of letters and digits (`Jean-Luc O'Neil` gives
/// `jean`, `luc`, `o`, `neil`). Queries are split the same way, so a search for
/// `jean-luc` finds him.
pub fn tokens(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase).collect()
}

/// The blind indexes of one contact's values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Indexes {
    pub email_opt: Option<String>,
    pub phone_opt: Option<String>,
    pub tokens: BTreeSet<String>,
}

impl Indexes {
    pub fn of(index: &BlindIndex, p: &Personal) -> Indexes {
        let mut names = BTreeSet::new();
        for name in [&p.first_name, &p.last_name].into_iter().flatten() {
            names.extend(tokens(name));
        }
        Indexes {
            email_opt: p.email.as_deref().map(|e| email_hash(index, e)),
            phone_opt: p.phone.as_deref().map(|v| phone_hash(index, v)),
            tokens: names.iter().map(|t| token_hash(index, t)).collect(),
        }
    }
}

/// The blind index of a normalised e-mail.
pub fn email_hash(index: &BlindIndex, email: &str) -> String {
    index.hash("email", email)
}

/// The blind index of a normalised (E.164) phone.
pub fn phone_hash(index: &BlindIndex, phone: &str) -> String {
    index.hash("phone", phone)
}

/// The blind index of a lower-cased name token.
pub fn token_hash(index: &BlindIndex, token: &str) -> String {
    index.hash("name", token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_tokens_split_on_punctuation_and_lower_case() {
        let t: Vec<String> = tokens("Jean-Luc  O'Neil").into_iter().collect();
        assert_eq!(t, ["jean", "luc", "neil", "o"]);
        assert_eq!(tokens("Ådne ØSTER").into_iter().collect::<Vec<_>>(), ["ådne", "øster"]);
        assert!(tokens(" - ").is_empty());
    }

    #[test]
    fn test_personal_values_round_trip_and_shred() {
        let key = SubjectKey::generate();
        let (t, c) = (Uuid::now_v7(), Uuid::now_v7());
        let p = Personal { email: Some("ada@example.org".into()), ..Default::default() };
        let sealed = seal_personal(Some(&key), t, c, &p);
        assert_eq!(open_personal(Some(&key), t, c, Some(&sealed)).unwrap(), Some(p.clone()));
        assert_eq!(open_personal(None, t, c, Some(&sealed)).unwrap(), None, "shredded");
        assert!(open_personal(Some(&key), t, Uuid::now_v7(), Some(&sealed)).is_err(), "bound to its contact");
        let plain = seal_personal(None, t, c, &p);
        assert_eq!(open_personal(None, t, c, Some(&plain)).unwrap(), Some(p));
    }
}
