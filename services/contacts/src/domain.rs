//! Domain types of the contacts service, independent of storage and wire formats.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Types a field of the policy may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Email,
    Phone,
    Date,
    Number,
    Boolean,
    Enum,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Date => "date",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Enum => "enum",
        }
    }
}

/// The built-in fields, with the type each must have in a policy. They are subject to the
/// tenant's field policy like any other field.
pub const BUILTIN_FIELDS: [(&str, FieldType); 4] = [
    ("email", FieldType::Email),
    ("first_name", FieldType::String),
    ("last_name", FieldType::String),
    ("phone", FieldType::Phone),
];

pub fn is_builtin(key: &str) -> bool {
    BUILTIN_FIELDS.iter().any(|(k, _)| *k == key)
}

/// One field a tenant may collect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDefinition {
    pub key: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    pub category: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enum_values: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
}

/// A tenant's field policy: the only fields it may collect.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldPolicy {
    pub fields: Vec<FieldDefinition>,
    /// 0 for the built-in default policy of a tenant that never set one.
    pub version: i32,
    pub updated_by: String,
    pub updated_at_opt: Option<DateTime<Utc>>,
}

impl FieldPolicy {
    /// The policy of a tenant that has not set one: the four built-in fields, none required.
    pub fn default_policy() -> Self {
        let category = |key: &str| if key == "email" || key == "phone" { "contact" } else { "identity" };
        FieldPolicy {
            fields: BUILTIN_FIELDS
                .iter()
                .map(|(key, field_type)| FieldDefinition {
                    key: key.to_string(),
                    field_type: *field_type,
                    category: category(key).to_string(),
                    required: false,
                    enum_values: Vec::new(),
                    purpose: String::new(),
                })
                .collect(),
            version: 0,
            updated_by: String::new(),
            updated_at_opt: None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&FieldDefinition> {
        self.fields.iter().find(|f| f.key == key)
    }
}

/// A custom field value. Dates, e-mails, phones and enum values travel as strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    Bool(bool),
    Number(f64),
    String(String),
}

/// How a record entered Carnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    WebForm,
    Import,
    Api,
    Manual,
    Email,
    Phone,
    Enrichment,
    Event,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::WebForm,
        Channel::Import,
        Channel::Api,
        Channel::Manual,
        Channel::Email,
        Channel::Phone,
        Channel::Enrichment,
        Channel::Event,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WebForm => "web_form",
            Channel::Import => "import",
            Channel::Api => "api",
            Channel::Manual => "manual",
            Channel::Email => "email",
            Channel::Phone => "phone",
            Channel::Enrichment => "enrichment",
            Channel::Event => "event",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Provenance: where, when and how a record entered, and who entered it. Never rewritten.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub channel: Channel,
    pub detail: String,
    pub actor: String,
    pub collected_at: DateTime<Utc>,
}

/// The personal data of a contact as a caller submits it (not yet validated).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContactInput {
    pub email_opt: Option<String>,
    pub first_name_opt: Option<String>,
    pub last_name_opt: Option<String>,
    pub phone_opt: Option<String>,
    pub fields: BTreeMap<String, FieldValue>,
}

/// A rectification request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContactPatch {
    pub set: ContactInput,
    pub clear: Vec<String>,
    pub reason_opt: Option<String>,
    pub expected_version_opt: Option<i64>,
    /// Where the values of this update come from; kept per changed field.
    pub source_opt: Option<Source>,
    /// The import writing it, named in the `contact.upserted` event.
    pub import_id_opt: Option<Uuid>,
}

/// A restriction (Art. 18) or objection (Art. 21) flag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub active: bool,
    #[serde(rename = "reason", skip_serializing_if = "Option::is_none")]
    pub reason_opt: Option<String>,
    #[serde(rename = "since", skip_serializing_if = "Option::is_none")]
    pub since_opt: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    Restriction,
    Objection,
}

/// A stored contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: Uuid,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub fields: BTreeMap<String, FieldValue>,
    pub source: Source,
    /// Provenance of single values written after creation with a named source (enrichment).
    pub field_sources: BTreeMap<String, Source>,
    pub restriction: Flag,
    pub objection: Flag,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last sign of a relationship (retention counts inactivity from it).
    pub last_activity_at: DateTime<Utc>,
}

/// One entry of a contact's change history: which fields, when, by whom. Never old values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContactChange {
    pub id: Uuid,
    pub kind: String,
    pub fields: Vec<String>,
    pub actor: String,
    pub at: DateTime<Utc>,
    #[serde(rename = "reason", skip_serializing_if = "Option::is_none")]
    pub reason_opt: Option<String>,
    #[serde(rename = "related_contact_id", skip_serializing_if = "Option::is_none")]
    pub related_contact_id_opt: Option<Uuid>,
    #[serde(rename = "related_source", skip_serializing_if = "Option::is_none")]
    pub related_source_opt: Option<Source>,
}

/// A page of contacts.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactPage {
    pub contacts: Vec<Contact>,
    pub next_cursor_opt: Option<String>,
}

/// What an erasure removed, by record kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    pub contacts: u64,
    pub contact_changes: u64,
}
