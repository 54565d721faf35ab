//! A contact's page: its fields with their provenance, its source, its consents with the notice
//! version and evidence, one timeline (mails, calls, consent events, enrichment runs), its
//! rectification history, and the actions the viewer's permissions allow.

use axum::extract::{Path, RawQuery};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;

use carnet_kit::Permission::*;

use super::api::{Failure, segment};
use super::contacts::display_name;
use super::layout::{Area, Page, Query, badge, csrf, s, text, time};
use super::{Console, Me};

/// What the API answered for one contact page; each part may fail on its own.
pub struct ContactData {
    pub contact: Value,
    pub consents: Result<Value, Failure>,
    pub timeline: Result<Value, Failure>,
    pub runs: Result<Value, Failure>,
    pub history: Result<Value, Failure>,
    pub policy: Result<Value, Failure>,
}

pub async fn show(console: Console, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let base = format!("/v1/contacts/{}", segment(&id));
    let api = &console.api;
    let paths = [
        format!("{base}/consents"),
        format!("{base}/timeline?limit=100"),
        format!("{base}/enrichment-runs"),
        format!("{base}/history"),
    ];
    let (contact, consents, timeline, runs, history, policy) = tokio::join!(
        api.get(&base),
        api.get(&paths[0]),
        api.get(&paths[1]),
        api.get(&paths[2]),
        api.get(&paths[3]),
        api.get("/v1/field-policy"),
    );
    let contact = match contact {
        Ok(c) => c,
        Err(f) => return super::layout::failure_page(&f),
    };
    let title = display_name(&contact);
    let data = ContactData { contact, consents, timeline, runs, history, policy };
    let page =
        Page { me: &console.me, csrf: &console.session.csrf, area: Area::Contacts, title: &title, query: &query };
    page.render(render(&console.me, &console.session.csrf, &data))
}

/// The page body for `me`: controls appear only where `me` holds the permission.
pub fn render(me: &Me, csrf_token: &str, data: &ContactData) -> Markup {
    let c = &data.contact;
    let id = s(c, "id");
    let restricted = c["restriction"]["active"] == true;
    let objected = c["objection"]["active"] == true;
    html! {
        p.meta {
            "Id " code { (id) } " · version " (text(&c["version"]))
            @if restricted { " " span.badge.warn { "processing restricted" } }
            @if objected { " " span.badge.warn { "objected" } }
        }
        @if me.can_any(&[ContactsExport, DsarManage]) {
            div.actions role="group" aria-label="Data subject rights" {
                @if me.can(ContactsExport) {
                    a.button #export href={ "/console/contacts/" (id) "/export" } data-download={ "contact-" (id) ".json" } { "Export (Art. 15/20)" }
                    span.progress aria-live="polite" {}
                }
                @if me.can(DsarManage) {
                    a.button.danger #forget href={ "/console/contacts/" (id) "/forget" } { "Forget (Art. 17)…" }
                }
            }
        }
        div.columns {
            section aria-labelledby="h-fields" {
                h2 #h-fields { "Fields" }
                table.kv {
                    @for key in ["email", "first_name", "last_name", "phone"] {
                        @if !s(c, key).is_empty() { tr { th scope="row" { (key) } td { (s(c, key)) } td {} } }
                    }
                    @for (key, value) in c["fields"].as_object().into_iter().flatten() {
                        tr {
                            th scope="row" { (key) }
                            td { (text(value)) }
                            td.hint {
                                @if let Some(src) = c["field_sources"].get(key.as_str()) {
                                    "written by " (s(src, "channel")) " " code { (s(src, "detail")) } " " (time(&src["collected_at"]))
                                }
                            }
                        }
                    }
                }
                h2 #h-source { "Source" }
                table.kv #source {
                    tr { th scope="row" { "channel" } td { (s(&c["source"], "channel")) } }
                    tr { th scope="row" { "detail" } td { (s(&c["source"], "detail")) } }
                    tr { th scope="row" { "actor" } td { code { (s(&c["source"], "actor")) } } }
                    tr { th scope="row" { "collected" } td { (time(&c["source"]["collected_at"])) } }
                }
            }
            section aria-labelledby="h-consents" #consents {
                h2 #h-consents { "Consents" }
                (consents(&data.consents))
            }
        }
        section aria-labelledby="h-timeline" {
            h2 #h-timeline { "Timeline" }
            (timeline(&data.timeline, &data.runs))
        }
        @if me.can(ContactsWrite) {
            (actions(c, csrf_token, &data.policy, restricted, objected))
        }
        section aria-labelledby="h-history" {
            h2 #h-history { "Rectification history" }
            p.hint { "Which fields changed, when and by whom; never the old values." }
            @match &data.history {
                Err(f) => p.flash.err { (f.line()) },
                Ok(h) => ul.history {
                    @for change in h["changes"].as_array().into_iter().flatten() {
                        li { (time(&change["at"])) " · " (s(change, "kind")) " "
                            (change["fields"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", "))
                            " by " code { (s(change, "actor")) }
                            @if !s(change, "reason").is_empty() { " — " (s(change, "reason")) } }
                    }
                }
            }
        }
    }
}

fn consents(answer: &Result<Value, Failure>) -> Markup {
    html! {
        @match answer {
            Err(f) => p.flash.err { (f.line()) },
            Ok(v) => {
                @let current = v["current"].as_array().cloned().unwrap_or_default();
                @if current.is_empty() { p { "No consent recorded." } }
                @else {
                    table.list {
                        thead { tr { th scope="col" { "Purpose" } th scope="col" { "Status" } th scope="col" { "Lawful basis" } th scope="col" { "Notice" } th scope="col" { "Since" } } }
                        tbody { @for state in &current { tr.consent {
                            td { (s(state, "purpose")) }
                            td { (badge(s(state, "status"))) }
                            td { (s(state, "lawful_basis")) }
                            td { @if !state["notice_version"].is_null() { "v" (text(&state["notice_version"])) } }
                            td { (time(&state["since"])) }
                        } } }
                    }
                }
                @let history = v["history"].as_array().cloned().unwrap_or_default();
                @if !history.is_empty() {
                    details {
                        summary { "Evidence: " (history.len()) " consent records" }
                        ul.evidence { @for r in &history { li {
                            (time(&r["at"])) " · " strong { (s(r, "purpose")) } " " (s(r, "action")) " → " (s(r, "status"))
                            " · source " (s(r, "source"))
                            @if !r["notice_version"].is_null() { " · notice v" (text(&r["notice_version"])) }
                            @if !s(r, "form_id").is_empty() { " · form " code { (s(r, "form_id")) } }
                            @if !s(r, "ip_hash").is_empty() { " · address hash " code { (s(r, "ip_hash").chars().take(12).collect::<String>()) "…" } }
                            @if !s(r, "user_agent").is_empty() { " · " span.hint { (s(r, "user_agent")) } }
                            @if !s(r, "justification").is_empty() { " · " (s(r, "justification")) }
                            " · by " code { (s(r, "actor")) }
                        } } }
                    }
                }
            }
        }
    }
}

/// One list, newest first: the comms timeline (mails, calls, consent events) and enrichment runs.
fn timeline(entries: &Result<Value, Failure>, runs: &Result<Value, Failure>) -> Markup {
    let mut items: Vec<(String, Markup)> = Vec::new();
    if let Ok(t) = entries {
        for e in t["entries"].as_array().into_iter().flatten() {
            items.push((
                s(e, "at").to_string(),
                html! {
                    (time(&e["at"])) " " (badge(s(e, "kind"))) " " (s(e, "summary")) " · " (s(e, "status"))
                    @if !s(e, "purpose").is_empty() { " · purpose " (s(e, "purpose")) }
                },
            ));
        }
    }
    if let Ok(r) = runs {
        for run in r["runs"].as_array().into_iter().flatten() {
            items.push((s(run, "at").to_string(), html! {
                (time(&run["at"])) " " (badge("enrichment")) " " code.run { (s(run, "plugin")) "@" (s(run, "version")) }
                " " (s(run, "trigger")) " · " (s(run, "outcome"))
                @if !s(run, "reason").is_empty() { " (" (s(run, "reason")) ")" }
                @let written = run["fields_written"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>();
                @if !written.is_empty() { " · wrote " (written.join(", ")) }
            }));
        }
    }
    items.sort_by(|a, b| b.0.cmp(&a.0));
    html! {
        @if let Err(f) = entries { p.flash.err { "Timeline: " (f.line()) } }
        @if let Err(f) = runs { p.flash.err { "Enrichment runs: " (f.line()) } }
        @if items.is_empty() { p { "Nothing yet." } }
        ol.timeline #timeline { @for (_, item) in &items { li { (item) } } }
    }
}

fn actions(c: &Value, token: &str, policy: &Result<Value, Failure>, restricted: bool, objected: bool) -> Markup {
    let id = s(c, "id");
    let custom: Vec<String> = match policy {
        Ok(p) => p["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| s(f, "key").to_string())
            .filter(|k| !["email", "first_name", "last_name", "phone"].contains(&k.as_str()))
            .collect(),
        Err(_) => c["fields"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect(),
    };
    html! {
        section aria-labelledby="h-rectify" {
            h2 #h-rectify { "Rectify (Art. 16)" }
            form.card method="post" action={ "/console/contacts/" (id) "/rectify" } {
                (csrf(token))
                div.grid {
                    @for key in ["email", "first_name", "last_name", "phone"] {
                        label { (key) input type="text" name=(key) value=(s(c, key)); }
                    }
                    @for key in &custom {
                        label { (key) input type="text" name={ "field." (key) } value=(text(&c["fields"][key.as_str()])); }
                    }
                }
                label { "Reason " small { "(kept in the history)" } input type="text" name="reason" value="subject request"; }
                button type="submit" { "Save changes" }
            }
        }
        section.flags aria-labelledby="h-flags" {
            h2 #h-flags { "Restriction (Art. 18) and objection (Art. 21)" }
            (flag_form(id, token, "restriction", restricted, "Restrict processing", "Lift the restriction"))
            (flag_form(id, token, "objection", objected, "Record an objection", "Withdraw the objection"))
        }
    }
}

fn flag_form(id: &str, token: &str, which: &str, active: bool, on: &str, off: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/console/contacts/" (id) "/" (which) } {
            (csrf(token))
            input type="hidden" name="active" value=(if active { "false" } else { "true" });
            label { "Reason" input type="text" name="reason" required; }
            button type="submit" { (if active { off } else { on }) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::Role;
    use serde_json::json;

    fn me(role: Role) -> Me {
        Me { tenant_id: "t".into(), principal: "key:x".into(), permissions: Role::union(&[role]) }
    }

    fn data() -> ContactData {
        let ok = |v: Value| Ok::<_, Failure>(v);
        ContactData {
            contact: json!({"id": "c1", "first_name": "Ada", "email": "ada@example.org", "version": 1,
                "fields": {"company": "Engines"}, "field_sources": {},
                "source": {"channel": "web_form", "detail": "form:f1", "actor": "form:f1"},
                "restriction": {"active": false}, "objection": {"active": false}}),
            consents: ok(
                json!({"current": [{"purpose": "newsletter", "status": "granted", "notice_version": 2}], "history": []}),
            ),
            timeline: ok(json!({"entries": []})),
            runs: ok(
                json!({"runs": [{"plugin": "company-from-domain", "version": "1.0.0", "outcome": "written", "at": "2026-01-01T00:00:00Z"}]}),
            ),
            history: ok(json!({"changes": []})),
            policy: ok(json!({"fields": [{"key": "company"}]})),
        }
    }

    fn page(role: Role) -> String {
        render(&me(role), "tok", &data()).into_string()
    }

    #[test]
    fn test_contact_page_sales_sees_no_export_or_forget_but_can_rectify() {
        let html = page(Role::Sales);
        assert!(!html.contains("id=\"export\"") && !html.contains("/export"), "{html}");
        assert!(!html.contains("id=\"forget\"") && !html.contains("/forget"));
        assert!(html.contains("/rectify") && html.contains("/restriction"));
        assert!(html.contains("newsletter") && html.contains("v2"), "consents are shown");
        assert!(html.contains("web_form") && html.contains("form:f1"), "the source is shown");
        assert!(html.contains("company-from-domain@1.0.0"), "enrichment runs name plugin and version");
    }

    #[test]
    fn test_contact_page_read_only_renders_no_mutating_control() {
        let html = page(Role::ReadOnly);
        assert!(!html.contains("<form"), "a read-only viewer gets no form: {html}");
        assert!(!html.contains("<button"));
        assert!(html.contains("Ada") || html.contains("ada@example.org"));
    }

    #[test]
    fn test_contact_page_privacy_officer_gets_export_and_forget() {
        let html = page(Role::PrivacyOfficer);
        assert!(html.contains("id=\"export\"") && html.contains("/console/contacts/c1/export"));
        assert!(html.contains("id=\"forget\"") && html.contains("/console/contacts/c1/forget"));
        assert!(html.contains("name=\"_csrf\" value=\"tok\""), "forms carry the session's token");
        // An admin may export but has no dsar:manage: no forget button.
        let admin = page(Role::Admin);
        assert!(admin.contains("id=\"export\"") && !admin.contains("id=\"forget\""));
    }
}
