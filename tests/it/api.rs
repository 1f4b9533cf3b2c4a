//! Every route of the HTTP API over a real socket, its error answers, the bearer token, and
//! the committed OpenAPI description.

use std::time::Duration;

use offsite::queue::JobState;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::common::{Harness, json_of};

/// Sends the request; answers status, content type and the body as JSON (Null if not JSON).
async fn call(req: reqwest::RequestBuilder) -> (StatusCode, String, Value) {
    body(req.send().await.unwrap()).await
}

async fn body(r: reqwest::Response) -> (StatusCode, String, Value) {
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn assert_problem(ct: &str, v: &Value, status: u16, slug: &str) {
    assert_eq!(ct, "application/problem+json");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["type"], format!("urn:offsite:problem:{slug}"), "{v}");
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
}

async fn wait_api_state(c: &Client, base: &str, id: i64, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, v) = call(c.get(format!("{base}/api/v1/jobs/{id}"))).await;
        if v["state"] == state {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never became {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn submit_show_list_and_dedupe() {
    let h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();
    let submit =
        json!({"kind": "noop", "args": {"steps": 1}, "idempotency_key": "api-1", "priority": 1});
    let (status, _, v) = call(c.post(format!("{base}/api/v1/jobs")).json(&submit)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["deduplicated"], false);
    let id = v["job"]["id"].as_i64().unwrap();
    assert_eq!(v["job"]["priority"], 1);
    assert_eq!(v["job"]["args"], json!({"steps": 1, "step_ms": 0}));

    let (status, _, v) = call(c.post(format!("{base}/api/v1/jobs")).json(&submit)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["deduplicated"], true);
    assert_eq!(v["job"]["id"], id);

    let done = wait_api_state(&c, &base, id, "completed").await;
    assert_eq!(done["attempts"][0]["outcome"], "completed");
    assert_eq!(done["checkpoint"]["step"], 1);

    for _ in 0..4 {
        c.post(format!("{base}/api/v1/jobs"))
            .json(&json!({"kind": "probe", "args": {"mode": "permanent"}}))
            .send()
            .await
            .unwrap();
    }
    let (status, _, page1) = call(c.get(format!("{base}/api/v1/jobs?limit=3"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page1["jobs"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap().to_string();
    let (_, _, page2) = call(c.get(format!("{base}/api/v1/jobs?limit=3&cursor={cursor}"))).await;
    let ids: Vec<i64> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["jobs"].as_array().unwrap())
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first without overlap: {ids:?}"
    );
    assert!(page2["next_cursor"].is_null());

    let (_, _, noops) = call(c.get(format!("{base}/api/v1/jobs?kind=noop&state=completed"))).await;
    assert_eq!(noops["jobs"].as_array().unwrap().len(), 1);
    let (_, _, q) = call(c.get(format!("{base}/api/v1/jobs?queue=other"))).await;
    assert!(q["jobs"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_gets_problem_answers_and_stores_nothing() {
    let h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();
    let post = |b: &'static str| {
        c.post(format!("{base}/api/v1/jobs"))
            .header("content-type", "application/json")
            .body(b)
            .send()
    };

    let (s, ct, v) = body(post("{\"kind\": \"noop\"").await.unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_problem(&ct, &v, 400, "bad-request");
    assert!(v["detail"].as_str().unwrap().contains("malformed JSON"));

    let (s, ct, v) = body(
        post("{\"kind\": \"noop\", \"args\": {\"steps\": \"x\"}}")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem(&ct, &v, 422, "validation");
    assert_eq!(v["errors"][0]["field"], "args.steps");

    let (s, _, v) = body(post("{\"kind\": \"teleport\"}").await.unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "kind");

    let (s, _, v) = body(post("{\"args\": {}}").await.unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains("kind"),
        "{v}"
    );

    let (s, _, v) = body(post("{\"kind\": \"noop\", \"priority\": 7}").await.unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "priority");

    let (s, _, v) = body(
        post("{\"kind\": \"noop\", \"run_at\": \"tomorrow\"}")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "run_at");

    let (s, _, _) = call(
        c.post(format!("{base}/api/v1/jobs"))
            .header("content-type", "text/plain")
            .body("{\"kind\":\"noop\"}"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let big = format!(
        "{{\"kind\": \"noop\", \"args\": {{\"pad\": \"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    let (s, ct, v) = call(
        c.post(format!("{base}/api/v1/jobs"))
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_problem(&ct, &v, 413, "payload-too-large");

    let (s, _, v) = call(c.get(format!("{base}/api/v1/jobs?state=bogus"))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "state");
    let (s, _, v) = call(c.get(format!("{base}/api/v1/jobs?limit=0"))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "limit");

    let (_, _, list) = call(c.get(format!("{base}/api/v1/jobs"))).await;
    assert!(
        list["jobs"].as_array().unwrap().is_empty(),
        "nothing was stored: {list}"
    );

    let (s, ct, v) = call(c.get(format!("{base}/api/v1/jobs/999"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_problem(&ct, &v, 404, "not-found");
    let (s, _, _) = call(c.get(format!("{base}/api/v1/jobs/abc"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, ct, v) = call(c.get(format!("{base}/api/v1/nothing-here"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_problem(&ct, &v, 404, "not-found");
}

#[tokio::test]
async fn retry_cancel_delete_and_their_conflicts() {
    let mut h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();

    let failed = h.probe("permanent", 0).await;
    h.wait_state(failed.id, JobState::Discarded).await;
    let (s, _, v) = call(c.post(format!("{base}/api/v1/jobs/{}/retry", failed.id))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "available");
    assert_eq!(v["max_attempts"], 3);
    let again = wait_api_state(&c, &base, failed.id, "discarded").await;
    assert_eq!(again["attempts"].as_array().unwrap().len(), 2);
    let (s, _, _) = call(
        c.post(format!("{base}/api/v1/jobs/{}/retry", failed.id))
            .json(&json!({"reset_checkpoint": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, v) = call(
        c.post(format!("{base}/api/v1/jobs/{}/retry", failed.id))
            .json(&json!({"reset": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    let running = h.probe("block", 0).await;
    h.event(running.id, "started").await;
    let (s, ct, v) = call(c.post(format!("{base}/api/v1/jobs/{}/retry", running.id))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_problem(&ct, &v, 409, "conflict");
    let (s, _, _) = call(c.delete(format!("{base}/api/v1/jobs/{}", running.id))).await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (s, _, v) = call(c.post(format!("{base}/api/v1/jobs/{}/cancel", running.id))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["cancel_requested"], true);
    wait_api_state(&c, &base, running.id, "cancelled").await;
    let (s, _, _) = call(c.post(format!("{base}/api/v1/jobs/{}/cancel", running.id))).await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (s, _, _) = call(c.delete(format!("{base}/api/v1/jobs/{}", running.id))).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = call(c.get(format!("{base}/api/v1/jobs/{}", running.id))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for path in ["retry", "cancel"] {
        let (s, _, _) = call(c.post(format!("{base}/api/v1/jobs/777/{path}"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, _, _) = call(c.delete(format!("{base}/api/v1/jobs/777"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.stop().await;
}

#[tokio::test]
async fn bulk_retry_returns_the_count() {
    let h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();
    let a = h.probe("permanent", 0).await;
    let b = h.probe("permanent", 0).await;
    h.wait_state(a.id, JobState::Discarded).await;
    h.wait_state(b.id, JobState::Discarded).await;
    let (s, _, v) = call(
        c.post(format!("{base}/api/v1/jobs/retry"))
            .json(&json!({"kind": "probe"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["count"], 2);
    let (s, _, v) = call(
        c.post(format!("{base}/api/v1/jobs/retry"))
            .json(&json!({"states": ["running"]})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "states");
}

#[tokio::test]
async fn queues_pause_and_resume() {
    let h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();
    let (s, _, v) = call(c.post(format!("{base}/api/v1/queues/other/pause"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["paused"], true);
    let (_, _, v) = call(
        c.post(format!("{base}/api/v1/jobs"))
            .json(&json!({"kind": "noop", "queue": "other"})),
    )
    .await;
    let id = v["job"]["id"].as_i64().unwrap();
    let (_, _, queues) = call(c.get(format!("{base}/api/v1/queues"))).await;
    let other = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "other")
        .unwrap()
        .clone();
    assert_eq!(other["paused"], true);
    assert_eq!(other["concurrency"], 2);
    assert_eq!(other["counts"]["available"], 1);
    assert_eq!(other["counts"]["discarded"], 0);
    let (s, _, v) = call(c.post(format!("{base}/api/v1/queues/other/resume"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["paused"], false);
    wait_api_state(&c, &base, id, "completed").await;
    let (s, _, _) = call(c.post(format!("{base}/api/v1/queues/nope/pause"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn schedules_list_and_run_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(dir.path());
    std::fs::create_dir_all(&config.jobs_dir).unwrap();
    std::fs::write(config.jobs_dir.join("tick.toml"), "kind = \"noop\"\n[schedule]\nweekdays = [\"mon\", \"thu\"]\nat = \"02:15\"\ntimezone = \"Europe/Berlin\"\n").unwrap();
    config.timezone = Some("UTC".into());
    let services = crate::common::services(&config);
    let (registry, _events) = crate::common::registry_with(&config, services.clone());
    let setup = offsite::app::Setup::with(config, registry, services).unwrap();
    let running = offsite::app::start(setup).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let c = Client::new();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let list = loop {
        let (s, _, v) = call(c.get(format!("{base}/api/v1/schedules"))).await;
        assert_eq!(s, StatusCode::OK);
        if !v[0]["next_run_at"].is_null() || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(list[0]["name"], "tick");
    assert_eq!(list[0]["when"], "Mon, Thu at 02:15 (Europe/Berlin)");
    assert!(
        list[0]["next_run_at"]
            .as_str()
            .unwrap()
            .contains("T01:15:00"),
        "{list}"
    );

    let (s, _, v) = call(c.post(format!("{base}/api/v1/schedules/tick/run"))).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = v["job"]["id"].as_i64().unwrap();
    wait_api_state(&c, &base, id, "completed").await;
    let (_, _, list) = call(c.get(format!("{base}/api/v1/schedules"))).await;
    assert_eq!(list[0]["last_job_id"], id);
    let (s, _, _) = call(c.post(format!("{base}/api/v1/schedules/none/run"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    running.shutdown().await;
}

#[tokio::test]
async fn health_metrics_openapi_and_explorer() {
    let h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();
    let (s, _, v) = call(c.get(format!("{base}/api/v1/health"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["instance_id"], "test-worker");

    let job = h.probe("ok", 0).await;
    h.wait_state(job.id, JobState::Completed).await;
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("offsite_jobs{queue=\"default\",state=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("offsite_job_attempts_total{kind=\"probe\",outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("offsite_job_attempt_duration_seconds_count{kind=\"probe\"} 1"),
        "{metrics}"
    );

    let spec: Value = json_of(c.get(format!("{base}/api/v1/openapi.json"))).await;
    assert!(spec["paths"]["/api/v1/jobs/{id}/retry"]["post"].is_object());
    let page = c.get(format!("{base}/api/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "explorer page is served");
    assert!(
        !html.contains("https://"),
        "the explorer loads nothing from a CDN"
    );
    // Offline: the explorer never asks validator.swagger.io to check the description, and
    // its page policy would not let it.
    let init = c
        .get(format!("{base}/api/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    let page = c.get(format!("{base}/api/docs/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("connect-src 'self'") && csp.contains("img-src 'self' data:"));
    let js = c
        .get(format!("{base}/api/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        js.status(),
        StatusCode::OK,
        "the explorer's script is served locally"
    );
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let token = "s3cret-token-for-tests-only";
    let h = Harness::start_with(|c| {
        c.api.token = Some(offsite::config::Secret::new(token));
        c.api.trust_loopback = false;
    })
    .await;
    let base = h.base_url();
    let c = Client::new();
    let r = c.get(format!("{base}/api/v1/jobs")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let (s, ct, v) = body(r).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_problem(&ct, &v, 401, "unauthorized");
    assert!(!v.to_string().contains(token));
    let (s, _, _) = call(
        c.get(format!("{base}/api/v1/jobs"))
            .bearer_auth("wrong-token-wrong-token"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(c.get(format!("{base}/metrics"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(c.get(format!("{base}/api/v1/jobs")).bearer_auth(token)).await;
    assert_eq!(s, StatusCode::OK);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let (s, _, _) = call(
            c.get(format!("{base}/api/v1/jobs"))
                .header("authorization", format!("{scheme} {token}")),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{scheme}");
    }
    let (s, _, _) = call(c.get(format!("{base}/api/v1/health"))).await;
    assert_eq!(s, StatusCode::OK, "health stays open for watchdogs");
}

#[test]
fn committed_openapi_matches_the_code() {
    let generated = offsite::api::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    if std::env::var_os("OFFSITE_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date: run `OFFSITE_UPDATE_OPENAPI=1 cargo test --test it committed_openapi` \
         (or `offsite openapi > openapi/openapi.json`) and commit it"
    );
}

#[tokio::test]
async fn allow_from_refuses_other_client_addresses() {
    let h = Harness::start_with(|c| c.api.allow_from = vec!["172.30.32.2".parse().unwrap()]).await;
    let r = Client::new()
        .get(format!("{}/api/v1/jobs", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let h = Harness::start_with(|c| c.api.allow_from = vec!["127.0.0.1".parse().unwrap()]).await;
    let r = Client::new()
        .get(format!("{}/api/v1/jobs", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_kept_owner_only_and_required() {
    let h = Harness::start_with(|c| c.api.trust_loopback = false).await;
    let base = h.base_url();
    let file = h.data_dir().join("api-token");
    let token = std::fs::read_to_string(&file).expect("the token is kept in the data dir");
    assert!(token.len() >= 32, "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "owner-only");
    }
    let c = Client::new();
    // From this machine, without the token: nothing that reads job data or changes state.
    for (method, path) in [
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/uploads"),
        ("POST", "/api/v1/snapshots/run"),
        ("GET", "/metrics"),
    ] {
        let req = c.request(method.parse().unwrap(), format!("{base}{path}"));
        let (s, ct, v) = call(req).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_problem(&ct, &v, 401, "unauthorized");
        assert!(!v.to_string().contains(&token), "the answer never shows it");
    }
    let (s, _, _) = call(c.get(format!("{base}/api/v1/jobs")).bearer_auth(&token)).await;
    assert_eq!(s, StatusCode::OK);

    // A restart keeps the same token.
    let dir = {
        let mut h = h;
        h.stop().await;
        h.dir
    };
    let config = {
        let mut c = crate::common::test_config(dir.path());
        c.api.trust_loopback = false;
        c
    };
    let h = Harness::start_in(dir, config).await;
    let (s, _, _) = call(
        c.get(format!("{}/api/v1/jobs", h.base_url()))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "the kept token still works");
}

#[tokio::test]
async fn every_refusal_is_a_problem_naming_what_is_wrong() {
    let h = Harness::start().await;
    let base = h.base_url();
    let c = Client::new();
    // The framework's own refusals: a query, a path, a method.
    for (method, path, status) in [
        ("GET", "/api/v1/uploads?include_deleted=1", 400),
        ("GET", "/api/v1/jobs?state=available&state=running", 400),
        ("POST", "/api/v1/queues/%ff/pause", 400),
        ("PUT", "/api/v1/jobs", 405),
        ("DELETE", "/api/v1/jobs/retry", 405),
        ("GET", "/api/v1/no-such-route", 404),
    ] {
        let (s, ct, v) = call(c.request(method.parse().unwrap(), format!("{base}{path}"))).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {v}");
        assert_eq!(ct, "application/problem+json", "{method} {path}");
        assert_eq!(v["status"], status, "{method} {path}: {v}");
        assert!(
            !v["detail"].as_str().unwrap_or("").is_empty(),
            "{method} {path}: {v}"
        );
    }
    let (_, _, v) = call(c.get(format!("{base}/api/v1/uploads?include_deleted=1"))).await;
    assert!(
        v["detail"].as_str().unwrap().contains("include_deleted"),
        "names the parameter: {v}"
    );

    let post = |b: String| {
        c.post(format!("{base}/api/v1/jobs"))
            .header("content-type", "application/json")
            .body(b)
    };
    let (s, ct, v) = call(post("{\"kind\":\"noop\"} trailing-garbage".into())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_problem(&ct, &v, 400, "bad-request");
    let (s, _, _) = call(post("{\"kind\":\"noop\"}  \n".into())).await;
    assert_eq!(s, StatusCode::CREATED, "whitespace after the value is fine");

    let (s, ct, v) = call(
        c.post(format!("{base}/api/v1/jobs/retry"))
            .header("content-type", "application/json")
            .body("{\"states\":[{}]}"),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_problem(&ct, &v, 422, "validation");
    assert!(
        v["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("states"),
        "{v}"
    );

    // Found by the contract check: what the description rules out is refused.
    let (s, _, v) = call(
        c.post(format!("{base}/api/v1/jobs/1/retry"))
            .header("content-type", "application/json")
            .body("[]"),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an array is not the body: {v}"
    );
    for query in [
        "cursor=0",
        "cursor=",
        "state=available,%20running",
        "state=available,",
    ] {
        let (s, _, v) = call(c.get(format!("{base}/api/v1/jobs?{query}"))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {v}");
    }

    // 255 characters, 510 bytes: allowed; 256 characters: refused.
    let key = |n: usize| "é".repeat(n);
    let (s, _, v) = call(post(
        json!({"kind": "noop", "idempotency_key": key(255)}).to_string(),
    ))
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _, v) = call(post(
        json!({"kind": "noop", "idempotency_key": key(256)}).to_string(),
    ))
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"][0]["field"], "idempotency_key");

    for run_at in ["-0001-01-01T00:00:00Z", "0000-06-01T00:00:00Z"] {
        let (s, _, v) = call(post(json!({"kind": "noop", "run_at": run_at}).to_string())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{run_at}: {v}");
        assert_eq!(v["errors"][0]["field"], "run_at", "{v}");
    }
}

#[tokio::test]
async fn authorizing_while_dropbox_is_unreachable_is_a_bad_gateway() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let h = Harness::start_with(|c| {
        let dest: offsite::config::DestinationConfig = toml::from_str(&format!(
            "type = \"dropbox\"\npath = \"/Backups\"\napp_key = \"key\"\n\
             api_url = \"{dead}\"\ncontent_url = \"{dead}\"\n\
             authorize_url = \"{dead}/oauth2/authorize\"\n"
        ))
        .unwrap();
        c.destinations.insert("dropbox".into(), dest);
    })
    .await;
    let base = h.base_url();
    let c = Client::new();
    let (s, _, v) = call(c.post(format!("{base}/api/v1/destinations/dropbox/authorize"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, ct, v) = call(
        c.post(format!("{base}/api/v1/destinations/dropbox/authorize/code"))
            .json(&json!({"code": "any-code"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_problem(&ct, &v, 502, "bad-gateway");
    assert!(v["detail"].as_str().unwrap().contains("Dropbox"), "{v}");
}

#[tokio::test]
async fn the_callback_page_shows_no_text_from_the_link_and_has_the_page_headers() {
    let h = Harness::start_with(|c| c.api.trust_loopback = false).await;
    let planted = "Call +1-555-0100 to restore your backups";
    let r = Client::new()
        .get(format!("{}/callback", h.base_url()))
        .query(&[("error", "access_denied"), ("error_description", planted)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let headers = r.headers().clone();
    let page = r.text().await.unwrap();
    assert!(page.contains("not granted"), "{page}");
    assert!(
        !page.contains("555-0100"),
        "attacker text is not shown: {page}"
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
}

/// The description says what the server does: errors as problem details, 401 wherever the
/// token is needed, the refusals a route can give, unique operation ids, and `POST /jobs` as
/// one schema per kind so a client can be generated.
#[test]
fn the_description_declares_problems_401s_and_each_kinds_args() {
    let doc: Value = serde_json::from_str(&offsite::api::openapi_json()).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_string()), "operationId {id} is not unique");
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                let content = r["content"].as_object();
                let problem = content
                    .into_iter()
                    .flatten()
                    .any(|(_, c)| c["schema"]["$ref"] == "#/components/schemas/Problem");
                if status.as_str() >= "400" && problem {
                    assert_eq!(
                        content.unwrap().keys().collect::<Vec<_>>(),
                        ["application/problem+json"],
                        "{method} {path} {status}"
                    );
                }
            }
            if path != "/api/v1/health" {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} declares 401"
                );
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "422"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
        }
    }
    let body = &doc["components"]["schemas"]["EnqueueBody"];
    let kinds: Vec<&str> = body["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["properties"]["kind"]["enum"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "noop",
            "snapshot_scan",
            "snapshot_upload",
            "retention_prune",
            "db_dump"
        ]
    );
    let scan = &body["oneOf"][1];
    assert_eq!(
        scan["properties"]["args"]["allOf"][0]["$ref"],
        "#/components/schemas/SnapshotScanArgs"
    );
    assert!(
        doc["components"]["schemas"]["SnapshotScanArgs"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("destinations"))
    );
}
