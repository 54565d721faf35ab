//! Public pages people open from their mail or a website, without credentials: the double
//! opt-in confirmation `/o/{token}` and the one-click withdrawal `/u/{token}`. The gateway
//! forwards the (still unverified) token to the consent service, which owns its key, as the
//! caller `public:link` of the tenant the token names.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use carnet_kit::{Caller, CallerSigner, ErrorCode, ServiceError};
use carnet_proto::consent::v1 as pb;
use carnet_proto::consent::v1::consent_service_client::ConsentServiceClient;

use crate::AppState;
use crate::auth::RequestId;
use crate::error::ApiError;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A minimal page in Carnet's public style.
pub fn page(title: &str, body_html: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         label{{display:block;margin:.75rem 0 .25rem}}input[type=text],input[type=email],input[type=tel],input[type=date],input[type=number]{{width:100%;padding:.4rem}}\
         .consent{{display:flex;gap:.5rem;align-items:flex-start;margin:.75rem 0}}.hp{{position:absolute;left:-10000px}}\
         button{{margin-top:1rem;padding:.5rem 1rem}}</style></head><body>{body_html}</body></html>",
        escape(title)
    )
}

/// Answers an error as a small HTML page with the problem's status.
pub fn error_page(err: ApiError) -> Response {
    let status = StatusCode::from_u16(err.error.code.http_status_code()).unwrap_or(StatusCode::BAD_REQUEST);
    let title = if status == StatusCode::TOO_MANY_REQUESTS { "Too many requests" } else { "This link cannot be used" };
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(&err.error.message));
    let mut response = (status, Html(page(title, &body))).into_response();
    if let Some(secs) = err.retry_after_secs_opt {
        response.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    response
}

/// The client address (the TCP peer), as evidence and for the rate limit; empty when unknown.
pub struct ClientIp(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip().to_string());
        Ok(ClientIp(ip.unwrap_or_default()))
    }
}

pub fn user_agent(headers: &HeaderMap) -> String {
    headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().chars().take(512).collect()
}

/// Refuses a client past the public rate limit.
pub fn limit(state: &AppState, ip: &str) -> Result<(), ApiError> {
    match state.limiter.check(&format!("ip:{ip}")) {
        None => Ok(()),
        Some(retry) => Err(ApiError {
            error: ServiceError::new(ErrorCode::ResourceExhausted, "too many requests from this address"),
            retry_after_secs_opt: Some(retry),
        }),
    }
}

fn link_client(
    state: &AppState,
    token: &str,
    request_id: &str,
) -> Result<
    ConsentServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, CallerSigner>>,
    ApiError,
> {
    let tenant_id =
        carnet_kit::links::peek_tenant(token).ok_or_else(|| ApiError::invalid_field("token", "is not a valid link"))?;
    let mut caller = Caller::new(tenant_id, "public:link", []);
    // The audit entry of what the person did correlates with this request.
    caller.request_id = request_id.to_string();
    Ok(state.consent_as(caller))
}

async fn redeem(
    state: &AppState,
    token: String,
    ip: String,
    ua: String,
    request_id: &str,
) -> Result<pb::RedeemLinkResponse, ApiError> {
    limit(state, &ip)?;
    let mut client = link_client(state, &token, request_id)?;
    Ok(client.redeem_link(pb::RedeemLinkRequest { token, ip, user_agent: ua }).await?.into_inner())
}

fn purpose_name(r: &pb::RedeemLinkResponse) -> String {
    if r.purpose_description.is_empty() { r.purpose.clone() } else { r.purpose_description.clone() }
}

/// `GET /o/{token}`: the person confirms a pending consent (double opt-in).
pub async fn confirm(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match redeem(&state, token, ip, user_agent(&headers), &request_id).await {
        Ok(r) if r.action == pb::ConsentAction::Grant as i32 => {
            let name = escape(&purpose_name(&r));
            let text = if r.already_done { "was already confirmed" } else { "is confirmed" };
            Html(page(
                "Confirmed",
                &format!("<h1>Thank you</h1><p>Your consent to <strong>{name}</strong> {text}.</p>"),
            ))
            .into_response()
        }
        Ok(_) => error_page(ApiError::invalid_field("token", "is not a confirmation link")),
        Err(err) => error_page(err),
    }
}

/// `GET /u/{token}`: a page with the one-click withdraw button (links in mail are fetched by
/// scanners, so the change itself takes a POST).
pub async fn withdraw_page(Path(token): Path<String>) -> Response {
    let body = format!(
        "<h1>Withdraw consent</h1><p>You will no longer receive messages for this purpose.</p>\
         <form method=\"post\" action=\"/u/{}\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Withdraw</button></form>",
        escape(&token)
    );
    Html(page("Withdraw consent", &body)).into_response()
}

/// `POST /u/{token}`: withdraws at once (RFC 8058 one-click).
pub async fn withdraw(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match redeem(&state, token, ip, user_agent(&headers), &request_id).await {
        Ok(r) if r.action == pb::ConsentAction::Withdraw as i32 => {
            let name = escape(&purpose_name(&r));
            Html(page(
                "Withdrawn",
                &format!("<h1>Done</h1><p>Your consent to <strong>{name}</strong> is withdrawn.</p>"),
            ))
            .into_response()
        }
        Ok(_) => error_page(ApiError::invalid_field("token", "is not a withdraw link")),
        Err(err) => error_page(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_escape_neutralises_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
