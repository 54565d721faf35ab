//! A profiling plugin: scores a lead from 0 to 100 from its e-mail address, company and job
//! title, and writes the score as text to `lead_score`. Deterministic rules, no remote source:
//!
//! | signal | points |
//! |---|---:|
//! | `email` on a company domain (not a webmail domain below) | 30 |
//! | `email` on a webmail domain | 10 |
//! | `company` present (not blank) | 20 |
//! | that company matches the e-mail domain (`Analytical Engines` and `analytical-engines.org`) | 10 |
//! | `job_title`: intern, student, trainee, apprentice | 0 |
//! | `job_title`: chief, CEO/CTO/CFO/COO/CMO/CIO, founder, owner, president, partner | 40 |
//! | `job_title`: VP, vice president, director, head | 30 |
//! | `job_title`: manager, lead, principal, senior, architect | 20 |
//! | any other `job_title` | 10 |
//!
//! A job title scores its highest tier, except that the trainee words win over everything (a
//! "Chief Executive Intern" scores 0) and "vice" makes a president a VP. An `email` without `@`
//! and a domain with a dot scores nothing. The sum is at most 100. A contact with none of the
//! three fields is declined (unsupported).
//!
//! Scoring people is profiling (GDPR Art. 4(4)): the manifest says `profiling = true`, so Carnet
//! runs it only for tenants that allow profiling and for people with a lawful basis for the
//! `profiling` purpose, and never for someone who objected.

use carnet_plugin_sdk::{Enricher, Error, Input, Output};

/// First labels of personal mailbox domains (`gmail` in `gmail.com`).
const WEBMAIL: [&str; 14] = [
    "gmail",
    "googlemail",
    "outlook",
    "hotmail",
    "live",
    "msn",
    "yahoo",
    "icloud",
    "me",
    "aol",
    "gmx",
    "proton",
    "protonmail",
    "yandex",
];

const TRAINEE: [&str; 4] = ["intern", "student", "trainee", "apprentice"];
const EXECUTIVE: [&str; 11] =
    ["chief", "ceo", "cto", "cfo", "coo", "cmo", "cio", "founder", "owner", "president", "partner"];
const DIRECTOR: [&str; 5] = ["vp", "svp", "evp", "director", "head"];
const MANAGER: [&str; 5] = ["manager", "lead", "principal", "senior", "architect"];

struct LeadScore;

/// Points for the e-mail address, and the first label of its domain when it is a company one.
fn email_points(email: &str) -> (u32, Option<String>) {
    let Some((local, domain)) = email.rsplit_once('@') else { return (0, None) };
    let domain = domain.to_ascii_lowercase();
    let Some((label, _)) = domain.split_once('.') else { return (0, None) };
    if local.is_empty() || label.is_empty() {
        return (0, None);
    }
    if WEBMAIL.contains(&label) { (10, None) } else { (30, Some(label.to_string())) }
}

/// Lowercase letters and digits only: `Analytical Engines` and `analytical-engines` compare equal.
fn squash(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Whether a company name and a domain label name the same organisation (one holds the other,
/// the shorter at least three characters long).
fn same_company(company: &str, label: &str) -> bool {
    let (a, b) = (squash(company), squash(label));
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    short.len() >= 3 && long.contains(short.as_str())
}

/// Points for the seniority a job title states.
fn title_points(title: &str) -> u32 {
    let lower = title.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(w));
    if words.is_empty() || has(&TRAINEE) {
        0
    } else if words.contains(&"vice") {
        30
    } else if has(&EXECUTIVE) {
        40
    } else if has(&DIRECTOR) {
        30
    } else if has(&MANAGER) {
        20
    } else {
        10
    }
}

impl Enricher for LeadScore {
    fn enrich(input: &Input) -> Result<Output, Error> {
        let email = input.get("email").map(str::trim).filter(|v| !v.is_empty());
        let company = input.get("company").map(str::trim).filter(|v| !v.is_empty());
        let title = input.get("job_title").map(str::trim).filter(|v| !v.is_empty());
        if email.is_none() && company.is_none() && title.is_none() {
            return Err(Error::unsupported("no `email`, `company` or `job_title` field"));
        }
        let (mut score, label) = email.map(email_points).unwrap_or((0, None));
        if let Some(company) = company {
            score += 20;
            if label.is_some_and(|l| same_company(company, &l)) {
                score += 10;
            }
        }
        score += title.map(title_points).unwrap_or(0);
        Ok(Output::new().set("lead_score", score.min(100).to_string()))
    }
}

carnet_plugin_sdk::export_enricher!(LeadScore);
