//! Contacts: search and list, create, and the actions of a contact page (rectify, restrict,
//! object, export, forget). The page itself is in [`super::contact_page`].

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde_json::{Map, Value, json};

use carnet_kit::Permission::*;

use super::api::{Failure, segment, with_query};
use super::layout::{Area, Page, Query, csrf, s, time};
use super::{Console, ConsoleState, Form};

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/contacts", get(list).post(create))
        .route("/console/contacts/{id}", get(super::contact_page::show))
        .route("/console/contacts/{id}/rectify", post(rectify))
        .route("/console/contacts/{id}/restriction", post(restriction))
        .route("/console/contacts/{id}/objection", post(objection))
        .route("/console/contacts/{id}/export", get(export))
        .route("/console/contacts/{id}/forget", get(forget_page).post(forget))
}

/// A contact's display name: its names, else its id (never the address in a title).
pub fn display_name(c: &Value) -> String {
    let name = [s(c, "first_name"), s(c, "last_name")].iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>();
    if name.is_empty() { format!("Contact {}", s(c, "id")) } else { name.join(" ") }
}

async fn list(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let q = query.get("q");
    let path = with_query("/v1/contacts", &[("q", q), ("limit", "50"), ("cursor", query.get("cursor"))]);
    let page =
        Page { me: &console.me, csrf: &console.session.csrf, area: Area::Contacts, title: "Contacts", query: &query };
    let answer = console.api.get(&path).await;
    let body = html! {
        form.search role="search" method="get" action="/console/contacts" {
            label for="q" { "Search contacts" }
            input #q type="search" name="q" value=(q) placeholder="a whole e-mail, a phone or a name";
            button type="submit" { "Search" }
        }
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(list) => {
                @let contacts = list["contacts"].as_array().cloned().unwrap_or_default();
                @if contacts.is_empty() {
                    p { "No contact matches." }
                } @else {
                    table.list {
                        caption.visually-hidden { "Contacts" }
                        thead { tr { th scope="col" { "Name" } th scope="col" { "E-mail" } th scope="col" { "Source" } th scope="col" { "Flags" } th scope="col" { "Created" } } }
                        tbody {
                            @for c in &contacts {
                                tr {
                                    td { a href={ "/console/contacts/" (s(c, "id")) } { (display_name(c)) } }
                                    td { (s(c, "email")) }
                                    td { (s(&c["source"], "channel")) " · " (s(&c["source"], "detail")) }
                                    td {
                                        @if c["restriction"]["active"] == true { span.badge.warn { "restricted" } " " }
                                        @if c["objection"]["active"] == true { span.badge.warn { "objected" } }
                                    }
                                    td { (time(&c["created_at"])) }
                                }
                            }
                        }
                    }
                    @if let Some(next) = list["next_cursor"].as_str() {
                        p { a href=(with_query("/console/contacts", &[("q", q), ("cursor", next)])) { "Next page" } }
                    }
                }
            }
        }
        @if console.me.can(ContactsWrite) {
            details.card {
                summary { "New contact" }
                form method="post" action="/console/contacts" {
                    (csrf(&console.session.csrf))
                    div.grid {
                        label { "E-mail" input type="email" name="email"; }
                        label { "First name" input type="text" name="first_name"; }
                        label { "Last name" input type="text" name="last_name"; }
                        label { "Source detail " small { "(where this person's data comes from)" }
                            input type="text" name="detail" required value="console"; }
                    }
                    button type="submit" { "Create contact" }
                }
            }
        }
    };
    page.render(body)
}

async fn create(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let mut contact = Map::new();
    for key in ["email", "first_name", "last_name"] {
        if !form.get(key).is_empty() {
            contact.insert(key.into(), json!(form.get(key)));
        }
    }
    contact.insert("source".into(), json!({"channel": "manual", "detail": form.get("detail")}));
    match console.api.post("/v1/contacts", &Value::Object(contact)).await {
        Ok(created) => console
            .after(
                &format!("/console/contacts/{}", segment(s(&created, "id"))),
                Ok::<(), Failure>(()),
                "Contact created",
            )
            .into_response(),
        Err(f) => console.after("/console/contacts", Err::<(), _>(f), ""),
    }
}

async fn rectify(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let page = format!("/console/contacts/{}", segment(&id));
    let current = match console.api.get(&format!("/v1/contacts/{}", segment(&id))).await {
        Ok(c) => c,
        Err(f) => return console.after(&page, Err::<(), _>(f), ""),
    };
    // Only what changed is sent, so the history names exactly the rectified fields.
    let mut patch = Map::new();
    for key in ["email", "first_name", "last_name", "phone"] {
        let new = form.get(key);
        if new != s(&current, key) {
            patch.insert(key.into(), if new.is_empty() { Value::Null } else { json!(new) });
        }
    }
    let mut fields = Map::new();
    for (name, new) in form.0.iter().filter_map(|(k, v)| Some((k.strip_prefix("field.")?, v.trim()))) {
        let old = super::layout::text(&current["fields"][name]);
        if new != old {
            fields.insert(name.into(), if new.is_empty() { Value::Null } else { typed(&current["fields"][name], new) });
        }
    }
    if !fields.is_empty() {
        patch.insert("fields".into(), Value::Object(fields));
    }
    if patch.is_empty() {
        return console.after(&page, Ok(()), "Nothing changed");
    }
    patch.insert("reason".into(), json!(form.get("reason")));
    patch.insert("expected_version".into(), current["version"].clone());
    let result = console.api.patch(&format!("/v1/contacts/{}", segment(&id)), &Value::Object(patch)).await;
    console.after(&page, result, "Contact rectified")
}

/// Keeps a number or boolean field's JSON type when it is edited as text.
fn typed(old: &Value, new: &str) -> Value {
    match old {
        Value::Number(_) => new.parse::<f64>().map_or_else(|_| json!(new), |n| json!(n)),
        Value::Bool(_) => json!(new == "true"),
        _ => json!(new),
    }
}

async fn flag(console: Console, id: String, body: Bytes, which: &str, ok: &str) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let active = form.get("active") == "true";
    let mut request = json!({"active": active});
    if !form.get("reason").is_empty() {
        request["reason"] = json!(form.get("reason"));
    }
    let result = console.api.put(&format!("/v1/contacts/{}/{which}", segment(&id)), &request).await;
    let ok = if active { ok.to_string() } else { format!("{ok} lifted") };
    console.after(&format!("/console/contacts/{}", segment(&id)), result, &ok)
}

async fn restriction(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    flag(console, id, body, "restriction", "Restriction").await
}

async fn objection(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    flag(console, id, body, "objection", "Objection").await
}

/// One-click export: the API's document, downloaded as a file.
async fn export(console: Console, Path(id): Path<String>) -> Response {
    let answer =
        console.api.send(axum::http::Method::GET, &format!("/v1/contacts/{}/export", segment(&id)), None).await;
    if !answer.status.is_success() {
        let page = format!("/console/contacts/{}", segment(&id));
        return console.after(&page, Err::<(), _>(Failure::of(&answer)), "");
    }
    let disposition = answer
        .headers
        .get(header::CONTENT_DISPOSITION)
        .cloned()
        .unwrap_or_else(|| header::HeaderValue::from_static("attachment; filename=\"contact.json\""));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, header::HeaderValue::from_static("application/json")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from(answer.body),
    )
        .into_response()
}

/// Asks before forgetting: erasure cannot be undone.
async fn forget_page(console: Console, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let contact = console.api.get(&format!("/v1/contacts/{}", segment(&id))).await;
    let page = Page {
        me: &console.me,
        csrf: &console.session.csrf,
        area: Area::Contacts,
        title: "Forget this person?",
        query: &query,
    };
    page.render(html! {
        @match contact {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(c) => {
                p { "This opens an " strong { "erasure request" } " (Art. 17) for " strong { (display_name(&c)) } " (" code { (s(&c, "id")) } "). "
                    "Every service erases what it holds about this person and confirms; the erasure ledger keeps the proof, without personal data. It cannot be undone." }
                p { "A legal hold on this person refuses the request." }
                form.confirm method="post" action={ "/console/contacts/" (segment(&id)) "/forget" } {
                    (csrf(&console.session.csrf))
                    input type="hidden" name="confirm" value="yes";
                    button.danger type="submit" #confirm-forget { "Yes, erase this person everywhere" }
                    " "
                    a href={ "/console/contacts/" (segment(&id)) } { "Cancel" }
                }
            }
        }
    })
}

/// Forgets a person: opens the erasure DSAR and shows it.
async fn forget(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let page = format!("/console/contacts/{}", segment(&id));
    if form.get("confirm") != "yes" {
        return Redirect::to(&page).into_response();
    }
    match console.api.post("/v1/dsar", &json!({"kind": "erasure", "contact_id": id})).await {
        Ok(request) => {
            tracing::info!(dsar_id = s(&request, "id"), "console opened an erasure");
            console
                .after(
                    &format!("/console/privacy/requests/{}", segment(s(&request, "id"))),
                    Ok::<(), Failure>(()),
                    "Erasure request opened",
                )
                .into_response()
        }
        Err(f) => console.after(&page, Err::<(), _>(f), ""),
    }
}
