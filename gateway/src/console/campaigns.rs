//! Campaigns: consent-gated mailings with their progress (queued, sent, skipped by reason,
//! failed), polled while they send.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};

use carnet_kit::Permission::*;

use super::api::segment;
use super::layout::{Area, Page, Query, badge, csrf, s, text, time};
use super::{Console, ConsoleState, Form};

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/campaigns", get(list).post(create))
        .route("/console/campaigns/{id}/send", post(send))
        .route("/console/campaigns/{id}/progress", get(progress_fragment))
}

fn settled(c: &Value) -> bool {
    matches!(s(c, "status"), "draft" | "completed" | "failed")
}

/// A campaign's progress: how many of its recipients are done, and why the others were skipped.
pub fn progress(c: &Value) -> Markup {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let skipped: u64 = c["skipped"].as_object().into_iter().flatten().filter_map(|(_, v)| v.as_u64()).sum();
    let done = n("sent") + n("failed") + skipped;
    let total = n("recipients").max(done);
    html! {
        (badge(s(c, "status")))
        " "
        @if total > 0 { progress max=(total) value=(done) aria-label="Recipients handled" { (done) " of " (total) } " " }
        (done) " of " (total) " handled · " (n("sent")) " sent · " (n("failed")) " failed · " (n("queued")) " queued"
        @for (reason, count) in c["skipped"].as_object().into_iter().flatten() { " · " (text(count)) " skipped (" (reason) ")" }
    }
}

async fn list(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page =
        Page { me: &console.me, csrf: &console.session.csrf, area: Area::Campaigns, title: "Campaigns", query: &query };
    let (campaigns, purposes) = tokio::join!(console.api.get("/v1/campaigns"), console.api.get("/v1/purposes"));
    let token = &console.session.csrf;
    page.render(html! {
        p.hint { "Each mail is sent only to people who may receive it for the campaign's purpose, checked when it is sent." }
        @match &campaigns {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(v) => {
                @let list = v["campaigns"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { p { "No campaign yet." } }
                @else { table.list #campaigns {
                    thead { tr { th scope="col" { "Campaign" } th scope="col" { "Purpose" } th scope="col" { "Created" } th scope="col" { "Progress" } } }
                    tbody { @for c in &list { tr id={ "c-" (s(c, "id")) } {
                        td { (s(c, "name")) " " code { (s(c, "id")) } }
                        td { (s(c, "purpose")) }
                        td { (time(&c["created_at"])) }
                        td {
                            div data-poll=[(!settled(c)).then(|| format!("/console/campaigns/{}/progress", s(c, "id")))] data-poll-ms="1000" aria-live="polite" {
                                (progress(c))
                            }
                            @if s(c, "status") == "draft" && console.me.can(CommsSend) {
                                form.inline method="post" action={ "/console/campaigns/" (s(c, "id")) "/send" } {
                                    (csrf(token)) button type="submit" { "Send now" }
                                }
                            }
                        }
                    } } }
                } }
            }
        }
        @if console.me.can(CommsSend) {
            details.card {
                summary { "New campaign" }
                form method="post" action="/console/campaigns" {
                    (csrf(token))
                    div.grid {
                        label { "Name" input type="text" name="name" required; }
                        label { "Purpose" select name="purpose" {
                            @for p in purposes.as_ref().ok().and_then(|p| p["purposes"].as_array()).into_iter().flatten() {
                                option value=(s(p, "key")) { (s(p, "key")) } } } }
                        label { "Recipients (search, * for everyone)" input type="text" name="query" value="*" required; }
                    }
                    label { "Subject" input type="text" name="subject" required placeholder="News for {{first_name}}"; }
                    label { "Body" textarea name="body" rows="5" required {} }
                    button type="submit" { "Create draft" }
                }
            }
        }
    })
}

async fn create(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let campaign = json!({"name": form.get("name"), "purpose": form.get("purpose"), "query": form.get("query"),
        "subject": form.get("subject"), "body": form.get("body")});
    console.after("/console/campaigns", console.api.post("/v1/campaigns", &campaign).await, "Draft created")
}

async fn send(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result = console.api.call(Method::POST, &format!("/v1/campaigns/{}/send", segment(&id)), None).await;
    console.after("/console/campaigns", result, "Sending")
}

async fn progress_fragment(console: Console, Path(id): Path<String>) -> Response {
    match console.api.get(&format!("/v1/campaigns/{}", segment(&id))).await {
        Ok(c) => {
            let mut response = Html(progress(&c).into_string()).into_response();
            if settled(&c) {
                response.headers_mut().insert("x-carnet-settled", HeaderValue::from_static("true"));
            }
            response
        }
        Err(f) => (StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY), f.line()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_campaign_progress_counts_skips_as_handled() {
        let c = json!({"status": "sending", "recipients": 10, "sent": 3, "failed": 1, "queued": 4,
            "skipped": {"no_consent": 2}});
        let html = progress(&c).into_string();
        assert!(html.contains("max=\"10\" value=\"6\""), "{html}");
        assert!(html.contains("6 of 10 handled") && html.contains("2 skipped (no_consent)"), "{html}");
        assert!(!settled(&c) && settled(&json!({"status": "completed"})));
    }
}
