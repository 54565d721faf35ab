//! Settings: the field policy editor (which fields the tenant may collect at all) and the API
//! keys (a new key is shown once; revoke).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};

use carnet_kit::Permission::*;

use super::api::segment;
use super::layout::{Area, Page, Query, csrf, needs, s, text, time};
use super::{Console, ConsoleState, Form};

const TYPES: [&str; 7] = ["string", "email", "phone", "date", "number", "boolean", "enum"];
const ROLES: [&str; 6] = ["owner", "admin", "privacy_officer", "sales", "marketing", "read_only"];
/// Empty rows offered for new fields.
const NEW_ROWS: usize = 3;

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/settings/fields", get(policy).post(save_policy))
        .route("/console/settings/keys", get(keys).post(create_key))
        .route("/console/settings/keys/{id}/revoke", post(revoke_key))
}

fn subnav(active: &str) -> Markup {
    html! {
        nav.subnav aria-label="Settings" { ul {
            li { a href="/console/settings/fields" aria-current=[(active == "fields").then_some("page")] { "Field policy" } }
            li { a href="/console/settings/keys" aria-current=[(active == "keys").then_some("page")] { "API keys" } }
        } }
    }
}

fn row(i: usize, f: &Value) -> Markup {
    let enum_values = f["enum_values"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", ");
    html! {
        tr {
            td { input type="text" name={ "key." (i) } value=(s(f, "key")) aria-label="Key" pattern="[a-z0-9_]*"; }
            td { select name={ "type." (i) } aria-label="Type" {
                @for t in TYPES { option value=(t) selected[s(f, "type") == t] { (t) } } } }
            td { input type="text" name={ "category." (i) } value=(s(f, "category")) aria-label="Data category"; }
            td { input type="checkbox" name={ "required." (i) } value="true" aria-label="Required" checked[f["required"] == true]; }
            td { input type="text" name={ "enum." (i) } value=(enum_values) aria-label="Enum values, comma-separated"; }
            td { input type="text" name={ "purpose." (i) } value=(s(f, "purpose")) aria-label="Purpose"; }
        }
    }
}

async fn policy(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let page = Page {
        me: &console.me,
        csrf: &console.session.csrf,
        area: Area::Settings,
        title: "Field policy",
        query: &query,
    };
    let answer = console.api.get("/v1/field-policy").await;
    let editable = console.me.can(PolicyManage);
    page.render(html! {
        (subnav("fields"))
        p.hint { "Data minimisation: a contact may hold only these fields; anything else is refused by the API, naming the field." }
        @match &answer {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(p) => {
                @let fields = p["fields"].as_array().cloned().unwrap_or_default();
                p.meta { "Version " (text(&p["version"])) " · updated " (time(&p["updated_at"])) " by " code { (s(p, "updated_by")) } }
                @if editable {
                    form method="post" action="/console/settings/fields" {
                        (csrf(&console.session.csrf))
                        table.list.edit #policy {
                            (header())
                            tbody {
                                @for (i, f) in fields.iter().enumerate() { (row(i, f)) }
                                @for i in fields.len()..fields.len() + NEW_ROWS { (row(i, &json!({"type": "string"}))) }
                            }
                        }
                        p.hint { "Clear a key to remove the field. Saving makes a new policy version." }
                        button type="submit" { "Save policy" }
                    }
                } @else {
                    table.list #policy {
                        (header())
                        tbody { @for f in &fields { tr {
                            td { code { (s(f, "key")) } } td { (s(f, "type")) } td { (s(f, "category")) }
                            td { @if f["required"] == true { "required" } }
                            td { (f["enum_values"].as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(", ")) }
                            td { (s(f, "purpose")) }
                        } } }
                    }
                    (needs(PolicyManage))
                }
            }
        }
    })
}

fn header() -> Markup {
    html! {
        thead { tr { th scope="col" { "Key" } th scope="col" { "Type" } th scope="col" { "Data category" } th scope="col" { "Required" } th scope="col" { "Enum values" } th scope="col" { "Purpose" } } }
    }
}

/// The rows of the submitted policy table, in order, empty keys dropped.
pub fn policy_of(form: &Form) -> Value {
    let mut fields = Vec::new();
    for i in 0.. {
        let key = format!("key.{i}");
        if !form.0.iter().any(|(k, _)| *k == key) {
            break;
        }
        if form.get(&key).is_empty() {
            continue;
        }
        let mut field = json!({"key": form.get(&key), "type": form.get(&format!("type.{i}")),
            "category": form.get(&format!("category.{i}")), "required": form.checked(&format!("required.{i}"))});
        let enums: Vec<&str> =
            form.get(&format!("enum.{i}")).split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
        if !enums.is_empty() {
            field["enum_values"] = json!(enums);
        }
        if !form.get(&format!("purpose.{i}")).is_empty() {
            field["purpose"] = json!(form.get(&format!("purpose.{i}")));
        }
        fields.push(field);
    }
    json!({"fields": fields})
}

async fn save_policy(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result = console.api.put("/v1/field-policy", &policy_of(&form)).await;
    console.after("/console/settings/fields", result, "Field policy saved")
}

fn keys_page(
    console: &Console,
    query: &Query,
    created_opt: Option<&Value>,
    list: Result<Value, super::api::Failure>,
) -> Response {
    let page = Page { me: &console.me, csrf: &console.session.csrf, area: Area::Settings, title: "API keys", query };
    page.render(html! {
        (subnav("keys"))
        @if let Some(created) = created_opt {
            div.flash.ok role="status" #new-key {
                p { "New " strong { (s(created, "role")) } " key. Copy it now: it is shown this once and stored only as a hash." }
                input type="text" readonly value=(s(created, "api_key")) aria-label="The new API key" size="70";
            }
        }
        @match &list {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(v) => table.list #keys {
                thead { tr { th scope="col" { "Key id" } th scope="col" { "Role" } th scope="col" { "Label" } th scope="col" { "Created" } th scope="col" { "State" } } }
                tbody { @for k in v["keys"].as_array().into_iter().flatten() { tr {
                    td { code { (s(k, "id")) } }
                    td { (s(k, "role")) }
                    td { (s(k, "label")) }
                    td { (time(&k["created_at"])) " by " code { (s(k, "created_by")) } }
                    td { @if k["revoked_at"].is_null() {
                        form.inline method="post" action={ "/console/settings/keys/" (s(k, "id")) "/revoke" } {
                            (csrf(&console.session.csrf))
                            button.danger type="submit" { "Revoke" }
                        }
                    } @else { "revoked " (time(&k["revoked_at"])) } }
                } } }
            },
        }
        h2 { "New key" }
        form.card method="post" action="/console/settings/keys" {
            (csrf(&console.session.csrf))
            div.grid {
                label { "Role" select name="role" { @for r in ROLES { option value=(r) selected[r == "read_only"] { (r) } } } }
                label { "Label" input type="text" name="label" placeholder="e.g. crm-sync"; }
            }
            button type="submit" { "Create key" }
        }
    })
}

async fn keys(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    if !console.me.can(KeysManage) {
        let page = Page {
            me: &console.me,
            csrf: &console.session.csrf,
            area: Area::Settings,
            title: "API keys",
            query: &query,
        };
        return page.render(html! { (subnav("keys")) (needs(KeysManage)) });
    }
    let list = console.api.get("/v1/api-keys").await;
    keys_page(&console, &query, None, list)
}

/// Creates a key and shows it on this answer only (never in a redirect URL).
async fn create_key(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    match console.api.post("/v1/api-keys", &json!({"role": form.get("role"), "label": form.get("label")})).await {
        Ok(created) => {
            let list = console.api.get("/v1/api-keys").await;
            keys_page(&console, &Query::default(), Some(&created), list)
        }
        Err(f) => console.after("/console/settings/keys", Err::<(), _>(f), ""),
    }
}

async fn revoke_key(console: Console, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let result = console.api.delete(&format!("/v1/api-keys/{}", segment(&id))).await;
    console.after("/console/settings/keys", result, "Key revoked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_policy_of_reads_rows_in_order_and_drops_cleared_keys() {
        let form = Form(
            [
                ("key.0", "email"),
                ("type.0", "email"),
                ("category.0", "contact"),
                ("required.0", "true"),
                ("key.1", ""),
                ("type.1", "string"),
                ("key.2", "tier"),
                ("type.2", "enum"),
                ("category.2", "professional"),
                ("enum.2", "gold, silver,"),
                ("purpose.2", "sales"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        assert_eq!(
            policy_of(&form),
            json!({"fields": [
                {"key": "email", "type": "email", "category": "contact", "required": true},
                {"key": "tier", "type": "enum", "category": "professional", "required": false,
                 "enum_values": ["gold", "silver"], "purpose": "sales"},
            ]})
        );
    }
}
