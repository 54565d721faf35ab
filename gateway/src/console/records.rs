//! Privacy records: legal holds (place, lift), the erasure ledger, and the audit trail with its
//! filters and chain verification.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;
use serde_json::json;

use carnet_kit::Permission::*;

use super::api::segment;
use super::layout::{Area, Page, Query, badge, csrf, needs, s, text, time};
use super::privacy::{filtered, subnav};
use super::{Console, ConsoleState, Form};

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/privacy/holds", get(holds).post(place_hold))
        .route("/console/privacy/holds/{id}/lift", post(lift_hold))
        .route("/console/privacy/ledger", get(ledger))
        .route("/console/privacy/audit", get(audit))
}

async fn holds(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page =
        Page { me: &console.me, csrf: &console.session.csrf, area: Area::Privacy, title: "Legal holds", query: &query };
    if !console.me.can(DsarManage) {
        return page.render(html! { (subnav("/console/privacy/holds")) (needs(DsarManage)) });
    }
    let answer = console.api.get("/v1/legal-holds").await;
    let token = &console.session.csrf;
    page.render(html! {
        (subnav("/console/privacy/holds"))
        p.hint { "A person under an active hold cannot be erased: an erasure request is refused until the hold is lifted." }
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(list) => {
                @let holds = list["holds"].as_array().cloned().unwrap_or_default();
                @if holds.is_empty() { p { "No legal hold." } }
                @else { table.list {
                    thead { tr { th scope="col" { "Subject" } th scope="col" { "Reason" } th scope="col" { "Placed" } th scope="col" { "State" } th scope="col" { span.visually-hidden { "Action" } } } }
                    tbody { @for h in &holds { tr {
                        td { a href={ "/console/contacts/" (s(h, "contact_id")) } { code { (s(h, "contact_id")) } } }
                        td { (s(h, "reason")) }
                        td { (time(&h["placed_at"])) " by " code { (s(h, "placed_by")) } }
                        td { @if h["active"] == true { (badge("active")) } @else { (badge("lifted")) " " (time(&h["lifted_at"])) " — " (s(h, "lift_reason")) } }
                        td { @if h["active"] == true {
                            form.inline method="post" action={ "/console/privacy/holds/" (s(h, "id")) "/lift" } {
                                (csrf(token))
                                label { "Reason" input type="text" name="reason" required; }
                                button type="submit" { "Lift" }
                            }
                        } }
                    } } }
                } }
            }
        }
        h2 { "Place a hold" }
        form.card method="post" action="/console/privacy/holds" {
            (csrf(token))
            div.grid {
                label { "Contact id" input type="text" name="contact_id" required value=(query.get("contact_id")); }
                label { "Reason" input type="text" name="reason" required placeholder="e.g. pending litigation"; }
            }
            button type="submit" { "Place hold" }
        }
    })
}

async fn place_hold(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result = console
        .api
        .post("/v1/legal-holds", &json!({"contact_id": form.get("contact_id"), "reason": form.get("reason")}))
        .await;
    console.after("/console/privacy/holds", result, "Hold placed")
}

async fn lift_hold(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result = console
        .api
        .post(&format!("/v1/legal-holds/{}/lift", segment(&id)), &json!({"reason": form.get("reason")}))
        .await;
    console.after("/console/privacy/holds", result, "Hold lifted")
}

async fn ledger(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page = Page {
        me: &console.me,
        csrf: &console.session.csrf,
        area: Area::Privacy,
        title: "Erasure ledger",
        query: &query,
    };
    if !console.me.can(DsarManage) {
        return page.render(html! { (subnav("/console/privacy/ledger")) (needs(DsarManage)) });
    }
    let answer = console.api.get("/v1/erasure-ledger").await;
    page.render(html! {
        (subnav("/console/privacy/ledger"))
        p.hint { "Proof of each erasure: a keyed pseudonym of the person, never personal data. After a backup restore, "
            code { "carnet dsar replay-erasures" } " erases again whoever it names." }
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(list) => {
                @let entries = list["entries"].as_array().cloned().unwrap_or_default();
                @if entries.is_empty() { p { "No erasure yet." } }
                @else { table.list #ledger {
                    thead { tr { th scope="col" { "Request" } th scope="col" { "Subject pseudonym" } th scope="col" { "Participants" } th scope="col" { "Removed" } th scope="col" { "Requested" } th scope="col" { "Completed" } } }
                    tbody { @for e in &entries { tr {
                        td { a href={ "/console/privacy/requests/" (s(e, "request_id")) } { code { (s(e, "request_id")) } } }
                        td { code { (s(e, "subject_pseudonym").chars().take(16).collect::<String>()) "…" } }
                        td { (e["participants"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", ")) }
                        td { @for (k, n) in e["removed"].as_object().into_iter().flatten() { (k) ": " (text(n)) " " } }
                        td { (time(&e["requested_at"])) }
                        td { (time(&e["completed_at"])) }
                    } } }
                } }
            }
        }
    })
}

const AUDIT_FILTERS: [(&str, &str); 7] = [
    ("subject_id", "Subject (contact id)"),
    ("actor", "Actor (key:…, service:…)"),
    ("action", "Action"),
    ("record_type", "Record type"),
    ("service", "Service"),
    ("since", "Since (RFC 3339)"),
    ("until", "Until (RFC 3339)"),
];

async fn audit(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page =
        Page { me: &console.me, csrf: &console.session.csrf, area: Area::Privacy, title: "Audit trail", query: &query };
    if !console.me.can(AuditRead) {
        return page.render(html! { (subnav("/console/privacy/audit")) (needs(AuditRead)) });
    }
    let mut params: Vec<(&str, &str)> = AUDIT_FILTERS.iter().map(|(k, _)| (*k, query.get(k))).collect();
    params.push(("cursor", query.get("cursor")));
    params.push(("limit", "100"));
    let path = filtered("/v1/audit", &params);
    let (answer, verified) = tokio::join!(console.api.get(&path), console.api.get("/v1/audit/verify"));
    page.render(html! {
        (subnav("/console/privacy/audit"))
        @match &verified {
            Ok(v) if v["ok"] == true => p.flash.ok { "The hash chain holds over " (text(&v["entries"])) " entries; head "
                code { (s(v, "head_hash").chars().take(16).collect::<String>()) "…" } },
            Ok(v) => p.flash.err role="alert" { "The hash chain is broken at entry " (text(&v["broken_seq"])) ": " (s(v, "reason")) },
            Err(f) => p.flash.err { "Chain check: " (f.line()) },
        }
        form.filters method="get" action="/console/privacy/audit" {
            div.grid { @for (key, label) in AUDIT_FILTERS {
                label { (label) input type="text" name=(key) value=(query.get(key)); }
            } }
            button type="submit" { "Filter" } " " a href="/console/privacy/audit" { "Clear" }
        }
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(list) => {
                @let entries = list["entries"].as_array().cloned().unwrap_or_default();
                @if entries.is_empty() { p { "No entry matches." } }
                @else { table.list.dense #audit {
                    thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Record" } th scope="col" { "Subject" } th scope="col" { "Via" } th scope="col" { "Fields" } } }
                    tbody { @for e in &entries { tr {
                        td.num { (text(&e["seq"])) }
                        td { (time(&e["occurred_at"])) }
                        td { code { (s(e, "actor")) } }
                        td { (s(e, "action")) }
                        td { (s(e, "record_type")) " " code { (s(e, "record_id")) } }
                        td { @if !s(e, "subject_id").is_empty() { a href={ "/console/contacts/" (s(e, "subject_id")) } { code { (s(e, "subject_id")) } } } }
                        td { (s(e, "service")) " · " (s(e, "api")) }
                        td { (e["fields"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", ")) }
                    } } }
                } }
                @if let Some(next) = list["next_cursor"].as_str() {
                    p { a href=(next_page(&query, next)) { "Older entries" } }
                }
            }
        }
    })
}

/// The audit page's link to the entries after `cursor`, keeping the filters.
fn next_page(query: &Query, cursor: &str) -> String {
    let mut params: Vec<(&str, &str)> = AUDIT_FILTERS.iter().map(|(k, _)| (*k, query.get(k))).collect();
    params.push(("cursor", cursor));
    filtered("/console/privacy/audit", &params)
}
