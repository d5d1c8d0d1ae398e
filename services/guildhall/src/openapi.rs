//! The OpenAPI document, `/openapi.json` and `guildhall openapi`.
//!
//! It is the whole API whichever services a process runs: in a split deployment the ALB sends
//! `/openapi.json` to one service (accounts), and a document of that service's paths alone would
//! leave the others undocumented.
//!
//! The responses that the shared layers give are added here to each operation they apply to,
//! rather than repeated by hand in every annotation, where they were forgotten (415 on every JSON
//! operation, 401 on several authenticated ones):
//! - a JSON body (`platform::http::Json`): 400 `invalid_request`, 413 `payload_too_large`,
//!   415 `unsupported_media_type`;
//! - a bearer token or the server key (`platform::auth`'s extractors, named by the operation's
//!   `security`): 401;
//! - a backend behind it (every operation but the JWKS and the health checks, which document
//!   their own): 503 `unavailable` with `Retry-After` (`platform::error`), and in a read-only
//!   region 503 `read_only_region` (`platform::region`);
//! - every operation: 408 after `REQUEST_TIMEOUT_SECS` (`platform::http`, no body) and 500
//!   `internal`.
//!
//! An annotation keeps what its own handler answers (404, 409, 403, 429 …), and its own wording
//! where it documents one of these codes itself.

use platform::config::Service;
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, HeaderBuilder, Ref, RefOr, Response, ResponseBuilder, Schema};

/// The health endpoints in the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(platform::health::live, platform::health::ready), components(schemas(platform::health::Health, platform::health::Check)))]
struct HealthDoc;

/// Operations that reach no backend, so never answer 503 `unavailable`: the key set is in memory,
/// and liveness says only that the process runs (readiness documents its own 503).
const NO_BACKEND: &[(&str, &str)] = &[("get", "/.well-known/jwks.json"), ("get", "/health/live"), ("get", "/health/ready")];

/// The OpenAPI document of the whole API.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = HealthDoc::openapi();
    doc.info.title = "Guildhall".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some("Game backend: accounts, leaderboards, uploads, chat, webhooks.".into());
    for service in Service::ALL {
        match service {
            Service::Accounts => {
                doc.merge(accounts::ApiDoc::openapi());
                doc.merge(platform::admin::ApiDoc::openapi());
            }
            Service::Leaderboard => doc.merge(leaderboard::ApiDoc::openapi()),
            Service::Uploads => doc.merge(uploads::ApiDoc::openapi()),
            Service::Chat => doc.merge(chat::ApiDoc::openapi()),
            Service::Webhooks => doc.merge(webhooks::ApiDoc::openapi()),
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
    );
    for (name, response) in shared_responses() {
        components.responses.insert(name.to_owned(), RefOr::T(response));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                add_shared_responses(method, path, operation);
            }
        }
    }
    doc
}

/// The responses of the shared layers, by their name under `components/responses`.
fn shared_responses() -> Vec<(&'static str, Response)> {
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
            .build()
    };
    let retry_after = HeaderBuilder::new()
        .schema(Some(RefOr::T(Schema::Object(utoipa::openapi::schema::Object::with_type(utoipa::openapi::schema::Type::Integer)))))
        .description(Some("Seconds to wait before retrying"))
        .build();
    let mut unavailable = error(
        "`unavailable`: a dependency (the database, Redis, the file storage) is down, or a leaderboard index is being rebuilt; or `read_only_region`: this region is a warm secondary (its database a replica) that serves reads and refuses writes until it is promoted; retry after `Retry-After` seconds",
    );
    unavailable.headers.insert("Retry-After".into(), RefOr::T(retry_after));
    vec![
        ("InvalidRequest", error("`invalid_request`: malformed JSON, or a missing, unknown or out-of-range field (named in `field`)")),
        (
            "Unauthenticated",
            error(
                "`missing_token`, `invalid_token`, `token_expired` or `session_revoked`: no, a bad or an expired token, or an ended session",
            ),
        ),
        ("RequestTimeout", Response::new("The request took longer than `REQUEST_TIMEOUT_SECS`; no body")),
        ("PayloadTooLarge", error("`payload_too_large`: the body is over 64 KiB")),
        ("UnsupportedMediaType", error("`unsupported_media_type`: the body was not sent as `Content-Type: application/json`")),
        ("Internal", error("`internal`: an unexpected error, logged; the body says no more")),
        ("Unavailable", unavailable),
    ]
}

/// Adds the shared layers' responses that apply to `method` `path`, keeping any the annotation
/// documents itself.
fn add_shared_responses(method: &str, path: &str, operation: &mut Operation) {
    let mut shared = Vec::new();
    if operation.request_body.is_some() {
        shared.extend([("400", "InvalidRequest"), ("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType")]);
    }
    if operation.security.as_ref().is_some_and(|requirements| !requirements.is_empty()) {
        shared.push(("401", "Unauthenticated"));
    }
    if !NO_BACKEND.contains(&(method, path)) {
        shared.push(("503", "Unavailable"));
    }
    shared.extend([("408", "RequestTimeout"), ("500", "Internal")]);
    for (status, name) in shared {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every authenticated operation documents 401, every JSON one 415, every one that reaches a
    /// backend 503: the complaint of issue 12, checked on the document as served.
    #[test]
    fn every_operation_documents_what_the_shared_layers_answer() {
        let doc = serde_json::to_value(document()).expect("JSON");
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let responses = operation["responses"].as_object().expect("responses");
                let has = |status: &str| responses.contains_key(status);
                if operation.get("requestBody").is_some() {
                    assert!(has("400") && has("413") && has("415"), "{method} {path}");
                }
                if operation.get("security").is_some() {
                    assert!(has("401"), "{method} {path}");
                }
                assert!(has("503") || NO_BACKEND.contains(&(method.as_str(), path.as_str())), "{method} {path}");
                assert!(has("408") && has("500"), "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked > 30, "{checked} operations");
        // The examples the issue named.
        for (method, path) in [("get", "/v1/assets"), ("delete", "/v1/assets/{asset_id}")] {
            assert!(doc["paths"][path][method]["responses"]["401"].is_object(), "{method} {path}");
        }
    }
}
