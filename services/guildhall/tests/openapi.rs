//! `/openapi.json` is the whole API from every process: each service of a split deployment serves
//! the monolith's document, so the one the load balancer routes it to documents every path.

mod common;

use common::{Backend, TestApp, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_the_whole_document() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let monolith = TestApp::start(Backend::Embedded).await;
    let whole = monolith.get("/openapi.json", None).await.expect(200).body;
    assert_eq!(whole, serde_json::to_value(guildhall::openapi()).expect("JSON"), "`guildhall openapi` prints what is served");
    // A path of each service, and the health endpoints.
    for path in [
        "/v1/auth/refresh",
        "/v1/leaderboards/{id}/records",
        "/v1/assets/{asset_id}",
        "/v1/chat/ws",
        "/v1/admin/webhooks/{id}/deliveries",
        "/health/ready",
    ] {
        assert!(whole["paths"].get(path).is_some(), "the document lacks {path}");
    }
    let env = TestEnv::new(Backend::Real).await.expect("env");
    for service in ["accounts", "leaderboard", "uploads", "chat", "webhooks"] {
        let mut env = env.clone();
        env.set("SERVICES", service).set("RUN_EVENT_WORKERS", "false");
        let app = TestApp::start_on(env).await;
        let served = app.get("/openapi.json", None).await.expect(200).body;
        assert!(served == whole, "SERVICES={service} serves another document");
    }
}
