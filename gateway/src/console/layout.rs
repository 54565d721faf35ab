//! The page shell (header, navigation by permission, flash messages) and small rendering helpers
//! shared by every console page.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use carnet_kit::Permission::{self, *};

use super::Me;
use super::api::Failure;

/// The console's areas, in navigation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    Contacts,
    Campaigns,
    Privacy,
    Consent,
    Enrichment,
    Settings,
}

impl Area {
    const ALL: [Area; 6] =
        [Area::Contacts, Area::Campaigns, Area::Privacy, Area::Consent, Area::Enrichment, Area::Settings];

    fn label(self) -> &'static str {
        match self {
            Area::Contacts => "Contacts",
            Area::Campaigns => "Campaigns",
            Area::Privacy => "Privacy",
            Area::Consent => "Consent",
            Area::Enrichment => "Enrichment",
            Area::Settings => "Settings",
        }
    }

    fn href(self) -> &'static str {
        match self {
            Area::Contacts => "/console/contacts",
            Area::Campaigns => "/console/campaigns",
            Area::Privacy => "/console/privacy",
            Area::Consent => "/console/consent",
            Area::Enrichment => "/console/enrichment",
            Area::Settings => "/console/settings/fields",
        }
    }

    /// Whether `me` may see the area at all (its pages still hide what `me` cannot do).
    pub fn visible_to(self, me: &Me) -> bool {
        match self {
            Area::Contacts => me.can(ContactsRead),
            Area::Campaigns => me.can_any(&[CommsSend, ContactsRead]),
            Area::Privacy => me.can_any(&[DsarManage, AuditRead]),
            Area::Consent => me.can_any(&[ConsentManage, ContactsRead]),
            Area::Enrichment => me.can_any(&[EnrichmentAdmin, ContactsRead]),
            Area::Settings => me.can_any(&[ContactsRead, KeysManage]),
        }
    }
}

/// The query string of a page, with the flash messages of [`super::after`].
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<String>) -> Query {
        Query(form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.as_str())
    }
}

/// Where a page sits and who is looking.
pub struct Page<'a> {
    pub me: &'a Me,
    pub csrf: &'a str,
    pub area: Area,
    pub title: &'a str,
    pub query: &'a Query,
}

impl Page<'_> {
    /// The whole HTML document around `body`.
    pub fn render(&self, body: Markup) -> Response {
        Html(self.document(body).into_string()).into_response()
    }

    fn document(&self, body: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · Carnet console" }
                    link rel="stylesheet" href="/console/assets/console.css";
                    script src="/console/assets/console.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        a.brand href="/console" { "Carnet" }
                        nav aria-label="Main" {
                            ul {
                                @for area in Area::ALL.into_iter().filter(|a| a.visible_to(self.me)) {
                                    li {
                                        a href=(area.href()) aria-current=[(area == self.area).then_some("page")] {
                                            (area.label())
                                        }
                                    }
                                }
                            }
                        }
                        div.who {
                            span title="Your credential (an id, never a name)" { (self.me.principal) }
                            form method="post" action="/console/logout" {
                                (csrf(self.csrf))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main tabindex="-1" {
                        h1 { (self.title) }
                        (flash(self.query, self.csrf))
                        (body)
                    }
                }
            }
        }
    }
}

/// The success or failure message a redirect of this session carried (see `Console::after`);
/// a message without this session's tag is not shown.
pub fn flash(query: &Query, csrf: &str) -> Markup {
    let tagged = |kind: &str| {
        let text = query.get(kind);
        let tag = super::session::tag(csrf.as_bytes(), &format!("{kind}:{text}"));
        !text.is_empty() && super::session::constant_time_eq(tag.as_bytes(), query.get("tag").as_bytes())
    };
    html! {
        @if tagged("ok") {
            p.flash.ok role="status" { (query.get("ok")) }
        }
        @if tagged("err") {
            p.flash.err role="alert" { "The API refused: " (query.get("err")) }
        }
    }
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="_csrf" value=(token); }
}

/// A whole page for an API refusal that leaves nothing else to show.
pub fn failure_page(failure: &Failure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Refused · Carnet console" } link rel="stylesheet" href="/console/assets/console.css"; }
            body { main #main {
                h1 { "The API refused this page" }
                p.flash.err role="alert" { (failure.line()) }
                p { a href="/console" { "Back to the console" } }
            } }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// The sign-in page.
pub fn login(token: &str, error: &str, oidc: bool) -> Html<String> {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Carnet console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body.login {
                main #main {
                    h1 { "Carnet console" }
                    @if !error.is_empty() { p.flash.err role="alert" { "Sign-in refused: " (error) } }
                    form.card method="post" action="/console/login" {
                        input type="hidden" name="_login" value=(token);
                        label for="api_key" { "API key" }
                        input #api_key type="password" name="api_key" autocomplete="off" required autofocus
                            placeholder="carnet_…";
                        p.hint { "The key from " code { "carnet tenant create" } " or " code { "carnet apikey create" } ". It is kept only in an encrypted, HttpOnly cookie for 8 hours." }
                        button type="submit" { "Sign in" }
                    }
                    @if oidc {
                        p { a.button #oidc-sign-in href="/console/oidc/start" { "Sign in with your organisation's account" } }
                    }
                }
            }
        }
    };
    Html(body.into_string())
}

/// A string member of `v`, empty when absent.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// A JSON value as short text (strings unquoted).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as `2026-11-29 10:00 UTC`, in a `<time>` element.
pub fn time(v: &Value) -> Markup {
    let raw = v.as_str().unwrap_or_default();
    let shown = chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| raw.to_string());
    html! { time datetime=(raw) { (shown) } }
}

/// A short status badge.
pub fn badge(label: &str) -> Markup {
    html! { span class={ "badge " (label.replace(|c: char| !c.is_ascii_alphanumeric(), "-")) } { (label) } }
}

/// A message for a section that a permission hides.
pub fn needs(permission: Permission) -> Markup {
    html! { p.hint { "Needs the " code { (permission.as_str()) } " permission." } }
}

/// Marks text as already escaped HTML (only for markup built here).
pub fn raw(markup: String) -> Markup {
    PreEscaped(markup)
}
