//! The OpenAPI 3 document, generated from the handlers' annotations and the body types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::routes::{audit, comms, consent, contacts, dsar, enrichment, export, forms, imports, keys, me, retention};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`carnet_…`) or an OIDC JWT"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Carnet API", version = "1", description = "The GDPR-first CRM platform. Errors are application/problem+json with a stable `code`."),
    paths(
        contacts::get_field_policy,
        contacts::put_field_policy,
        contacts::create_contact,
        contacts::list_contacts,
        contacts::get_contact,
        contacts::update_contact,
        contacts::delete_contact,
        contacts::merge_contacts,
        contacts::put_restriction,
        contacts::put_objection,
        contacts::get_history,
        contacts::export_contact,
        export::export_contacts,
        consent::create_purpose,
        consent::list_purposes,
        consent::get_purpose,
        consent::put_notice,
        consent::record_consent,
        consent::contact_consents,
        consent::check,
        comms::create_template,
        comms::get_template,
        comms::send_message,
        comms::get_message,
        comms::create_campaign,
        comms::list_campaigns,
        comms::get_campaign,
        comms::send_campaign,
        comms::create_sequence,
        comms::get_sequence,
        comms::enroll,
        comms::request_consent,
        comms::report_bounce,
        comms::suppress,
        comms::log_call,
        comms::update_call,
        comms::timeline,
        dsar::create,
        dsar::list,
        dsar::get,
        dsar::export,
        dsar::extend,
        dsar::reject,
        dsar::place_hold,
        dsar::list_holds,
        dsar::lift_hold,
        dsar::ledger,
        retention::get,
        retention::put,
        retention::run,
        retention::purges,
        audit::query,
        audit::verify,
        audit::export,
        enrichment::install,
        enrichment::list,
        enrichment::get_settings,
        enrichment::put_settings,
        enrichment::enrich,
        enrichment::contact_runs,
        enrichment::runs,
        forms::create_form,
        imports::create,
        imports::upload,
        imports::get,
        imports::list,
        imports::report,
        keys::create_key,
        keys::list_keys,
        keys::revoke_key,
        me::me,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "contacts", description = "Contacts, field policy, restriction, objection, export"), (name = "consent", description = "Purposes, notice versions, the consent ledger, checks"), (name = "comms", description = "Consent-gated e-mail, sequences, suppression, calls, timeline"), (name = "dsar", description = "Data subject requests, legal holds, the erasure ledger"), (name = "audit", description = "The audit trail: who did what to which record, hash-chained, exportable"), (name = "enrichment", description = "Sandboxed enrichment and profiling plugins, the tenant switches, the run ledger"), (name = "keys", description = "API keys of the caller's tenant"))
)]
pub struct ApiDoc;

/// Serves `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
