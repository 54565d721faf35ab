//! Consent: purposes with their lawful basis and notice versions (an edit is a new version; the
//! diff between two versions is shown) and the web form builder with its live preview and embed
//! snippet.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::json;

use carnet_kit::Permission::*;

use super::api::{Failure, segment};
use super::diff::{Chunk, diff};
use super::layout::{Area, Page, Query, csrf, needs, s, text, time};
use super::{Console, ConsoleState, Form};

const BASES: [&str; 6] =
    ["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"];

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/consent", get(purposes).post(create_purpose))
        .route("/console/consent/purposes/{key}", get(purpose))
        .route("/console/consent/purposes/{key}/notice", post(new_notice))
        .route("/console/consent/forms", get(builder).post(create_form))
}

fn subnav(active: &str) -> Markup {
    html! {
        nav.subnav aria-label="Consent" { ul {
            li { a href="/console/consent" aria-current=[(active == "purposes").then_some("page")] { "Purposes" } }
            li { a href="/console/consent/forms" aria-current=[(active == "forms").then_some("page")] { "Form builder" } }
        } }
    }
}

async fn purposes(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page =
        Page { me: &console.me, csrf: &console.session.csrf, area: Area::Consent, title: "Purposes", query: &query };
    let answer = console.api.get("/v1/purposes").await;
    page.render(html! {
        (subnav("purposes"))
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(list) => {
                @let purposes = list["purposes"].as_array().cloned().unwrap_or_default();
                @if purposes.is_empty() { p { "No purpose yet." } }
                @else { table.list {
                    thead { tr { th scope="col" { "Purpose" } th scope="col" { "Description" } th scope="col" { "Lawful basis" } th scope="col" { "Notice" } th scope="col" { "Created" } } }
                    tbody { @for p in &purposes { tr {
                        td { a href={ "/console/consent/purposes/" (s(p, "key")) } { code { (s(p, "key")) } } }
                        td { (s(p, "description")) }
                        td { (s(p, "lawful_basis")) }
                        td { "v" (text(&p["current_version"])) }
                        td { (time(&p["created_at"])) }
                    } } }
                } }
            }
        }
        @if console.me.can(ConsentManage) {
            details.card {
                summary { "New purpose" }
                form method="post" action="/console/consent" {
                    (csrf(&console.session.csrf))
                    div.grid {
                        label { "Key" input type="text" name="key" required pattern="[a-z0-9_]+" placeholder="newsletter"; }
                        label { "Description" input type="text" name="description" required; }
                        label { "Lawful basis" select name="lawful_basis" { @for b in BASES { option value=(b) { (b) } } } }
                    }
                    label { "Notice text (what the person reads and agrees to)" textarea name="notice" rows="4" required {} }
                    button type="submit" { "Create purpose" }
                }
            }
        }
    })
}

async fn create_purpose(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let purpose = json!({"key": form.get("key"), "description": form.get("description"),
        "lawful_basis": form.get("lawful_basis"), "notice": form.get("notice")});
    match console.api.post("/v1/purposes", &purpose).await {
        Ok(p) => console
            .after(
                &format!("/console/consent/purposes/{}", segment(s(&p, "key"))),
                Ok::<(), Failure>(()),
                "Purpose created",
            )
            .into_response(),
        Err(f) => console.after("/console/consent", Err::<(), _>(f), ""),
    }
}

fn render_diff(chunks: &[Chunk]) -> Markup {
    html! {
        p.diff #notice-diff { @for c in chunks { @match c {
            Chunk::Same(t) => span { (t) },
            Chunk::Removed(t) => del { (t) },
            Chunk::Added(t) => ins { (t) },
        } } }
    }
}

async fn purpose(console: Console, Path(key): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let p = match console.api.get(&format!("/v1/purposes/{}", segment(&key))).await {
        Ok(p) => p,
        Err(f) => return super::layout::failure_page(&f),
    };
    let notices = p["notices"].as_array().cloned().unwrap_or_default();
    let current = p["current_version"].as_u64().unwrap_or(1);
    let to: u64 = query.get("to").parse().unwrap_or(current);
    let from: u64 = query.get("from").parse().unwrap_or(to.saturating_sub(1).max(1));
    let text_of = |v: u64| notices.iter().find(|n| n["version"].as_u64() == Some(v)).map(|n| s(n, "text").to_string());
    let title = format!("Purpose {}", s(&p, "key"));
    let page = Page { me: &console.me, csrf: &console.session.csrf, area: Area::Consent, title: &title, query: &query };
    page.render(html! {
        (subnav("purposes"))
        table.kv {
            tr { th scope="row" { "Description" } td { (s(&p, "description")) } }
            tr { th scope="row" { "Lawful basis" } td { (s(&p, "lawful_basis")) } }
            tr { th scope="row" { "Current notice" } td { "version " (current) } }
        }
        h2 { "Notice versions" }
        p.hint { "Every edit makes a new version; each consent records the version the person saw." }
        ol.versions { @for n in notices.iter().rev() { li {
            strong { "v" (text(&n["version"])) } " · " (time(&n["created_at"])) " by " code { (s(n, "created_by")) }
            blockquote { (s(n, "text")) }
        } } }
        @if notices.len() > 1 {
            h2 #h-diff { "Changes from v" (from) " to v" (to) }
            form.inline method="get" action={ "/console/consent/purposes/" (s(&p, "key")) } {
                label { "From" select name="from" { @for n in &notices { @let v = n["version"].as_u64().unwrap_or(0);
                    option value=(v) selected[v == from] { "v" (v) } } } }
                label { "To" select name="to" { @for n in &notices { @let v = n["version"].as_u64().unwrap_or(0);
                    option value=(v) selected[v == to] { "v" (v) } } } }
                button type="submit" { "Compare" }
            }
            @match (text_of(from), text_of(to)) {
                (Some(a), Some(b)) => (render_diff(&diff(&a, &b))),
                _ => p { "No such version." },
            }
        }
        @if console.me.can(ConsentManage) {
            h2 { "Edit the notice" }
            form.card method="post" action={ "/console/consent/purposes/" (s(&p, "key")) "/notice" } {
                (csrf(&console.session.csrf))
                label { "New notice text (becomes v" (current + 1) ")"
                    textarea name="notice" rows="4" required { (text_of(current).unwrap_or_default()) } }
                button type="submit" { "Save as a new version" }
            }
        }
    })
}

async fn new_notice(console: Console, Path(key): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result = console
        .api
        .put(&format!("/v1/purposes/{}/notice", segment(&key)), &json!({"notice": form.get("notice")}))
        .await;
    console.after(&format!("/console/consent/purposes/{}", segment(&key)), result, "New notice version saved")
}

async fn builder(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page = Page {
        me: &console.me,
        csrf: &console.session.csrf,
        area: Area::Consent,
        title: "Form builder",
        query: &query,
    };
    if !console.me.can(ConsentManage) {
        return page.render(html! { (subnav("forms")) (needs(ConsentManage)) });
    }
    let (policy, purposes) = tokio::join!(console.api.get("/v1/field-policy"), console.api.get("/v1/purposes"));
    let (policy, purposes) = match (policy, purposes) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => {
            return page.render(html! { (subnav("forms")) p.flash.err role="alert" { (f.line()) } });
        }
    };
    page.render(html! {
        (subnav("forms"))
        div.columns #form-builder {
            form.card method="post" action="/console/consent/forms" {
                (csrf(&console.session.csrf))
                label { "Form title" input #fb-name type="text" name="name" required value="Join our newsletter"; }
                fieldset {
                    legend { "Fields (from the field policy: nothing else can be asked)" }
                    @for f in policy["fields"].as_array().into_iter().flatten() {
                        label.check { input type="checkbox" name="fields" value=(s(f, "key")) data-type=(s(f, "type")) checked[s(f, "key") == "email"];
                            " " (s(f, "key")) " " small { "(" (s(f, "type")) ", " (s(f, "category")) ")" } }
                    }
                }
                fieldset {
                    legend { "Consent boxes (always unticked for the person)" }
                    @for p in purposes["purposes"].as_array().into_iter().flatten() {
                        @let notice = p["notices"].as_array().and_then(|n| n.last()).map(|n| s(n, "text").to_string()).unwrap_or_default();
                        label.check { input type="checkbox" name="consents" value=(s(p, "key")) data-notice=(notice); " " (s(p, "key")) " " small { "(v" (text(&p["current_version"])) ")" } }
                    }
                }
                button type="submit" { "Create form" }
            }
            section aria-labelledby="h-preview" {
                h2 #h-preview { "Live preview" }
                div.preview #fb-preview aria-live="polite" { p.hint { "The preview needs JavaScript; the form works without it." } }
            }
        }
    })
}

async fn create_form(console: Console, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let request = json!({"name": form.get("name"), "fields": form.all("fields"), "consents": form.all("consents")});
    let created = match console.api.post("/v1/forms", &request).await {
        Ok(v) => v,
        Err(f) => return console.after("/console/consent/forms", Err::<(), _>(f), ""),
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = if super::is_https(&headers) { "https" } else { "http" };
    let url = format!("{scheme}://{host}{}", s(&created, "url"));
    let snippet = format!(
        "<iframe src=\"{url}\" title=\"{}\" style=\"border:0;width:100%;min-height:34rem\" loading=\"lazy\"></iframe>",
        s(&created, "name").replace('"', "&quot;").replace('<', "&lt;")
    );
    let query = Query::default();
    let page = Page {
        me: &console.me,
        csrf: &console.session.csrf,
        area: Area::Consent,
        title: "Form created",
        query: &query,
    };
    page.render(html! {
        (subnav("forms"))
        p.flash.ok role="status" { "Form " code { (s(&created, "id")) } " created. The notice versions shown are fixed in each submission." }
        p { "Public page: " a #form-url href=(url) { (url) } }
        label for="embed" { "Embed snippet" }
        textarea #embed readonly rows="3" { (snippet) }
        h2 { "As people will see it" }
        iframe.embedded src=(s(&created, "url")) title="The form as published" {}
        p { a href="/console/consent/forms" { "Build another form" } }
    })
}
