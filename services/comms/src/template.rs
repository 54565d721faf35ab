//! Mail templates: plain text with `{{key}}` variables, where a key is a field of the tenant's
//! field policy (`first_name`, `company`, …). Anything else between braces is refused when the
//! template is created, so a template can never pull data the tenant does not collect.

use std::collections::HashMap;

use carnet_kit::ServiceError;

/// Longest subject line accepted (RFC 5322 recommends 78 characters per header line; subjects
/// are folded, but a subject longer than this is a mistake).
pub const MAX_SUBJECT_CHARS: usize = 300;
/// Largest body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

/// A parsed template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    parts: Vec<Part>,
}

impl Text {
    /// Parses `source`; `field` names it in errors (`subject`, `body`).
    pub fn parse(field: &str, source: &str) -> Result<Text, ServiceError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| ServiceError::invalid_field(field, "has a `{{` without its closing `}}`"))?;
            let key = after[..end].trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ServiceError::invalid_field(
                    field,
                    "has a variable that is not a field key (letters, digits and `_` between `{{` and `}}`)",
                ));
            }
            parts.push(Part::Var(key.to_string()));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(ServiceError::invalid_field(field, "has a `}}` without its opening `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Text { parts })
    }

    /// The variables used, in order of first use.
    pub fn variables(&self) -> Vec<String> {
        let mut vars: Vec<String> = Vec::new();
        for part in &self.parts {
            if let Part::Var(key) = part
                && !vars.contains(key)
            {
                vars.push(key.clone());
            }
        }
        vars
    }

    /// Fills in the variables; a missing value renders empty.
    pub fn render(&self, values: &HashMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(key) => out.push_str(values.get(key).map(String::as_str).unwrap_or("")),
            }
        }
        out
    }
}

/// A template's subject and body, checked against the field policy keys `allowed`.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub subject: Text,
    pub body: Text,
}

impl Parsed {
    /// Parses and checks a subject and body; `prefix` names them in errors (`content.`, `steps[1].content.`).
    pub fn check(prefix: &str, subject: &str, body: &str, allowed: &[String]) -> Result<Parsed, ServiceError> {
        let subject_field = format!("{prefix}subject");
        let body_field = format!("{prefix}body");
        if subject.trim().is_empty() {
            return Err(ServiceError::invalid_field(subject_field, "is required"));
        }
        if subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(ServiceError::invalid_field(
                subject_field,
                format!("is longer than {MAX_SUBJECT_CHARS} characters"),
            ));
        }
        if subject.contains(['\r', '\n']) {
            return Err(ServiceError::invalid_field(subject_field, "must be one line"));
        }
        if body.trim().is_empty() {
            return Err(ServiceError::invalid_field(body_field, "is required"));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(ServiceError::invalid_field(body_field, format!("is larger than {MAX_BODY_BYTES} bytes")));
        }
        let parsed = Parsed { subject: Text::parse(&subject_field, subject)?, body: Text::parse(&body_field, body)? };
        for (field, text) in [(&subject_field, &parsed.subject), (&body_field, &parsed.body)] {
            for var in text.variables() {
                if !allowed.contains(&var) {
                    return Err(ServiceError::invalid_field(
                        field.clone(),
                        format!("uses `{{{{{var}}}}}`, which is not a field of the tenant's field policy"),
                    ));
                }
            }
        }
        Ok(parsed)
    }

    /// Parses a stored template (checked against the policy when it was stored).
    pub fn stored(subject: &str, body: &str) -> Result<Parsed, ServiceError> {
        Ok(Parsed { subject: Text::parse("subject", subject)?, body: Text::parse("body", body)? })
    }

    pub fn variables(&self) -> Vec<String> {
        let mut vars = self.subject.variables();
        for v in self.body.variables() {
            if !vars.contains(&v) {
                vars.push(v);
            }
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["first_name".into(), "company".into()]
    }

    #[test]
    fn test_variables_render_and_missing_values_are_empty() {
        let parsed = Parsed::check("", "Hi {{ first_name }}", "{{first_name}} at {{company}}.", &allowed()).unwrap();
        let values = HashMap::from([("first_name".to_string(), "Ada".to_string())]);
        assert_eq!(parsed.subject.render(&values), "Hi Ada");
        assert_eq!(parsed.body.render(&values), "Ada at .");
        assert_eq!(parsed.variables(), vec!["first_name", "company"]);
    }

    #[test]
    fn test_variable_outside_the_policy_is_refused_naming_the_field() {
        let err = Parsed::check("content.", "Hi", "Your {{salary}}", &allowed()).unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("content.body"));
        assert!(err.message.contains("salary"), "{}", err.message);
    }

    #[test]
    fn test_malformed_templates_are_refused() {
        for (subject, body, field) in [
            ("Hi {{first_name", "b", "subject"),
            ("Hi", "b }} a", "body"),
            ("Hi", "{{ two words }}", "body"),
            ("", "b", "subject"),
            ("a\nb", "b", "subject"),
            ("Hi", " ", "body"),
        ] {
            let err = Parsed::check("", subject, body, &allowed()).unwrap_err();
            assert_eq!(err.field_opt.as_deref(), Some(field), "{subject:?} {body:?}");
        }
    }
}
