//! `/openapi.json` is the whole API from every process: each service of a split deployment serves
//! the monolith's document, so the one the load balancer routes it to documents every path.

use crate::common::{ADMIN_KEY, Backend, TestApp, TestEnv};

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
        "/v1/friends/{account_id}",
        "/v1/blocks",
        "/v1/leaderboards/{id}/records",
        "/v1/assets/{asset_id}",
        "/v1/chat/ws",
        "/v1/notifications",
        "/v1/chat/conversations",
        "/v1/admin/webhooks/{id}/deliveries",
        "/health/ready",
    ] {
        assert!(whole["paths"].get(path).is_some(), "the document lacks {path}");
    }
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    // The admin paths each service serves, as the ALB's rules and compose's proxy send them
    // (ecs/cloudformation/guildhall.yaml, docker/proxy.conf): the account view's parts go to the
    // services that hold them.
    let account = "/v1/admin/accounts/0193aaaa-0000-7000-8000-000000000000";
    let records = format!("{account}/records");
    let sanctions = format!("{account}/sanctions");
    let admin_paths: [(&str, Vec<&str>); 5] = [
        ("accounts", vec!["/v1/admin/accounts", account, "/v1/admin/keys", "/v1/admin/audit", "/v1/friends", "/v1/blocks"]),
        ("leaderboard", vec!["/v1/leaderboards", &records]),
        ("uploads", vec!["/v1/admin/assets"]),
        ("chat", vec![&sanctions, "/v1/notifications"]),
        ("webhooks", vec!["/v1/admin/webhooks"]),
    ];
    for (service, _) in &admin_paths {
        let mut env = env.clone();
        env.set("SERVICES", *service).set("RUN_EVENT_WORKERS", "false");
        let app = TestApp::start_on(env).await;
        let served = app.get("/openapi.json", None).await.expect(200).body;
        assert!(served == whole, "SERVICES={service} serves another document");
        for (other, others) in &admin_paths {
            for path in others {
                let reply = app.get(path, Some(ADMIN_KEY)).await;
                let unrouted = reply.status == 404 && reply.body["error"]["message"] == "no such endpoint";
                assert_eq!(!unrouted, other == service, "SERVICES={service}: GET {path} ({} {})", reply.status, reply.body);
            }
        }
    }
}
