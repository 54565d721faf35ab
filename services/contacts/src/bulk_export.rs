//! Bulk export of a tenant's contacts as CSV or JSON lines (docs/export.md).
//!
//! The export walks the tenant's contacts in id order a page at a time (keyset pagination on
//! the primary key), opens each page's sealed values with one key-store query and renders them
//! into whole lines, so memory stays flat however many contacts the tenant holds. A producer
//! task hands the lines over a small bounded channel: a slow reader slows the walk down, and a
//! reader that goes away stops it.
//!
//! Left out: restricted contacts (Art. 18(2): only storage is allowed while the flag is set) and
//! rows whose person was erased (their key is destroyed, so their values no longer open: a row
//! restored from an older backup). One `export` audit entry (record type `contact_list`, record
//! id the export's id, fields the exported column keys) is written when the stream ends, however
//! it ends: completed, failed, or abandoned by the reader. Logs carry ids and counts only.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::mpsc;
use uuid::Uuid;

use carnet_kit::{ServiceError, audit};

use crate::SERVICE_NAME;
use crate::audit::Audit;
use crate::domain::{BUILTIN_FIELDS, Contact, FieldPolicy, FieldValue, is_builtin};
use crate::entity::contact;
use crate::rows::{db_err, to_domain};
use crate::store::ContactStore;

/// Contacts read (and opened) per page of an export.
pub const EXPORT_PAGE: u64 = 500;
/// A chunk is handed over once it holds this many bytes (or at the end of a page), so a chunk
/// stays well under the gRPC message limit whatever the contacts hold.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the producer and the reader.
const CHANNEL_CHUNKS: usize = 2;

/// The formats of a bulk export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row, CRLF line ends, spreadsheet formulas neutralised.
    Csv,
    /// JSON lines: one object per contact, keys in column order.
    Jsonl,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 2] = [ExportFormat::Csv, ExportFormat::Jsonl];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
        }
    }

    /// Parses `csv` or `jsonl`; anything else is `invalid_argument` naming `format`.
    pub fn parse(s: &str) -> Result<ExportFormat, ServiceError> {
        if s.trim().is_empty() {
            return Err(ServiceError::invalid_field("format", "is required: csv or jsonl"));
        }
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| ServiceError::invalid_field("format", "must be csv or jsonl"))
    }
}

/// What a column holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Id,
    Email,
    FirstName,
    LastName,
    Phone,
    /// A custom field of the policy, by its key.
    Custom(String),
    SourceChannel,
    SourceDetail,
    SourceCollectedAt,
    CreatedAt,
    UpdatedAt,
    LastActivityAt,
    Objected,
}

/// Column keys that are not field keys; a custom field of the same name is exported as
/// `fields.<key>` instead.
const META_KEYS: [&str; 8] = [
    "id",
    "source_channel",
    "source_detail",
    "source_collected_at",
    "created_at",
    "updated_at",
    "last_activity_at",
    "objected",
];

/// One column of an export: its key (the CSV header, the JSON key) and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub key: String,
    value: Value,
}

/// Every column of the tenant's export, in the default order: `id`, the four built-in fields,
/// the custom fields of the field policy (in policy order), the source, the times and the
/// objection flag.
pub fn all_columns(policy: &FieldPolicy) -> Vec<Column> {
    let col = |key: &str, value: Value| Column { key: key.to_string(), value };
    let mut columns = vec![col("id", Value::Id)];
    for (key, _) in BUILTIN_FIELDS {
        let value = match key {
            "email" => Value::Email,
            "first_name" => Value::FirstName,
            "last_name" => Value::LastName,
            _ => Value::Phone,
        };
        columns.push(col(key, value));
    }
    for def in policy.fields.iter().filter(|d| !is_builtin(&d.key)) {
        let key = if META_KEYS.contains(&def.key.as_str()) { format!("fields.{}", def.key) } else { def.key.clone() };
        columns.push(Column { key, value: Value::Custom(def.key.clone()) });
    }
    columns.extend([
        col("source_channel", Value::SourceChannel),
        col("source_detail", Value::SourceDetail),
        col("source_collected_at", Value::SourceCollectedAt),
        col("created_at", Value::CreatedAt),
        col("updated_at", Value::UpdatedAt),
        col("last_activity_at", Value::LastActivityAt),
        col("objected", Value::Objected),
    ]);
    columns
}

/// The columns `fields` names, in its order; every column when it is empty. An unknown or
/// repeated key is `invalid_argument` naming `fields[i]`.
pub fn select_columns(all: &[Column], fields: &[String]) -> Result<Vec<Column>, ServiceError> {
    if fields.is_empty() {
        return Ok(all.to_vec());
    }
    let mut chosen: Vec<Column> = Vec::with_capacity(fields.len());
    for (i, key) in fields.iter().enumerate() {
        let at = format!("fields[{i}]");
        let Some(column) = all.iter().find(|c| c.key == key.trim()) else {
            return Err(ServiceError::invalid_field(at, "is not a column of this tenant's export"));
        };
        if chosen.iter().any(|c| c.key == column.key) {
            return Err(ServiceError::invalid_field(at, "is listed twice"));
        }
        chosen.push(column.clone());
    }
    Ok(chosen)
}

/// One cell's value.
enum Cell<'a> {
    Null,
    Text(&'a str),
    Owned(String),
    Bool(bool),
    Number(f64),
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn cell<'a>(contact: &'a Contact, value: &Value) -> Cell<'a> {
    let text = |s: &'a Option<String>| s.as_deref().map_or(Cell::Null, Cell::Text);
    match value {
        Value::Id => Cell::Owned(contact.id.to_string()),
        Value::Email => text(&contact.email),
        Value::FirstName => text(&contact.first_name),
        Value::LastName => text(&contact.last_name),
        Value::Phone => text(&contact.phone),
        Value::Custom(key) => match contact.fields.get(key) {
            None => Cell::Null,
            Some(FieldValue::String(s)) => Cell::Text(s),
            Some(FieldValue::Bool(b)) => Cell::Bool(*b),
            Some(FieldValue::Number(n)) => Cell::Number(*n),
        },
        Value::SourceChannel => Cell::Text(contact.source.channel.as_str()),
        Value::SourceDetail => Cell::Text(&contact.source.detail),
        Value::SourceCollectedAt => Cell::Owned(time(contact.source.collected_at)),
        Value::CreatedAt => Cell::Owned(time(contact.created_at)),
        Value::UpdatedAt => Cell::Owned(time(contact.updated_at)),
        Value::LastActivityAt => Cell::Owned(time(contact.last_activity_at)),
        Value::Objected => Cell::Bool(contact.objection.active),
    }
}

/// Whether a spreadsheet would read `s` as a formula: it starts with `=`, `+`, `-`, `@`, a tab
/// or a carriage return (OWASP's CSV injection list), and is not a plain number such as a phone
/// in E.164 (`+447700900123`) or `-12.5`, which a spreadsheet reads as that number and which can
/// carry no formula.
pub fn looks_like_formula(s: &str) -> bool {
    let Some(first) = s.chars().next() else { return false };
    if !matches!(first, '=' | '+' | '-' | '@' | '\t' | '\r') {
        return false;
    }
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let plain_number = match digits.split_once('.') {
        Some((int, frac)) => {
            !int.is_empty()
                && !frac.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
    };
    !plain_number
}

/// Writes one CSV field: a formula-looking value gets a leading apostrophe, then the field is
/// quoted (quotes doubled) when it holds a quote, a comma, a CR or a LF (RFC 4180).
fn csv_field(out: &mut Vec<u8>, s: &str) {
    let apostrophe = looks_like_formula(s);
    if s.contains(['"', ',', '\r', '\n']) {
        out.push(b'"');
        if apostrophe {
            out.push(b'\'');
        }
        for part in s.split('"').enumerate() {
            if part.0 > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(part.1.as_bytes());
        }
        out.push(b'"');
    } else {
        if apostrophe {
            out.push(b'\'');
        }
        out.extend_from_slice(s.as_bytes());
    }
}

/// The CSV header row.
pub fn csv_header(columns: &[Column]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(&mut out, &c.key);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends one contact as a CSV record; an absent value is an empty field.
pub fn csv_record(out: &mut Vec<u8>, columns: &[Column], contact: &Contact) {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match cell(contact, &c.value) {
            Cell::Null => {}
            Cell::Text(s) => csv_field(out, s),
            Cell::Owned(s) => csv_field(out, &s),
            Cell::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Cell::Number(n) => csv_field(out, &n.to_string()),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one contact as a JSON line, keys in column order; an absent value is `null`.
pub fn json_line(out: &mut Vec<u8>, columns: &[Column], contact: &Contact) {
    fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
        serde_json::to_writer(out, v).expect("a value of a line serialises");
    }
    out.push(b'{');
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put(out, c.key.as_str());
        out.push(b':');
        match cell(contact, &c.value) {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Text(s) => put(out, s),
            Cell::Owned(s) => put(out, s.as_str()),
            Cell::Bool(b) => put(out, &b),
            Cell::Number(n) => put(out, &n),
        }
    }
    out.extend_from_slice(b"}\n");
}

/// One page of the walk: the contacts that opened, where the next page starts, and how many
/// rows were left out because their person was erased.
#[derive(Debug)]
pub struct ExportPage {
    pub contacts: Vec<Contact>,
    pub next_after_opt: Option<Uuid>,
    pub erased: u64,
}

/// A piece of an export as the producer hands it over.
#[derive(Debug)]
pub struct ExportChunk {
    /// Whole lines.
    pub data: Vec<u8>,
    /// Contacts written so far, this chunk included.
    pub count: u64,
}

/// A running export: its id, its column keys, and the chunks as they are produced.
#[derive(Debug)]
pub struct BulkExport {
    pub export_id: Uuid,
    pub columns: Vec<String>,
    pub chunks: mpsc::Receiver<Result<ExportChunk, ServiceError>>,
}

impl ContactStore {
    /// Returns the exportable contacts of the tenant after `after_opt` in id order (at most
    /// `limit` rows read): restricted contacts are not read, and rows whose key is destroyed
    /// (an erased person's row restored from a backup) are counted and left out.
    pub async fn export_page(
        &self,
        tenant_id: Uuid,
        after_opt: Option<Uuid>,
        limit: u64,
    ) -> Result<ExportPage, ServiceError> {
        let mut q = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Restricted.eq(false))
            .order_by_asc(contact::Column::Id)
            .limit(limit.max(1));
        if let Some(after) = after_opt {
            q = q.filter(contact::Column::Id.gt(after));
        }
        let rows = q.all(&self.db().read).await.map_err(db_err)?;
        let next_after_opt = if rows.len() as u64 == limit.max(1) { rows.last().map(|r| r.id) } else { None };
        let mut erased = 0;
        let mut contacts = Vec::with_capacity(rows.len());
        for (model, personal_opt) in self.open_many(tenant_id, rows).await? {
            match personal_opt {
                Some(personal) => contacts.push(to_domain(model, Some(personal))?),
                None => erased += 1,
            }
        }
        Ok(ExportPage { contacts, next_after_opt, erased })
    }

    /// Starts a bulk export of the tenant's contacts in `format` with the columns `fields`
    /// names (every column when empty). Bad arguments fail here, before anything is read; the
    /// rows then come through [`BulkExport::chunks`] (the CSV header first). The `export` audit
    /// entry is written once the walk ends, completed or not.
    pub async fn bulk_export(
        &self,
        tenant_id: Uuid,
        format: ExportFormat,
        fields: &[String],
        audit: &Audit,
    ) -> Result<BulkExport, ServiceError> {
        let policy = self.field_policy(tenant_id).await?;
        let columns = select_columns(&all_columns(&policy), fields)?;
        let export_id = Uuid::now_v7();
        let keys: Vec<String> = columns.iter().map(|c| c.key.clone()).collect();
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let store = self.clone();
        let mut entry = audit.entry("export", "contact_list", export_id).fields(keys.clone());
        entry.subject_id_opt = None;
        let walk = async move {
            let started = std::time::Instant::now();
            let outcome = store.walk(tenant_id, format, &columns, &tx).await;
            let (count, erased, result) = match &outcome {
                Ok(Walked { count, erased, complete }) => {
                    (*count, *erased, if *complete { "completed" } else { "abandoned by the reader" })
                }
                Err((count, erased, _)) => (*count, *erased, "failed"),
            };
            if let Err((_, _, e)) = outcome {
                let _ = tx.send(Err(e)).await;
            }
            // Recorded whatever the outcome: rows may have been handed out before a failure.
            if let Err(e) = audit::record(&store.db().write, tenant_id, SERVICE_NAME, entry).await {
                tracing::error!(%tenant_id, %export_id, error = %e, "the bulk export's audit entry was not written");
            }
            tracing::info!(
                %tenant_id, %export_id, format = format.as_str(), contacts = count, erased_rows_left_out = erased,
                elapsed_ms = started.elapsed().as_millis() as u64, "bulk export {result}"
            );
        };
        tokio::spawn(tracing::Instrument::in_current_span(walk));
        Ok(BulkExport { export_id, columns: keys, chunks: rx })
    }

    /// Walks the tenant's contacts and sends them as chunks of whole lines. Stops early (not an
    /// error) when the reader is gone.
    async fn walk(
        &self,
        tenant_id: Uuid,
        format: ExportFormat,
        columns: &[Column],
        tx: &mpsc::Sender<Result<ExportChunk, ServiceError>>,
    ) -> Result<Walked, (u64, u64, ServiceError)> {
        let mut walked = Walked { count: 0, erased: 0, complete: false };
        let mut buf = match format {
            ExportFormat::Csv => csv_header(columns),
            ExportFormat::Jsonl => Vec::new(),
        };
        let mut after_opt = None;
        loop {
            let page = self
                .export_page(tenant_id, after_opt, EXPORT_PAGE)
                .await
                .map_err(|e| (walked.count, walked.erased, e))?;
            walked.erased += page.erased;
            for contact in &page.contacts {
                match format {
                    ExportFormat::Csv => csv_record(&mut buf, columns, contact),
                    ExportFormat::Jsonl => json_line(&mut buf, columns, contact),
                }
                walked.count += 1;
                if buf.len() >= CHUNK_BYTES && !send(tx, &mut buf, walked.count).await {
                    return Ok(walked);
                }
            }
            let last = page.next_after_opt.is_none();
            if (!buf.is_empty() || last) && !send(tx, &mut buf, walked.count).await {
                return Ok(walked);
            }
            if last {
                walked.complete = true;
                return Ok(walked);
            }
            after_opt = page.next_after_opt;
        }
    }
}

/// What a walk got through.
struct Walked {
    count: u64,
    erased: u64,
    complete: bool,
}

/// Hands `buf` over as one chunk; false when the reader is gone.
async fn send(tx: &mpsc::Sender<Result<ExportChunk, ServiceError>>, buf: &mut Vec<u8>, count: u64) -> bool {
    let data = std::mem::replace(buf, Vec::with_capacity(CHUNK_BYTES.min(64 * 1024)));
    tx.send(Ok(ExportChunk { data, count })).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{Channel, FieldDefinition, FieldType, Flag, Source};

    fn policy(keys: &[&str]) -> FieldPolicy {
        let mut p = FieldPolicy::default_policy();
        for key in keys {
            p.fields.push(FieldDefinition {
                key: key.to_string(),
                field_type: FieldType::String,
                category: "professional".into(),
                required: false,
                enum_values: Vec::new(),
                purpose: String::new(),
            });
        }
        p
    }

    fn ada() -> Contact {
        let at: DateTime<Utc> = "2026-11-29T10:00:00.5Z".parse().unwrap();
        Contact {
            id: "01900000-0000-7000-8000-00000000000c".parse().unwrap(),
            email: Some("ada@example.org".into()),
            first_name: Some("Ada, \"the\" first".into()),
            last_name: None,
            phone: Some("+447700900123".into()),
            fields: BTreeMap::from([
                ("company".to_string(), FieldValue::String("=HYPERLINK(\"x\")".into())),
                ("employees".to_string(), FieldValue::Number(-12.5)),
                ("vip".to_string(), FieldValue::Bool(true)),
            ]),
            source: Source {
                channel: Channel::WebForm,
                detail: "line1\nline2".into(),
                actor: "key:k".into(),
                collected_at: at,
            },
            field_sources: BTreeMap::new(),
            restriction: Flag::default(),
            objection: Flag::default(),
            version: 1,
            created_at: at,
            updated_at: at,
            last_activity_at: at,
        }
    }

    #[test]
    fn test_columns_follow_the_policy_and_rename_custom_keys_that_clash() {
        let keys: Vec<String> = all_columns(&policy(&["company", "id"])).into_iter().map(|c| c.key).collect();
        assert_eq!(
            keys,
            [
                "id",
                "email",
                "first_name",
                "last_name",
                "phone",
                "company",
                "fields.id",
                "source_channel",
                "source_detail",
                "source_collected_at",
                "created_at",
                "updated_at",
                "last_activity_at",
                "objected"
            ]
        );
    }

    #[test]
    fn test_fields_select_in_order_and_name_the_bad_one() {
        let all = all_columns(&policy(&["company"]));
        let chosen = select_columns(&all, &["company".into(), "id".into()]).unwrap();
        assert_eq!(chosen.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["company", "id"]);
        let err = select_columns(&all, &["id".into(), "shoe_size".into()]).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields[1]"));
        let err = select_columns(&all, &["id".into(), "email".into(), "id".into()]).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields[2]"));
        assert_eq!(ExportFormat::parse("xml").unwrap_err().field_opt.as_deref(), Some("format"));
        assert_eq!(ExportFormat::parse("").unwrap_err().field_opt.as_deref(), Some("format"));
        assert_eq!(ExportFormat::parse("jsonl").unwrap(), ExportFormat::Jsonl);
    }

    #[test]
    fn test_formula_detection_spares_plain_numbers() {
        for s in ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\r=1", "+", "-1.", "+44 7700"] {
            assert!(looks_like_formula(s), "{s:?}");
        }
        for s in ["+447700900123", "-12.5", "12", "a=b", "", "ada@example.org"] {
            assert!(!looks_like_formula(s), "{s:?}");
        }
    }

    #[test]
    fn test_csv_record_quotes_and_neutralises() {
        let all = all_columns(&policy(&["company", "employees", "vip", "notes"]));
        let mut out = csv_header(&all);
        csv_record(&mut out, &all, &ada());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "id,email,first_name,last_name,phone,company,employees,vip,notes,source_channel,source_detail,\
             source_collected_at,created_at,updated_at,last_activity_at,objected\r\n\
             01900000-0000-7000-8000-00000000000c,ada@example.org,\"Ada, \"\"the\"\" first\",,+447700900123,\
             \"'=HYPERLINK(\"\"x\"\")\",-12.5,true,,web_form,\"line1\nline2\",2026-11-29T10:00:00.500000Z,\
             2026-11-29T10:00:00.500000Z,2026-11-29T10:00:00.500000Z,2026-11-29T10:00:00.500000Z,false\r\n"
        );
    }

    #[test]
    fn test_json_line_keeps_types_and_column_order() {
        let all = all_columns(&policy(&["company", "employees", "vip", "notes"]));
        let chosen =
            select_columns(&all, &["vip".into(), "company".into(), "notes".into(), "employees".into()]).unwrap();
        let mut out = Vec::new();
        json_line(&mut out, &chosen, &ada());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"vip\":true,\"company\":\"=HYPERLINK(\\\"x\\\")\",\"notes\":null,\"employees\":-12.5}\n"
        );
    }
}
