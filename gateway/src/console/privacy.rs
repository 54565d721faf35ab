//! Privacy: the DSAR queue (overdue first), a request's page with each participant's
//! confirmation as it arrives (polled), deadline extensions, and the access export. Legal holds,
//! the erasure ledger and the audit trail are in [`super::records`].

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};

use carnet_kit::Permission::*;

use super::api::{Failure, segment, with_query};
use super::layout::{Area, Page, Query, badge, csrf, needs, s, text, time};
use super::{Console, ConsoleState, Form};

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/privacy", get(queue).post(open_request))
        .route("/console/privacy/requests/{id}", get(request))
        .route("/console/privacy/requests/{id}/tasks", get(tasks_fragment))
        .route("/console/privacy/requests/{id}/extend", post(extend))
        .route("/console/privacy/requests/{id}/reject", post(reject))
        .route("/console/privacy/requests/{id}/export", get(export))
        .merge(super::records::routes())
}

/// The privacy area's own navigation.
pub fn subnav(active: &str) -> Markup {
    let links = [
        ("/console/privacy", "Requests"),
        ("/console/privacy/holds", "Legal holds"),
        ("/console/privacy/ledger", "Erasure ledger"),
        ("/console/privacy/audit", "Audit trail"),
    ];
    html! {
        nav.subnav aria-label="Privacy" { ul { @for (href, label) in links {
            li { a href=(href) aria-current=[(href == active).then_some("page")] { (label) } }
        } } }
    }
}

async fn queue(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page = Page {
        me: &console.me,
        csrf: &console.session.csrf,
        area: Area::Privacy,
        title: "Data subject requests",
        query: &query,
    };
    if !console.me.can(DsarManage) {
        return page.render(html! { (subnav("/console/privacy")) (needs(DsarManage)) });
    }
    let open_only = query.get("open") == "true";
    let answer = console.api.get(if open_only { "/v1/dsar?open=true" } else { "/v1/dsar" }).await;
    page.render(html! {
        (subnav("/console/privacy"))
        p {
            @if open_only { a href="/console/privacy" { "Show all requests" } } @else { a href="/console/privacy?open=true" { "Show open requests only" } }
        }
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(list) => {
                @let requests = list["requests"].as_array().cloned().unwrap_or_default();
                @if requests.is_empty() { p { "No request." } }
                @else {
                    table.list #dsar-queue {
                        caption.visually-hidden { "Requests, overdue first" }
                        thead { tr { th scope="col" { "Request" } th scope="col" { "Kind" } th scope="col" { "Status" }
                            th scope="col" { "Received" } th scope="col" { "Deadline" } th scope="col" { "Days left" } } }
                        tbody { @for r in &requests { tr class=[(r["overdue"] == true).then_some("overdue")] {
                            td { a href={ "/console/privacy/requests/" (s(r, "id")) } { code { (s(r, "id")) } } }
                            td { (s(r, "kind")) }
                            td { (badge(s(r, "status"))) }
                            td { (time(&r["received_at"])) }
                            td { (time(&r["due_at"])) @if r["extended"] == true { " " span.badge { "extended" } } }
                            td.num { @if r["overdue"] == true { strong.overdue { "overdue" } } @else { (text(&r["days_left"])) } }
                        } } }
                    }
                }
            }
        }
        details.card {
            summary { "Open a request" }
            form method="post" action="/console/privacy" {
                (csrf(&console.session.csrf))
                div.grid {
                    label { "Kind" select name="kind" {
                        @for kind in ["access", "erasure", "rectification", "restriction", "objection"] { option value=(kind) { (kind) } }
                    } }
                    label { "Contact id" input type="text" name="contact_id" required; }
                    label { "Identity verified by" input type="text" name="verification" placeholder="e.g. signed-in portal, ID check"; }
                }
                button type="submit" { "Open request" }
            }
        }
    })
}

async fn open_request(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let mut request = json!({"kind": form.get("kind"), "contact_id": form.get("contact_id")});
    if !form.get("verification").is_empty() {
        request["verification"] = json!(form.get("verification"));
    }
    match console.api.post("/v1/dsar", &request).await {
        Ok(r) => console
            .after(
                &format!("/console/privacy/requests/{}", segment(s(&r, "id"))),
                Ok::<(), Failure>(()),
                "Request opened",
            )
            .into_response(),
        Err(f) => console.after("/console/privacy", Err::<(), _>(f), ""),
    }
}

/// Whether a request is done changing (the page stops polling).
fn settled(r: &Value) -> bool {
    matches!(s(r, "status"), "completed" | "rejected" | "failed")
}

/// Each participant and its confirmation; `data-settled` tells the poller to stop.
pub fn tasks(r: &Value) -> Markup {
    let tasks = r["tasks"].as_array().cloned().unwrap_or_default();
    let confirmed = tasks.iter().filter(|t| matches!(s(t, "status"), "confirmed" | "completed" | "done")).count();
    html! {
        p #request-status data-status=(s(r, "status")) {
            "Status " (badge(s(r, "status"))) " · " (confirmed) " of " (tasks.len()) " participants confirmed"
            @if !r["completed_at"].is_null() { " · completed " (time(&r["completed_at"])) }
        }
        table.list #tasks-table {
            thead { tr { th scope="col" { "Participant" } th scope="col" { "Status" } th scope="col" { "Attempts" } th scope="col" { "Confirmed" } th scope="col" { "Records" } } }
            tbody { @for t in &tasks { tr data-service=(s(t, "service")) data-task-status=(s(t, "status")) {
                td { (s(t, "service")) }
                td { (badge(s(t, "status"))) }
                td.num { (text(&t["attempts"])) }
                td { (time(&t["confirmed_at"])) }
                td { @for (k, n) in t["records"].as_object().into_iter().flatten() { (k) ": " (text(n)) " " } }
            } } }
        }
    }
}

async fn request(console: Console, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let r = match console.api.get(&format!("/v1/dsar/{}", segment(&id))).await {
        Ok(r) => r,
        Err(f) => return super::layout::failure_page(&f),
    };
    let kind = s(&r, "kind");
    let title =
        format!("{}{} request", kind.get(..1).unwrap_or_default().to_uppercase(), kind.get(1..).unwrap_or_default());
    let page = Page { me: &console.me, csrf: &console.session.csrf, area: Area::Privacy, title: &title, query: &query };
    let poll = (!settled(&r)).then(|| format!("/console/privacy/requests/{}/tasks", segment(&id)));
    page.render(html! {
        (subnav(""))
        table.kv {
            tr { th scope="row" { "Request" } td { code #request-id { (s(&r, "id")) } } }
            tr { th scope="row" { "Subject" } td { a href={ "/console/contacts/" (s(&r, "contact_id")) } { code { (s(&r, "contact_id")) } } } }
            tr { th scope="row" { "Received" } td { (time(&r["received_at"])) } }
            tr { th scope="row" { "Deadline" } td { (time(&r["due_at"])) " · "
                @if r["overdue"] == true { strong.overdue { "overdue" } } @else { (text(&r["days_left"])) " days left" }
                @if r["extended"] == true { " · extended: " (s(&r, "extension_reason")) } } }
            tr { th scope="row" { "Verification" } td { (s(&r, "verification")) } }
            @if !s(&r, "rejection_reason").is_empty() { tr { th scope="row" { "Rejected" } td { (s(&r, "rejection_reason")) } } }
            @if let Some(recipients) = r["recipients"].as_array().filter(|a| !a.is_empty()) {
                tr { th scope="row" { "Recipients" } td { (recipients.iter().map(text).collect::<Vec<_>>().join(", ")) } }
            }
        }
        section aria-labelledby="h-participants" {
            h2 #h-participants { "Participants" }
            div #tasks aria-live="polite" data-poll=[poll] data-poll-ms="1000" { (tasks(&r)) }
        }
        @if s(&r, "kind") == "access" && s(&r, "status") == "completed" {
            p { a.button href={ "/console/privacy/requests/" (s(&r, "id")) "/export" } data-download={ "access-" (s(&r, "id")) ".json" } { "Download the access document" }
                span.progress aria-live="polite" {} }
        }
        @if r["extended"] != true && !settled(&r) {
            section aria-labelledby="h-extend" data-hide-when-settled="#tasks" {
                h2 #h-extend { "Extend the deadline (Art. 12(3))" }
                form.card method="post" action={ "/console/privacy/requests/" (s(&r, "id")) "/extend" } {
                    (csrf(&console.session.csrf))
                    label { "Reason (told to the person)" input type="text" name="reason" required; }
                    label { "By" select name="months" { option value="2" { "two months" } option value="1" { "one month" } } }
                    button type="submit" { "Extend once" }
                }
            }
        }
        @if !settled(&r) {
            section aria-labelledby="h-reject" data-hide-when-settled="#tasks" {
                h2 #h-reject { "Reject (Art. 12(4))" }
                form.card method="post" action={ "/console/privacy/requests/" (s(&r, "id")) "/reject" } {
                    (csrf(&console.session.csrf))
                    label { "Reason (told to the person)" input type="text" name="reason" required; }
                    button.danger type="submit" { "Reject the request" }
                }
            }
        }
    })
}

/// The participants table alone, for the page's polling script.
async fn tasks_fragment(console: Console, Path(id): Path<String>) -> Response {
    match console.api.get(&format!("/v1/dsar/{}", segment(&id))).await {
        Ok(r) => {
            let mut response = Html(tasks(&r).into_string()).into_response();
            if settled(&r) {
                response.headers_mut().insert("x-carnet-settled", header::HeaderValue::from_static("true"));
            }
            response
        }
        Err(f) => (StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY), f.line()).into_response(),
    }
}

async fn extend(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let months: u32 = form.get("months").parse().unwrap_or(2);
    let result = console
        .api
        .post(&format!("/v1/dsar/{}/extend", segment(&id)), &json!({"reason": form.get("reason"), "months": months}))
        .await;
    console.after(&format!("/console/privacy/requests/{}", segment(&id)), result, "Deadline extended")
}

async fn reject(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result =
        console.api.post(&format!("/v1/dsar/{}/reject", segment(&id)), &json!({"reason": form.get("reason")})).await;
    console.after(&format!("/console/privacy/requests/{}", segment(&id)), result, "Request rejected")
}

async fn export(console: Console, Path(id): Path<String>) -> Response {
    let answer = console.api.send(Method::GET, &format!("/v1/dsar/{}/export", segment(&id)), None).await;
    if !answer.status.is_success() {
        return console.after(
            &format!("/console/privacy/requests/{}", segment(&id)),
            Err::<(), _>(Failure::of(&answer)),
            "",
        );
    }
    let disposition = format!(
        "attachment; filename=\"access-{}.json\"",
        id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "")
    );
    (
        [(header::CONTENT_TYPE, "application/json".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        Body::from(answer.body),
    )
        .into_response()
}

/// `with_query` re-exported for the records pages' filters.
pub fn filtered(path: &str, params: &[(&str, &str)]) -> String {
    with_query(path, params)
}
