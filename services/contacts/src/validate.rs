//! Input validation: e-mail and phone normalisation, the field policy (data minimisation) and
//! the policy itself. Pure functions; errors name the field and never echo its value.

use std::collections::{BTreeMap, HashSet};

use carnet_kit::ServiceError;

use crate::domain::{BUILTIN_FIELDS, ContactInput, FieldDefinition, FieldPolicy, FieldType, FieldValue, is_builtin};

/// Longest accepted text value, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest accepted name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most fields a policy may list.
pub const MAX_POLICY_FIELDS: usize = 200;

/// Normalises an e-mail address: trimmed, lower-cased, checked for a plausible shape
/// (`local@domain.tld`, at most 254 characters, no spaces or control characters).
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("is empty");
    }
    if email.len() > 254 {
        return Err("is longer than 254 characters");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("is not an e-mail address");
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|tld| tld.len() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()));
    if local_ok && domain_ok { Ok(email) } else { Err("is not an e-mail address") }
}

/// Normalises a phone number to E.164 (`+` and 8 to 15 digits, no leading zero). Spaces, dots,
/// dashes, slashes and parentheses are dropped; a leading `00` is read as `+`. Numbers without
/// a country code are refused: the tenant must collect international numbers.
pub fn normalize_phone(raw: &str) -> Result<String, &'static str> {
    let compact: String = raw.trim().chars().filter(|c| !" .-/()\u{a0}".contains(*c)).collect();
    let digits = if let Some(rest) = compact.strip_prefix('+') {
        rest
    } else if let Some(rest) = compact.strip_prefix("00") {
        rest
    } else {
        return Err("is not an international phone number (E.164, starting with + and a country code)");
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err("is not a phone number");
    }
    if !(8..=15).contains(&digits.len()) {
        return Err("must have 8 to 15 digits (E.164)");
    }
    if digits.starts_with('0') {
        return Err("has no valid country code (E.164)");
    }
    Ok(format!("+{digits}"))
}

fn normalize_text(raw: &str, max_chars: usize) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("is empty; clear the field instead".into());
    }
    if text.chars().count() > max_chars {
        return Err(format!("is longer than {max_chars} characters"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err("contains control characters".into());
    }
    Ok(text.to_string())
}

/// Checks and normalises one custom field value against its definition.
pub fn normalize_value(def: &FieldDefinition, value: &FieldValue) -> Result<FieldValue, String> {
    let expect = |what: &str| format!("must be {what} (field type {})", def.field_type.as_str());
    match (def.field_type, value) {
        (FieldType::String, FieldValue::String(s)) => normalize_text(s, MAX_TEXT_CHARS).map(FieldValue::String),
        (FieldType::Email, FieldValue::String(s)) => normalize_email(s).map(FieldValue::String).map_err(str::to_owned),
        (FieldType::Phone, FieldValue::String(s)) => normalize_phone(s).map(FieldValue::String).map_err(str::to_owned),
        (FieldType::Date, FieldValue::String(s)) => chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map(|d| FieldValue::String(d.format("%Y-%m-%d").to_string()))
            .map_err(|_| "is not a date (YYYY-MM-DD)".to_string()),
        (FieldType::Number, FieldValue::Number(n)) if n.is_finite() => Ok(FieldValue::Number(*n)),
        (FieldType::Number, _) => Err(expect("a finite number")),
        (FieldType::Boolean, FieldValue::Bool(b)) => Ok(FieldValue::Bool(*b)),
        (FieldType::Boolean, _) => Err(expect("true or false")),
        (FieldType::Enum, FieldValue::String(s)) => {
            let s = s.trim();
            if def.enum_values.iter().any(|v| v == s) {
                Ok(FieldValue::String(s.to_string()))
            } else {
                Err(format!("must be one of: {}", def.enum_values.join(", ")))
            }
        }
        (_, _) => Err(expect("a string")),
    }
}

/// The built-in values of a contact after validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidInput {
    pub email_opt: Option<String>,
    pub first_name_opt: Option<String>,
    pub last_name_opt: Option<String>,
    pub phone_opt: Option<String>,
    pub fields: BTreeMap<String, FieldValue>,
}

impl ValidInput {
    /// Returns the keys that carry a value, built-ins first.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (key, present) in [
            ("email", self.email_opt.is_some()),
            ("first_name", self.first_name_opt.is_some()),
            ("last_name", self.last_name_opt.is_some()),
            ("phone", self.phone_opt.is_some()),
        ] {
            if present {
                keys.push(key.to_string());
            }
        }
        keys.extend(self.fields.keys().cloned());
        keys
    }
}

fn not_in_policy(field: &str) -> ServiceError {
    ServiceError::invalid_field(field, "is not in the tenant's field policy")
}

fn builtin(policy: &FieldPolicy, key: &str, raw_opt: &Option<String>) -> Result<Option<String>, ServiceError> {
    let Some(raw) = raw_opt else { return Ok(None) };
    if policy.get(key).is_none() {
        return Err(not_in_policy(key));
    }
    let normalized = match key {
        "email" => normalize_email(raw).map_err(str::to_owned),
        "phone" => normalize_phone(raw).map_err(str::to_owned),
        _ => normalize_text(raw, MAX_NAME_CHARS),
    };
    normalized.map(Some).map_err(|m| ServiceError::invalid_field(key, m))
}

/// Validates submitted values against the policy: every field must be listed, every value of
/// the right type. Does not check required fields (see [`check_required`]).
pub fn validate_input(policy: &FieldPolicy, input: &ContactInput) -> Result<ValidInput, ServiceError> {
    let mut valid = ValidInput {
        email_opt: builtin(policy, "email", &input.email_opt)?,
        first_name_opt: builtin(policy, "first_name", &input.first_name_opt)?,
        last_name_opt: builtin(policy, "last_name", &input.last_name_opt)?,
        phone_opt: builtin(policy, "phone", &input.phone_opt)?,
        fields: BTreeMap::new(),
    };
    for (key, value) in &input.fields {
        let field = format!("fields.{key}");
        if is_builtin(key) {
            return Err(ServiceError::invalid_field(field, "is a built-in field; set it at the top level"));
        }
        let def = policy.get(key).ok_or_else(|| not_in_policy(&field))?;
        let value = normalize_value(def, value).map_err(|m| ServiceError::invalid_field(&field, m))?;
        valid.fields.insert(key.clone(), value);
    }
    Ok(valid)
}

/// Fails naming the first required field of the policy that `present` does not hold.
pub fn check_required(policy: &FieldPolicy, present: &dyn Fn(&str) -> bool) -> Result<(), ServiceError> {
    for def in policy.fields.iter().filter(|d| d.required) {
        if !present(&def.key) {
            let field = if is_builtin(&def.key) { def.key.clone() } else { format!("fields.{}", def.key) };
            return Err(ServiceError::invalid_field(field, "is required by the tenant's field policy"));
        }
    }
    Ok(())
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z'))
        && key.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Validates a field policy a tenant submits.
pub fn validate_policy(fields: &[FieldDefinition]) -> Result<(), ServiceError> {
    if fields.len() > MAX_POLICY_FIELDS {
        return Err(ServiceError::invalid_field("fields", format!("lists more than {MAX_POLICY_FIELDS} fields")));
    }
    let mut seen = HashSet::new();
    for (i, def) in fields.iter().enumerate() {
        let at = |name: &str| format!("fields[{i}].{name}");
        if !is_identifier(&def.key) {
            return Err(ServiceError::invalid_field(
                at("key"),
                "must be lower-case letters, digits and _, starting with a letter (at most 63)",
            ));
        }
        if !seen.insert(def.key.as_str()) {
            return Err(ServiceError::invalid_field(at("key"), format!("`{}` is listed twice", def.key)));
        }
        if let Some((_, builtin_type)) = BUILTIN_FIELDS.iter().find(|(k, _)| *k == def.key)
            && def.field_type != *builtin_type
        {
            return Err(ServiceError::invalid_field(
                at("type"),
                format!("built-in field `{}` must have type {}", def.key, builtin_type.as_str()),
            ));
        }
        if !is_identifier(&def.category) {
            return Err(ServiceError::invalid_field(
                at("category"),
                "is required: a data category such as contact, identity or professional",
            ));
        }
        match def.field_type {
            FieldType::Enum if def.enum_values.is_empty() => {
                return Err(ServiceError::invalid_field(at("enum_values"), "is required for type enum"));
            }
            FieldType::Enum => {
                let mut values = HashSet::new();
                if def.enum_values.iter().any(|v| v.trim().is_empty() || v.trim() != v || !values.insert(v)) {
                    return Err(ServiceError::invalid_field(
                        at("enum_values"),
                        "must be distinct, non-empty and trimmed",
                    ));
                }
            }
            _ if !def.enum_values.is_empty() => {
                return Err(ServiceError::invalid_field(at("enum_values"), "is only allowed for type enum"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(key: &str, field_type: FieldType) -> FieldDefinition {
        FieldDefinition {
            key: key.into(),
            field_type,
            category: "professional".into(),
            required: false,
            enum_values: vec![],
            purpose: String::new(),
        }
    }

    #[test]
    fn test_normalize_email_trims_and_lowercases() {
        assert_eq!(normalize_email("  Ada.Lovelace@Example.ORG ").unwrap(), "ada.lovelace@example.org");
        assert_eq!(normalize_email("x+tag@sub.example.co.uk").unwrap(), "x+tag@sub.example.co.uk");
    }

    #[test]
    fn test_normalize_email_refuses_malformed() {
        for bad in [
            "",
            "plain",
            "a@b",
            "@example.org",
            "a@@example.org",
            "a b@example.org",
            "a@-x.org",
            "a..b@example.org",
            "a@example.1",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn test_normalize_phone_to_e164() {
        assert_eq!(normalize_phone("+33 6 12 34 56 78").unwrap(), "+33612345678");
        assert_eq!(normalize_phone("0049 (30) 123-4567").unwrap(), "+49301234567");
        assert_eq!(normalize_phone("+1.415.555.0100").unwrap(), "+14155550100");
    }

    #[test]
    fn test_normalize_phone_refuses_malformed() {
        for bad in
            ["", "06 12 34 56 78", "+33 6 12 AB 56 78", "+1234", "+1234567890123456", "+0612345678", "++33612345678"]
        {
            assert!(normalize_phone(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn test_field_outside_policy_is_refused_naming_it() {
        let policy = FieldPolicy::default_policy();
        let mut input = ContactInput { email_opt: Some("a@example.org".into()), ..Default::default() };
        input.fields.insert("shoe_size".into(), FieldValue::Number(42.0));
        let err = validate_input(&policy, &input).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields.shoe_size"));
    }

    #[test]
    fn test_builtin_outside_policy_is_refused_naming_it() {
        let mut policy = FieldPolicy::default_policy();
        policy.fields.retain(|d| d.key != "phone");
        let input = ContactInput { phone_opt: Some("+33612345678".into()), ..Default::default() };
        let err = validate_input(&policy, &input).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("phone"));
    }

    #[test]
    fn test_typed_values_are_checked() {
        let mut policy = FieldPolicy::default_policy();
        let mut tier = def("tier", FieldType::Enum);
        tier.enum_values = vec!["gold".into(), "silver".into()];
        policy.fields.extend([
            def("birthday", FieldType::Date),
            def("score", FieldType::Number),
            tier,
            def("vip", FieldType::Boolean),
        ]);
        let ok = |k: &str, v: FieldValue| {
            let mut input = ContactInput::default();
            input.fields.insert(k.into(), v);
            validate_input(&policy, &input)
        };
        assert!(ok("birthday", FieldValue::String("1815-12-10".into())).is_ok());
        assert!(ok("birthday", FieldValue::String("10/12/1815".into())).is_err());
        assert!(ok("score", FieldValue::Number(3.5)).is_ok());
        assert!(ok("score", FieldValue::String("3.5".into())).is_err());
        assert!(ok("score", FieldValue::Number(f64::NAN)).is_err());
        assert!(ok("tier", FieldValue::String("gold".into())).is_ok());
        assert!(ok("tier", FieldValue::String("bronze".into())).is_err());
        assert!(ok("vip", FieldValue::Bool(true)).is_ok());
        assert!(ok("vip", FieldValue::String("yes".into())).is_err());
    }

    #[test]
    fn test_required_field_is_enforced() {
        let mut policy = FieldPolicy::default_policy();
        policy.fields.iter_mut().find(|d| d.key == "email").unwrap().required = true;
        let err = check_required(&policy, &|k| k == "first_name").unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("email"));
        assert!(check_required(&policy, &|k| k == "email").is_ok());
    }

    #[test]
    fn test_error_never_echoes_the_value() {
        let input = ContactInput { email_opt: Some("secret-person at example".into()), ..Default::default() };
        let err = validate_input(&FieldPolicy::default_policy(), &input).unwrap_err();
        assert!(!err.message.contains("secret-person"), "{}", err.message);
    }

    #[test]
    fn test_policy_validation() {
        assert!(validate_policy(&FieldPolicy::default_policy().fields).is_ok());
        let err = validate_policy(&[def("email", FieldType::String)]).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields[0].type"));
        let err = validate_policy(&[def("a", FieldType::Number), def("a", FieldType::Number)]).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields[1].key"));
        let err = validate_policy(&[def("Bad Key", FieldType::Number)]).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields[0].key"));
        let err = validate_policy(&[def("tier", FieldType::Enum)]).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("fields[0].enum_values"));
        let mut no_cat = def("x", FieldType::Number);
        no_cat.category = String::new();
        assert!(validate_policy(&[no_cat]).is_err());
    }
}
