//! Conversions between the protobuf messages and the domain types.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};

use carnet_kit::ServiceError;
use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::contacts::v1 as pb;

use crate::domain::{
    Channel, Contact, ContactChange, ContactInput, FieldDefinition, FieldPolicy, FieldType, FieldValue, Flag, Source,
};

/// Longest accepted source detail, in characters.
const MAX_DETAIL_CHARS: usize = 500;

pub fn channel_to_proto(channel: Channel) -> pb_common::SourceChannel {
    use pb_common::SourceChannel as P;
    match channel {
        Channel::WebForm => P::WebForm,
        Channel::Import => P::Import,
        Channel::Api => P::Api,
        Channel::Manual => P::Manual,
        Channel::Email => P::Email,
        Channel::Phone => P::Phone,
        Channel::Enrichment => P::Enrichment,
        Channel::Event => P::Event,
    }
}

fn channel_from_proto(value: i32) -> Option<Channel> {
    use pb_common::SourceChannel as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::WebForm => Channel::WebForm,
        P::Import => Channel::Import,
        P::Api => Channel::Api,
        P::Manual => Channel::Manual,
        P::Email => Channel::Email,
        P::Phone => Channel::Phone,
        P::Enrichment => Channel::Enrichment,
        P::Event => Channel::Event,
    })
}

/// Reads the mandatory source of a create; the actor defaults to the caller, the time to now.
pub fn source_from_proto(source_opt: Option<pb_common::Source>, principal: &str) -> Result<Source, ServiceError> {
    let source = source_opt
        .ok_or_else(|| ServiceError::invalid_field("source", "is required: where, when and how the contact entered"))?;
    let valid: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
    let channel = channel_from_proto(source.channel).ok_or_else(|| {
        ServiceError::invalid_field("source.channel", format!("is required, one of: {}", valid.join(", ")))
    })?;
    let detail = source.detail.trim().to_string();
    if detail.is_empty() {
        return Err(ServiceError::invalid_field(
            "source.detail",
            "is required (a form id, file name, API client, event…)",
        ));
    }
    if detail.chars().count() > MAX_DETAIL_CHARS {
        return Err(ServiceError::invalid_field(
            "source.detail",
            format!("is longer than {MAX_DETAIL_CHARS} characters"),
        ));
    }
    let actor = if source.actor.trim().is_empty() { principal.to_string() } else { source.actor.trim().to_string() };
    let now = Utc::now();
    let collected_at = match source.collected_at {
        Some(ts) => from_timestamp("source.collected_at", &ts)?,
        None => now,
    };
    if collected_at > now + Duration::minutes(5) {
        return Err(ServiceError::invalid_field("source.collected_at", "is in the future"));
    }
    Ok(Source { channel, detail, actor, collected_at })
}

pub fn source_to_proto(source: &Source) -> pb_common::Source {
    pb_common::Source {
        channel: channel_to_proto(source.channel) as i32,
        detail: source.detail.clone(),
        actor: source.actor.clone(),
        collected_at: Some(to_timestamp(source.collected_at)),
    }
}

pub fn fields_from_proto(
    fields: std::collections::HashMap<String, pb::FieldValue>,
) -> Result<BTreeMap<String, FieldValue>, ServiceError> {
    fields
        .into_iter()
        .map(|(key, value)| {
            let value = match value.kind {
                Some(pb::field_value::Kind::StringValue(s)) => FieldValue::String(s),
                Some(pb::field_value::Kind::NumberValue(n)) => FieldValue::Number(n),
                Some(pb::field_value::Kind::BoolValue(b)) => FieldValue::Bool(b),
                None => {
                    return Err(ServiceError::invalid_field(
                        format!("fields.{key}"),
                        "has no value; use clear_fields to remove it",
                    ));
                }
            };
            Ok((key, value))
        })
        .collect()
}

fn field_value_to_proto(value: &FieldValue) -> pb::FieldValue {
    let kind = match value {
        FieldValue::String(s) => pb::field_value::Kind::StringValue(s.clone()),
        FieldValue::Number(n) => pb::field_value::Kind::NumberValue(*n),
        FieldValue::Bool(b) => pb::field_value::Kind::BoolValue(*b),
    };
    pb::FieldValue { kind: Some(kind) }
}

pub fn input_from_create(req: &mut pb::CreateContactRequest) -> Result<ContactInput, ServiceError> {
    Ok(ContactInput {
        email_opt: req.email.take(),
        first_name_opt: req.first_name.take(),
        last_name_opt: req.last_name.take(),
        phone_opt: req.phone.take(),
        fields: fields_from_proto(std::mem::take(&mut req.fields))?,
    })
}

fn flag_to_proto(flag: &Flag) -> pb::Flag {
    pb::Flag {
        active: flag.active,
        reason: flag.reason_opt.clone().unwrap_or_default(),
        since: flag.since_opt.map(to_timestamp),
    }
}

pub fn contact_to_proto(contact: Contact) -> pb::Contact {
    pb::Contact {
        id: contact.id.to_string(),
        email: contact.email,
        first_name: contact.first_name,
        last_name: contact.last_name,
        phone: contact.phone,
        fields: contact.fields.iter().map(|(k, v)| (k.clone(), field_value_to_proto(v))).collect(),
        source: Some(source_to_proto(&contact.source)),
        field_sources: contact.field_sources.iter().map(|(k, s)| (k.clone(), source_to_proto(s))).collect(),
        restriction: Some(flag_to_proto(&contact.restriction)),
        objection: Some(flag_to_proto(&contact.objection)),
        version: contact.version,
        created_at: Some(to_timestamp(contact.created_at)),
        updated_at: Some(to_timestamp(contact.updated_at)),
        last_activity_at: Some(to_timestamp(contact.last_activity_at)),
    }
}

pub fn change_to_proto(change: ContactChange) -> pb::ContactChange {
    pb::ContactChange {
        id: change.id.to_string(),
        kind: change.kind,
        fields: change.fields,
        actor: change.actor,
        at: Some(to_timestamp(change.at)),
        reason: change.reason_opt.unwrap_or_default(),
        related_contact_id: change.related_contact_id_opt.map(|id| id.to_string()).unwrap_or_default(),
        related_source: change.related_source_opt.as_ref().map(source_to_proto),
    }
}

fn field_type_from_proto(i: usize, value: i32) -> Result<FieldType, ServiceError> {
    use pb::FieldType as P;
    Ok(match P::try_from(value).unwrap_or(P::Unspecified) {
        P::Unspecified => {
            return Err(ServiceError::invalid_field(
                format!("fields[{i}].type"),
                "is required: string, email, phone, date, number, boolean or enum",
            ));
        }
        P::String => FieldType::String,
        P::Email => FieldType::Email,
        P::Phone => FieldType::Phone,
        P::Date => FieldType::Date,
        P::Number => FieldType::Number,
        P::Boolean => FieldType::Boolean,
        P::Enum => FieldType::Enum,
    })
}

fn field_type_to_proto(t: FieldType) -> pb::FieldType {
    match t {
        FieldType::String => pb::FieldType::String,
        FieldType::Email => pb::FieldType::Email,
        FieldType::Phone => pb::FieldType::Phone,
        FieldType::Date => pb::FieldType::Date,
        FieldType::Number => pb::FieldType::Number,
        FieldType::Boolean => pb::FieldType::Boolean,
        FieldType::Enum => pb::FieldType::Enum,
    }
}

pub fn definitions_from_proto(fields: Vec<pb::FieldDefinition>) -> Result<Vec<FieldDefinition>, ServiceError> {
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(FieldDefinition {
                key: f.key,
                field_type: field_type_from_proto(i, f.r#type)?,
                category: f.category,
                required: f.required,
                enum_values: f.enum_values,
                purpose: f.purpose,
            })
        })
        .collect()
}

pub fn policy_to_proto(policy: FieldPolicy) -> pb::FieldPolicy {
    pb::FieldPolicy {
        fields: policy
            .fields
            .into_iter()
            .map(|f| pb::FieldDefinition {
                key: f.key,
                r#type: field_type_to_proto(f.field_type) as i32,
                category: f.category,
                required: f.required,
                enum_values: f.enum_values,
                purpose: f.purpose,
            })
            .collect(),
        version: u32::try_from(policy.version).unwrap_or_default(),
        updated_at: policy.updated_at_opt.map(to_timestamp),
        updated_by: policy.updated_by,
    }
}
