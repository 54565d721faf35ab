//! Domain types of the consent service and the check decision, independent of storage.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Art. 6(1) lawful bases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LawfulBasis {
    Consent,
    Contract,
    LegalObligation,
    VitalInterests,
    PublicTask,
    LegitimateInterests,
}

/// How a consent or withdrawal was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSource {
    WebForm,
    EmailOptin,
    Phone,
    Api,
    Import,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Grant,
    Withdraw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Granted,
    /// Given, waiting for the person's confirmation (double opt-in).
    Pending,
    Withdrawn,
}

/// String forms shared by storage, events and APIs.
macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(LawfulBasis {
    Consent => "consent",
    Contract => "contract",
    LegalObligation => "legal_obligation",
    VitalInterests => "vital_interests",
    PublicTask => "public_task",
    LegitimateInterests => "legitimate_interests",
});
text_enum!(ConsentSource { WebForm => "web_form", EmailOptin => "email_optin", Phone => "phone", Api => "api", Import => "import" });
text_enum!(Action { Grant => "grant", Withdraw => "withdraw" });
text_enum!(Status { Granted => "granted", Pending => "pending", Withdrawn => "withdrawn" });

impl LawfulBasis {
    /// Returns true for the bases a person can object to (Art. 21(1)).
    pub fn objectable(self) -> bool {
        matches!(self, LawfulBasis::LegitimateInterests | LawfulBasis::PublicTask)
    }
}

/// One immutable version of a purpose's notice text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notice {
    pub version: i32,
    pub text: String,
    pub sha256: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Purpose {
    pub key: String,
    pub description: String,
    pub lawful_basis: LawfulBasis,
    pub current_version: i32,
    pub created_at: DateTime<Utc>,
    /// Every version, oldest first, or only the current one.
    pub notices: Vec<Notice>,
}

/// What a caller records.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordInput {
    pub contact_id: Uuid,
    pub purpose: String,
    pub action: Action,
    pub lawful_basis_opt: Option<LawfulBasis>,
    pub source: ConsentSource,
    pub form_id_opt: Option<String>,
    /// `None`: the current version.
    pub notice_version_opt: Option<i32>,
    pub at_opt: Option<DateTime<Utc>>,
    pub ip_opt: Option<String>,
    pub user_agent_opt: Option<String>,
    pub justification_opt: Option<String>,
    pub require_confirmation: bool,
    /// Refuse unless the current state still comes from this record (confirming a pending grant).
    pub expected_record_opt: Option<Uuid>,
}

/// One row of the ledger.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub id: Uuid,
    pub contact_id: Uuid,
    pub purpose: String,
    pub action: Action,
    pub status: Status,
    pub lawful_basis: LawfulBasis,
    pub source: ConsentSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_version: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// The current state of one contact and purpose, derived from the ledger.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct State {
    pub purpose: String,
    pub status: Status,
    pub lawful_basis: LawfulBasis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_version: Option<i32>,
    pub since: DateTime<Utc>,
}

/// What contacts knows of a subject, for checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubjectFlags {
    pub exists: bool,
    pub restricted: bool,
    pub objected: bool,
}

/// The answer to "may purpose P be used for contact C now?".
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: &'static str,
    pub lawful_basis_opt: Option<LawfulBasis>,
    pub notice_version_opt: Option<i32>,
    pub since_opt: Option<DateTime<Utc>>,
}

impl Decision {
    fn refused(reason: &'static str) -> Decision {
        Decision { allowed: false, reason, lawful_basis_opt: None, notice_version_opt: None, since_opt: None }
    }
}

/// Decides a check. Restriction refuses every purpose; an objection refuses the purposes whose
/// basis is objectable (legitimate interests, public task); otherwise the purpose needs a
/// granted (confirmed) state on the ledger: consent for consent purposes, a recorded basis with
/// its justification for the others.
pub fn decide(purpose_opt: Option<&Purpose>, flags: SubjectFlags, state_opt: Option<&State>) -> Decision {
    let Some(purpose) = purpose_opt else { return Decision::refused("unknown_purpose") };
    if !flags.exists {
        return Decision::refused("unknown_contact");
    }
    if flags.restricted {
        return Decision::refused("restricted");
    }
    let Some(state) = state_opt else { return Decision::refused("no_basis") };
    let basis = state.lawful_basis;
    if flags.objected && (basis.objectable() || purpose.lawful_basis.objectable()) {
        return Decision::refused("objected");
    }
    let reason = match state.status {
        Status::Withdrawn => "withdrawn",
        Status::Pending => "pending",
        Status::Granted if basis == LawfulBasis::Consent => "granted",
        Status::Granted => "lawful_basis",
    };
    Decision {
        allowed: state.status == Status::Granted,
        reason,
        lawful_basis_opt: Some(basis),
        notice_version_opt: state.notice_version,
        since_opt: Some(state.since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purpose(basis: LawfulBasis) -> Purpose {
        Purpose {
            key: "newsletter".into(),
            description: String::new(),
            lawful_basis: basis,
            current_version: 1,
            created_at: Utc::now(),
            notices: vec![],
        }
    }

    fn state(status: Status, basis: LawfulBasis) -> State {
        State { purpose: "newsletter".into(), status, lawful_basis: basis, notice_version: Some(2), since: Utc::now() }
    }

    const OK: SubjectFlags = SubjectFlags { exists: true, restricted: false, objected: false };

    #[test]
    fn test_granted_consent_allows_with_its_version() {
        let p = purpose(LawfulBasis::Consent);
        let d = decide(Some(&p), OK, Some(&state(Status::Granted, LawfulBasis::Consent)));
        assert!(d.allowed);
        assert_eq!((d.reason, d.notice_version_opt), ("granted", Some(2)));
    }

    #[test]
    fn test_pending_withdrawn_and_missing_refuse() {
        let p = purpose(LawfulBasis::Consent);
        assert_eq!(decide(Some(&p), OK, Some(&state(Status::Pending, LawfulBasis::Consent))).reason, "pending");
        assert_eq!(decide(Some(&p), OK, Some(&state(Status::Withdrawn, LawfulBasis::Consent))).reason, "withdrawn");
        assert_eq!(decide(Some(&p), OK, None).reason, "no_basis");
        assert!(!decide(Some(&p), OK, Some(&state(Status::Pending, LawfulBasis::Consent))).allowed);
    }

    #[test]
    fn test_restriction_refuses_every_purpose() {
        let flags = SubjectFlags { restricted: true, ..OK };
        for basis in [LawfulBasis::Consent, LawfulBasis::Contract, LawfulBasis::LegalObligation] {
            let d = decide(Some(&purpose(basis)), flags, Some(&state(Status::Granted, basis)));
            assert_eq!((d.allowed, d.reason), (false, "restricted"));
        }
    }

    #[test]
    fn test_objection_refuses_objectable_bases_only() {
        let flags = SubjectFlags { objected: true, ..OK };
        let li = decide(
            Some(&purpose(LawfulBasis::LegitimateInterests)),
            flags,
            Some(&state(Status::Granted, LawfulBasis::LegitimateInterests)),
        );
        assert_eq!(li.reason, "objected");
        let contract =
            decide(Some(&purpose(LawfulBasis::Contract)), flags, Some(&state(Status::Granted, LawfulBasis::Contract)));
        assert_eq!((contract.allowed, contract.reason), (true, "lawful_basis"));
    }

    #[test]
    fn test_unknown_purpose_and_contact() {
        assert_eq!(decide(None, OK, None).reason, "unknown_purpose");
        let gone = SubjectFlags::default();
        assert_eq!(decide(Some(&purpose(LawfulBasis::Consent)), gone, None).reason, "unknown_contact");
    }

    #[test]
    fn test_text_forms_round_trip() {
        for b in [LawfulBasis::Consent, LawfulBasis::PublicTask, LawfulBasis::LegitimateInterests] {
            assert_eq!(LawfulBasis::parse(b.as_str()), Some(b));
        }
        assert_eq!(Status::parse("pending"), Some(Status::Pending));
        assert_eq!(ConsentSource::parse("fax"), None);
    }
}
