//! The audit trail's hash chain (docs/audit.md): its canonical encoding, the JSON line of the
//! export, and the check a regulator repeats offline. No IO here.
//!
//! Per tenant, entry `n` carries `prev_hash` (entry `n-1`'s hash, [`GENESIS`] before the first)
//! and `hash = SHA-256(canonical(entry))`, lowercase hex, where `canonical` length-prefixes every
//! value (`u32` big-endian byte length, then the UTF-8 bytes) in a fixed order:
//!
//! `DOMAIN, prev_hash, tenant_id, seq, event_id, occurred_at, recorded_at, service, actor,
//! action, record_type, record_id, subject_id, api, request_id`, then the number of field keys
//! (`u32` big-endian) and each key length-prefixed, in the order recorded.
//!
//! Every value is hashed exactly as the export writes it: ids as lowercase hyphenated UUIDs,
//! `seq` in decimal, times as RFC 3339 UTC with six fractional digits (`2026-12-01T09:30:00.123456Z`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::entity::audit;

/// The `prev_hash` of a tenant's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The first value hashed: names the encoding, so a later version cannot be mistaken for it.
pub const DOMAIN: &str = "carnet-audit-v1";

/// Formats a time as the chain hashes it (microseconds, `Z`).
pub fn time_text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One entry as the export writes it (one JSON line) and as the chain hashes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub seq: u64,
    pub tenant_id: String,
    pub event_id: String,
    pub occurred_at: String,
    pub recorded_at: String,
    pub service: String,
    pub actor: String,
    pub action: String,
    pub record_type: String,
    pub record_id: String,
    pub subject_id: String,
    pub api: String,
    pub request_id: String,
    pub fields: Vec<String>,
    pub prev_hash: String,
    pub hash: String,
}

fn put(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

impl Line {
    /// The line of a stored row.
    pub fn of(row: &audit::Model) -> Line {
        Line {
            seq: row.seq.max(0) as u64,
            tenant_id: row.tenant_id.to_string(),
            event_id: row.event_id.to_string(),
            occurred_at: time_text(row.occurred_at),
            recorded_at: time_text(row.recorded_at),
            service: row.service.clone(),
            actor: row.actor.clone(),
            action: row.action.clone(),
            record_type: row.record_type.clone(),
            record_id: row.record_id.clone(),
            subject_id: row.subject_id.clone(),
            api: row.api.clone(),
            request_id: row.request_id.clone(),
            fields: fields_of(&row.fields),
            prev_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
        }
    }

    /// The bytes the hash covers: every value but `hash` itself.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        for value in [
            DOMAIN,
            &self.prev_hash,
            &self.tenant_id,
            &self.seq.to_string(),
            &self.event_id,
            &self.occurred_at,
            &self.recorded_at,
            &self.service,
            &self.actor,
            &self.action,
            &self.record_type,
            &self.record_id,
            &self.subject_id,
            &self.api,
            &self.request_id,
        ] {
            put(&mut out, value);
        }
        out.extend_from_slice(&(self.fields.len() as u32).to_be_bytes());
        for field in &self.fields {
            put(&mut out, field);
        }
        out
    }

    /// The hash this line's values give (whatever its `hash` says).
    pub fn computed_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical()))
    }
}

/// The field keys of a stored row (a JSON array of strings).
pub fn fields_of(value: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// Why an entry breaks the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Its values do not give its hash: it was changed.
    HashMismatch,
    /// Its `prev_hash` is not the previous entry's hash.
    PrevHashMismatch,
    /// The entry at this position is missing (a later one follows directly).
    Missing,
}

impl Broken {
    pub fn as_str(self) -> &'static str {
        match self {
            Broken::HashMismatch => "hash_mismatch",
            Broken::PrevHashMismatch => "prev_hash_mismatch",
            Broken::Missing => "missing",
        }
    }
}

/// Walks a chain in order, one line at a time, and stops at the first entry that breaks it.
#[derive(Clone, Debug)]
pub struct Checker {
    /// The next expected position and the hash it must follow; `None` before the first line of
    /// a range (it is taken as the anchor).
    next_opt: Option<(u64, String)>,
    pub checked: u64,
    pub head_opt: Option<(u64, String)>,
}

impl Checker {
    /// A check of a whole chain: it starts at seq 1 after [`GENESIS`].
    pub fn whole() -> Checker {
        Checker { next_opt: Some((1, GENESIS.to_string())), checked: 0, head_opt: None }
    }

    /// A check of a range: its first line's seq and `prev_hash` are taken as given.
    pub fn range() -> Checker {
        Checker { next_opt: None, checked: 0, head_opt: None }
    }

    /// Checks the next line; `Err((seq, why))` names the first position that does not hold.
    pub fn check(&mut self, line: &Line) -> Result<(), (u64, Broken)> {
        if let Some((seq, prev)) = &self.next_opt {
            if line.seq != *seq {
                return Err((*seq, Broken::Missing));
            }
            if line.prev_hash != *prev {
                return Err((line.seq, Broken::PrevHashMismatch));
            }
        }
        if line.computed_hash() != line.hash {
            return Err((line.seq, Broken::HashMismatch));
        }
        self.next_opt = Some((line.seq + 1, line.hash.clone()));
        self.head_opt = Some((line.seq, line.hash.clone()));
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, prev: &str) -> Line {
        let mut l = Line {
            seq,
            tenant_id: "01900000-0000-7000-8000-000000000001".into(),
            event_id: "01900000-0000-7000-8000-00000000000a".into(),
            occurred_at: "2026-12-01T09:30:00.123456Z".into(),
            recorded_at: "2026-12-01T09:30:00.200000Z".into(),
            service: "contacts".into(),
            actor: "key:0190000000007000800000000000000b".into(),
            action: "update".into(),
            record_type: "contact".into(),
            record_id: "01900000-0000-7000-8000-00000000000c".into(),
            subject_id: "01900000-0000-7000-8000-00000000000c".into(),
            api: "carnet.contacts.v1.ContactsService/UpdateContact".into(),
            request_id: "req-1".into(),
            fields: vec!["last_name".into(), "company".into()],
            prev_hash: prev.into(),
            hash: String::new(),
        };
        l.hash = l.computed_hash();
        l
    }

    /// The test vector of docs/audit.md: an implementation that reproduces this hash encodes
    /// entries as Carnet does.
    #[test]
    fn test_known_answer_of_the_documented_vector() {
        let l = line(1, GENESIS);
        assert_eq!(&l.canonical()[..19], b"\0\0\0\x0fcarnet-audit-v1");
        assert_eq!(l.hash, "3c98d99778800ee65bfc43b41508125890b949d895158412bb22460cbbf26b06");
    }

    #[test]
    fn test_a_chain_checks_and_any_change_breaks_it_at_that_entry() {
        let first = line(1, GENESIS);
        let second = line(2, &first.hash);
        let third = line(3, &second.hash);
        let mut ok = Checker::whole();
        for l in [&first, &second, &third] {
            ok.check(l).unwrap();
        }
        assert_eq!(ok.head_opt, Some((3, third.hash.clone())));

        let mut changed = second.clone();
        changed.actor = "key:someone-else".into();
        let mut c = Checker::whole();
        c.check(&first).unwrap();
        assert_eq!(c.check(&changed), Err((2, Broken::HashMismatch)));

        // Rewriting the hash too moves the break to the next entry.
        changed.hash = changed.computed_hash();
        let mut c = Checker::whole();
        c.check(&first).unwrap();
        c.check(&changed).unwrap();
        assert_eq!(c.check(&third), Err((3, Broken::PrevHashMismatch)));

        let mut c = Checker::whole();
        c.check(&first).unwrap();
        assert_eq!(c.check(&third), Err((2, Broken::Missing)));
        assert_eq!(Checker::whole().check(&second), Err((1, Broken::Missing)));
        // A range starts wherever it starts.
        let mut r = Checker::range();
        r.check(&second).unwrap();
        r.check(&third).unwrap();
    }

    #[test]
    fn test_values_cannot_slide_between_fields() {
        let a = line(1, GENESIS);
        let mut b = a.clone();
        b.fields = vec!["last_namecompany".into()];
        assert_ne!(a.computed_hash(), b.computed_hash());
        let mut c = a.clone();
        c.actor.push_str("update");
        c.action.clear();
        assert_ne!(a.computed_hash(), c.computed_hash());
    }

    #[test]
    fn test_times_are_hashed_with_six_fractional_digits() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T09:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(time_text(at), "2026-12-01T09:30:00.000000Z");
    }
}
