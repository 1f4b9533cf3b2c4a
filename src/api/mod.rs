//! The HTTP API under `/api/v1` (axum + utoipa), its OpenAPI description and explorer.

pub use crate::http::{AppState, error};
pub mod devices;
pub mod google;
pub mod health;
pub mod jobs;
pub mod queues;
pub mod schedules;
pub mod snapshots;

use axum::Router;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every route can answer besides what its own attribute lists, said once: errors are
/// `application/problem+json`; every route behind the token can answer 401; a route with
/// parameters or a body can refuse them (400), one with a path parameter can find nothing
/// (404), one with a body can get too much (413) or the wrong shape (422). And `POST /jobs`
/// takes one of the documented kinds with that kind's args.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut doc = serde_json::to_value(&*openapi).expect("OpenAPI serializes");
        let problem = |description: &str| {
            serde_json::json!({
                "description": description,
                "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}
            })
        };
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, item) in paths.iter_mut() {
                let Some(item) = item.as_object_mut() else {
                    continue;
                };
                for op in item.values_mut() {
                    let has_params = op["parameters"].as_array().is_some_and(|p| !p.is_empty());
                    let has_path_param = op["parameters"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["in"] == "path"));
                    let has_body = op.get("requestBody").is_some();
                    let Some(responses) = op["responses"].as_object_mut() else {
                        continue;
                    };
                    // Error answers with a problem body (health's 503 answers its own Health).
                    for (status, r) in responses.iter_mut() {
                        if status.as_str() >= "400"
                            && let Some(content) = r["content"].as_object_mut()
                            && content["application/json"]["schema"]["$ref"]
                                == "#/components/schemas/Problem"
                            && let Some(json) = content.remove("application/json")
                        {
                            content.insert("application/problem+json".into(), json);
                        }
                    }
                    let mut add = |status: &str, description: &str| {
                        responses
                            .entry(status.to_string())
                            .or_insert_with(|| problem(description));
                    };
                    if path != "/api/v1/health" {
                        add("401", "The API token is missing or wrong");
                    }
                    if has_params || has_body {
                        add("400", "A parameter or the body could not be read");
                    }
                    if has_path_param {
                        add("404", "Not found");
                    }
                    if has_body {
                        add("413", "The body is larger than 1 MiB");
                        add("422", "A field is invalid; `errors` names each");
                    }
                }
            }
        }
        // A body whose every field is optional may be left out (an empty body reads as `{}`).
        let optional_body = |doc: &serde_json::Value, op: &serde_json::Value| {
            let Some(name) = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
            else {
                return false;
            };
            doc["components"]["schemas"][name]["required"]
                .as_array()
                .is_none_or(|r| r.is_empty())
        };
        let paths: Vec<(String, String)> = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| {
                p.iter().flat_map(|(path, item)| {
                    item.as_object()
                        .into_iter()
                        .flat_map(|ops| ops.keys().map(|m| (path.clone(), m.clone())))
                })
            })
            .collect();
        for (path, method) in paths {
            if optional_body(&doc, &doc["paths"][&path][&method]) {
                doc["paths"][&path][&method]["requestBody"]["required"] = false.into();
            }
        }
        // The list's `state` filter: states separated by commas.
        if let Some(params) = doc["paths"]["/api/v1/jobs"]["get"]["parameters"].as_array_mut() {
            for p in params.iter_mut().filter(|p| p["name"] == "state") {
                p["schema"]["pattern"] = jobs::state_list_pattern().into();
            }
        }
        // Bulk retry never takes running jobs (they are cancelled first).
        let retryable: Vec<&str> = crate::queue::JobState::ALL
            .into_iter()
            .filter(|s| *s != crate::queue::JobState::Running)
            .map(crate::queue::JobState::as_str)
            .collect();
        doc["components"]["schemas"]["BulkRetryBody"]["properties"]["states"]["items"] =
            serde_json::json!({"type": "string", "enum": retryable});
        // POST /jobs: one object per documented kind, `kind` fixed, `args` that kind's schema.
        let schemas = &mut doc["components"]["schemas"];
        let body = schemas["EnqueueBody"].clone();
        let variants: Vec<serde_json::Value> = jobs::documented_kinds()
            .into_iter()
            .map(|(kind, args)| {
                let mut v = body.clone();
                v["title"] = kind.into();
                v["properties"]["kind"] = serde_json::json!({"type": "string", "enum": [kind]});
                let description = v["properties"]["args"]["description"].clone();
                v["properties"]["args"] = serde_json::json!({
                    "allOf": [{"$ref": format!("#/components/schemas/{args}")}],
                    "description": description,
                });
                // `args` may be left out when the kind needs none of its fields.
                let needs_args = schemas[args]["required"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty());
                if needs_args && let Some(required) = v["required"].as_array_mut() {
                    required.push("args".into());
                }
                v
            })
            .collect();
        schemas["EnqueueBody"] = serde_json::json!({
            "description": body["description"],
            "oneOf": variants,
        });
        *openapi = serde_json::from_value(doc).expect("the modified OpenAPI reads back");
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "offsite",
        description = "Durable job queue that gets backups off the premises. Submit jobs, \
            inspect the queue, retry or cancel jobs, pause queues and run schedules. Send the API \
            token (`api.token`, else the one offsite keeps in `<data_dir>/api-token`) as \
            `Authorization: Bearer <token>`. Every error is `application/problem+json`."
    ),
    paths(
        jobs::enqueue, jobs::list, jobs::show, jobs::retry, jobs::cancel, jobs::delete,
        jobs::bulk_retry, queues::list, queues::pause, queues::resume, schedules::list,
        schedules::run, health::health, snapshots::uploads, snapshots::run,
        snapshots::destinations, snapshots::authorize, snapshots::authorize_code,
        devices::list, devices::fetch, devices::test, devices::download, devices::diff,
        google::list, google::sync, google::files
    ),
    components(schemas(
        crate::jobs::noop::NoopArgs,
        crate::jobs::snapshot::SnapshotScanArgs,
        crate::jobs::snapshot::SnapshotUploadArgs,
        crate::jobs::retention::RetentionPruneArgs,
        crate::jobs::db_dump::DbDumpArgs,
        crate::jobs::device_fetch::DeviceFetchArgs,
        crate::jobs::google_delta::GoogleDeltaArgs,
        crate::jobs::google_delta::GoogleFileArgs
    )),
    modifiers(&BearerAuth, &Contract),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Submit and manage jobs"),
        (name = "queues", description = "Queue counts, pause and resume"),
        (name = "schedules", description = "Schedules and running them on demand"),
        (name = "backups", description = "Uploaded backups, back up now, destinations and their authorization"),
        (name = "devices", description = "Network devices' configuration backups"),
        (name = "google_drive", description = "Google Drive mirrors: state per destination, sync now, files"),
        (name = "system", description = "Health")
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("OpenAPI serializes")
        + "\n"
}

/// The API's routes: `/api/v1`, its description and the explorer (the access checks and
/// headers every answer gets are [`crate::http::serve`]'s).
pub fn router() -> Router<AppState> {
    let api = Router::new()
        .merge(jobs::router())
        .merge(queues::router())
        .merge(schedules::router())
        .merge(snapshots::router())
        .merge(devices::router())
        .merge(google::router())
        .merge(health::router());
    Router::new().nest("/api/v1", api).merge(
        SwaggerUi::new("/api/docs")
            .url("/api/v1/openapi.json", ApiDoc::openapi())
            // Offline: no spec validation by validator.swagger.io.
            .config(utoipa_swagger_ui::Config::default().validator_url("none")),
    )
}
