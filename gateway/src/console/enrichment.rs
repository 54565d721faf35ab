//! Enrichment: the tenant switches (auto-enrichment, profiling), each plugin's manifest in plain
//! words with its own switch, and the recent runs with failures apart.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};

use carnet_kit::Permission::*;

use super::Me;
use super::layout::{Area, Page, Query, badge, csrf, s, text, time};
use super::{Console, ConsoleState, Form};

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console/enrichment", get(show).post(switches))
        .route("/console/enrichment/plugins/{name}", post(plugin_switch))
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
    if items.is_empty() { "nothing".into() } else { items.join(", ") }
}

/// A plugin's manifest, said plainly.
pub fn manifest(p: &Value) -> Markup {
    html! {
        ul.manifest {
            li { "Reads: " strong { (list(&p["reads"])) } }
            li { "Writes: " strong { (list(&p["writes"])) } " (each value marked " code { "enrichment:" (s(p, "name")) "@" (s(p, "version")) } ")" }
            li { @if p["profiling"] == true { strong { "Profiles people" } " (Art. 22): runs only when profiling is allowed and the person consented to the purpose" }
                 @else { "Does not profile" } }
            li { "May call: " @if p["hosts"].as_array().is_none_or(|h| h.is_empty()) { strong { "no host (no network)" } } @else { strong { (list(&p["hosts"])) } } }
            li { "Data categories: " (list(&p["categories"])) " · purposes: " (list(&p["purposes"])) }
        }
    }
}

fn settings_form(me: &Me, token: &str, settings: &Value) -> Markup {
    let on = |key: &str| if settings[key] == true { "on" } else { "off" };
    let changed = html! {
        p.hint { "Last changed " (time(&settings["updated_at"])) @if !s(settings, "updated_by").is_empty() { " by " code { (s(settings, "updated_by")) } } }
    };
    if !me.can(EnrichmentAdmin) {
        // Shown, not offered: no form for a viewer who cannot change them.
        return html! {
            div.card #switches {
                h2 { "Tenant switches" }
                ul { li { "Auto-enrichment: " strong #auto_enrichment_state { (on("auto_enrichment")) } }
                     li { "Profiling allowed: " strong { (on("profiling_allowed")) } } }
                (changed)
                (super::layout::needs(EnrichmentAdmin))
            }
        };
    }
    html! {
        form.card #switches method="post" action="/console/enrichment" {
            (csrf(token))
            fieldset {
                legend { "Tenant switches" }
                label.check { input #auto_enrichment type="checkbox" name="auto_enrichment" value="true" checked[settings["auto_enrichment"] == true];
                    " Auto-enrichment: run the enabled plugins on every new or changed contact" }
                label.check { input #profiling_allowed type="checkbox" name="profiling_allowed" value="true" checked[settings["profiling_allowed"] == true];
                    " Profiling allowed: plugins that profile may run (each person's consent is still checked)" }
            }
            button type="submit" #save-switches { "Save switches" }
            (changed)
        }
    }
}

async fn show(console: Console, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw);
    let me = &console.me;
    let page = Page { me, csrf: &console.session.csrf, area: Area::Enrichment, title: "Enrichment", query: &query };
    let api = &console.api;
    let runs_path = "/v1/enrichment/runs?limit=50";
    let (settings, plugins, runs) = tokio::join!(api.get("/v1/enrichment/settings"), api.get("/v1/plugins"), async {
        if me.can(EnrichmentAdmin) { Some(api.get(runs_path).await) } else { None }
    });
    let token = &console.session.csrf;
    page.render(html! {
        @match &settings {
            Err(f) => p.flash.err role="alert" { "The API refused: " (f.line()) },
            Ok(v) => (settings_form(me, token, v)),
        }
        h2 { "Plugins" }
        @match &plugins {
            Err(f) => p.flash.err role="alert" { (f.line()) },
            Ok(v) => {
                @let plugins = v["plugins"].as_array().cloned().unwrap_or_default();
                @if plugins.is_empty() { p { "No plugin installed (" code { "POST /v1/plugins" } ", see docs/plugins.md)." } }
                div.plugins { @for p in &plugins {
                    @let enabled = p["enabled"] == true;
                    article.card.plugin data-plugin=(s(p, "name")) {
                        h3 { (s(p, "name")) " " small { (s(p, "version")) } " " (badge(if enabled { "enabled" } else { "disabled" })) }
                        (manifest(p))
                        p.hint { "Installed " (time(&p["installed_at"])) " by " code { (s(p, "installed_by")) } }
                        @if me.can(EnrichmentAdmin) {
                            form.inline method="post" action={ "/console/enrichment/plugins/" (s(p, "name")) } {
                                (csrf(token))
                                input type="hidden" name="enabled" value=(if enabled { "false" } else { "true" });
                                button type="submit" { (if enabled { "Disable for this tenant" } else { "Enable for this tenant" }) }
                            }
                        }
                    }
                } }
            }
        }
        @if let Some(runs) = &runs {
            h2 { "Recent runs" }
            @match runs {
                Err(f) => p.flash.err { (f.line()) },
                Ok(v) => {
                    @let runs = v["runs"].as_array().cloned().unwrap_or_default();
                    @let failures: Vec<&Value> = runs.iter().filter(|r| matches!(s(r, "outcome"), "failed" | "timeout")).collect();
                    @if !failures.is_empty() {
                        h3 { "Failures (" (failures.len()) ")" }
                        ul.failures { @for r in &failures { li { (time(&r["at"])) " " code { (s(r, "plugin")) "@" (s(r, "version")) } " on "
                            a href={ "/console/contacts/" (s(r, "contact_id")) } { code { (s(r, "contact_id")) } } ": " (s(r, "outcome")) " (" (s(r, "reason")) ")" } } }
                    }
                    @if runs.is_empty() { p { "No run yet." } }
                    @else { table.list.dense #runs {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Plugin" } th scope="col" { "Contact" } th scope="col" { "Trigger" } th scope="col" { "Outcome" } th scope="col" { "Read" } th scope="col" { "Wrote" } th scope="col" { "µs" } } }
                        tbody { @for r in &runs { tr {
                            td { (time(&r["at"])) }
                            td { code { (s(r, "plugin")) "@" (s(r, "version")) } }
                            td { a href={ "/console/contacts/" (s(r, "contact_id")) } { code { (s(r, "contact_id")) } } }
                            td { (s(r, "trigger")) }
                            td { (badge(s(r, "outcome"))) @if !s(r, "reason").is_empty() { " " (s(r, "reason")) } }
                            td { (list(&r["fields_read"])) }
                            td { (list(&r["fields_written"])) }
                            td.num { (text(&r["duration_us"])) }
                        } } }
                    } }
                }
            }
        }
    })
}

async fn switches(console: Console, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let request = json!({"auto_enrichment": form.checked("auto_enrichment"), "profiling_allowed": form.checked("profiling_allowed")});
    let result = console.api.put("/v1/enrichment/settings", &request).await;
    console.after("/console/enrichment", result, "Switches saved")
}

async fn plugin_switch(console: Console, Path(name): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = console.check_csrf(&form) {
        return refused.into_response();
    }
    let enabled = form.get("enabled") == "true";
    let result = console.api.put("/v1/enrichment/settings", &json!({"plugins": {name.clone(): enabled}})).await;
    console.after("/console/enrichment", result, if enabled { "Plugin enabled" } else { "Plugin disabled" })
}
