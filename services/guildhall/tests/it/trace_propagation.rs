//! One trace from an HTTP request through the outbox and SQS to another service's consumer,
//! exported over OTLP to a receiver on loopback: accounts (one process) deletes an account,
//! leaderboard (another process) erases the records, and both spans share the trace the request
//! came in with. The load balancer's own header, which carries no sampling decision, is sampled;
//! an explicit `Sampled=0` is not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{ADMIN_KEY, Backend, Process, TestEnv, guest};
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

/// A span as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on a free port: its URL and what it received.
async fn receiver() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                let mut sink = sink.lock().expect("lock");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.push(Seen {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                            });
                        }
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_queue_to_the_consumer() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (endpoint, seen) = receiver().await;
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    env.set("OTEL_BSP_SCHEDULE_DELAY", "100");
    env.set("QUEUE_WAIT_SECS", "1");
    let mut accounts_env = env.clone();
    accounts_env.set("SERVICES", "accounts");
    let mut leaderboard_env = env.clone();
    leaderboard_env.set("SERVICES", "leaderboard");
    let mut accounts = Process::start(&accounts_env).await;
    let mut leaderboard = Process::start(&leaderboard_env).await;

    let (_, token) = guest(&accounts, "traced").await;
    // The trace the load balancer (or a game client) started.
    let trace_id = "5759e988bd862e3fe1be46a994272793";
    let response = accounts
        .client
        .delete(format!("{}/v1/accounts/me", accounts.base))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-53995c3f42cd8ad8-01"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 204);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (request, consumed) = loop {
        {
            let spans = seen.lock().expect("lock");
            let request = spans.iter().find(|s| s.name == "DELETE /v1/accounts/me").cloned();
            let consumed = spans.iter().find(|s| s.name == "leaderboard consume account.deleted").cloned();
            let published = spans.iter().any(|s| s.name == "publish account.deleted") && spans.iter().any(|s| s.name == "SQS.SendMessage");
            if let (Some(request), Some(consumed), true) = (request, consumed, published) {
                break (request, consumed);
            }
        }
        assert!(std::time::Instant::now() < deadline, "spans seen: {:?}", seen.lock().expect("lock"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(request.trace_id, trace_id, "the request joined the incoming trace");
    assert_eq!(request.parent_span_id, "53995c3f42cd8ad8");
    assert_eq!(request.service, "guildhall-accounts");
    assert_eq!(consumed.trace_id, trace_id, "the consumer in another process joined it through the outbox and SQS");
    // The consumer's parent is the span that recorded the event: the request's, or one inside it
    // (the handler's).
    let spans = seen.lock().expect("lock").clone();
    let mut ancestor = consumed.parent_span_id.clone();
    while ancestor != request.span_id {
        let parent =
            spans.iter().find(|s| s.span_id == ancestor).unwrap_or_else(|| panic!("{ancestor} is not under the request: {spans:?}"));
        ancestor = parent.parent_span_id.clone();
    }
    assert_eq!(consumed.service, "guildhall-leaderboard");
    // The relay's publish and its SQS call are in the trace too, between the two; idle long
    // polls make no traces.
    for name in ["publish account.deleted", "SQS.SendMessage"] {
        assert!(spans.iter().any(|s| s.name == name && s.trace_id == trace_id), "{name} in the trace: {spans:?}");
    }
    assert!(!spans.iter().any(|s| s.name == "SQS.ReceiveMessage"), "{spans:?}");
    // Database and Redis work are child spans: the deletion in the request, the erasure in the
    // consumer.
    let child_of = |name: &str, parent: &Seen| spans.iter().any(|s| s.name == name && s.parent_span_id == parent.span_id);
    let handler = spans.iter().find(|s| s.name == "delete_me" && s.parent_span_id == request.span_id).expect("the handler's span");
    assert!(child_of("db accounts.delete_account", handler), "{spans:?}");
    assert!(child_of("db leaderboard.erase_owner", &consumed), "{spans:?}");
    assert!(accounts.terminate().await.success());
    assert!(leaderboard.terminate().await.success());
}

/// The receiver's spans, once `done` holds for them (30 s at most).
async fn spans_until(seen: &Arc<Mutex<Vec<Seen>>>, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        {
            let spans = seen.lock().expect("lock");
            if done(&spans) {
                return spans.clone();
            }
        }
        assert!(std::time::Instant::now() < deadline, "spans seen: {:?}", seen.lock().expect("lock"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ALB starts a trace for every request and says so in `X-Amzn-Trace-Id: Root=...`, with no
/// `Parent` (it sends no segment of its own) and no `Sampled` (it leaves the decision to the
/// target). That request is sampled, keeps the ALB's trace id (the one in its access log), and the
/// event it records is consumed in the same trace. A caller's explicit `Sampled=0` is honoured
/// through to the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancers_header_is_sampled_through_to_the_consumer() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (endpoint, seen) = receiver().await;
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    env.set("OTEL_BSP_SCHEDULE_DELAY", "100");
    env.set("QUEUE_WAIT_SECS", "1");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    let mut accounts_env = env.clone();
    accounts_env.set("SERVICES", "accounts");
    let mut leaderboard_env = env.clone();
    leaderboard_env.set("SERVICES", "leaderboard");
    let mut accounts = Process::start(&accounts_env).await;
    let mut leaderboard = Process::start(&leaderboard_env).await;
    leaderboard
        .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "traced", "sort": "desc", "operator": "best"}))
        .await
        .expect(201);

    // First a caller that decided against sampling: its deletion and erasure export nothing.
    let declined_trace = "5759e9880123456789abcdef01234567";
    let (declined, token) = guest(&accounts, "declined").await;
    leaderboard.post("/v1/leaderboards/traced/scores", Some(&token), json!({"score": 1})).await.expect(200);
    let response = accounts
        .client
        .delete(format!("{}/v1/accounts/me", accounts.base))
        .bearer_auth(&token)
        .header("X-Amzn-Trace-Id", "Root=1-5759e988-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=0")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 204);
    // Erased: the leaderboard consumed the event.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = leaderboard.get(&format!("/v1/leaderboards/traced/records?owner_ids={declined}"), Some(ADMIN_KEY)).await.expect(200);
        if listed.body["records"].as_array().expect("records").is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the declined player's record was never erased");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Then a request as the ALB forwards it, byte for byte.
    let (_, token) = guest(&accounts, "balanced").await;
    let trace_id = "5759e988bd862e3fe1be46a994272793";
    let response = accounts
        .client
        .delete(format!("{}/v1/accounts/me", accounts.base))
        .bearer_auth(&token)
        .header("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 204);
    // Both spans, and every span between them (exported in batches, so not all at once).
    let spans = spans_until(&seen, |spans| {
        let find = |name: &str| spans.iter().find(|s| s.name == name);
        let (Some(request), Some(consumed)) = (find("DELETE /v1/accounts/me"), find("leaderboard consume account.deleted")) else {
            return false;
        };
        let mut ancestor = consumed.parent_span_id.as_str();
        while ancestor != request.span_id {
            match spans.iter().find(|s| s.span_id == ancestor) {
                Some(parent) => ancestor = &parent.parent_span_id,
                None => return false,
            }
        }
        true
    })
    .await;
    let request = spans.iter().find(|s| s.name == "DELETE /v1/accounts/me").expect("the request's span");
    let consumed = spans.iter().find(|s| s.name == "leaderboard consume account.deleted").expect("the consumer's span");
    assert_eq!(request.trace_id, trace_id, "the request is in the ALB's trace: {spans:?}");
    assert!(request.parent_span_id.is_empty(), "the ALB sends no segment, so the request is the trace's root: {request:?}");
    assert_eq!(consumed.trace_id, trace_id, "the consumer is in it too, under the request: {spans:?}");
    // Nothing of the declined trace: neither its request nor its erasure, which finished before
    // this request was sent (spans are exported every 100 ms).
    assert!(!spans.iter().any(|s| s.trace_id == declined_trace), "{spans:?}");
    assert_eq!(spans.iter().filter(|s| s.name == "DELETE /v1/accounts/me").count(), 1, "{spans:?}");
    assert_eq!(spans.iter().filter(|s| s.name == "leaderboard consume account.deleted").count(), 1, "{spans:?}");
    assert!(accounts.terminate().await.success());
    assert!(leaderboard.terminate().await.success());
}
