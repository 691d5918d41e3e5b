//! Clients of a group of controllers (`--controller URL,URL,...`): the pointer read from every
//! member at once, and the watcher following whichever member moves. The members here are
//! in-test servers serving `GET /v1/active-region` from a real [`Pointer`] cell (long-poll
//! included), optionally marking their answers stale or refusing the token.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use common::members::ControllerUrls;
use controller::client::HttpClient;
use controller::pointer::{Pointer, PointerValue, WatchError, WatchOptions, read_newest};
use tokio::net::TcpListener;

/// How a fake member answers.
#[derive(Clone)]
struct Member {
    pointer: Pointer,
    stale: Option<&'static str>,
    refuse: bool,
}

/// A query parameter's number, if given.
fn parameter(uri: &Uri, name: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

async fn active_region(State(member): State<Arc<Member>>, uri: Uri) -> impl IntoResponse {
    if member.refuse {
        return (StatusCode::UNAUTHORIZED, "{\"error\":\"token\"}".to_string());
    }
    let value = match parameter(&uri, "wait_generation") {
        Some(seen) => {
            member
                .pointer
                .wait_past(seen, parameter(&uri, "timeout_ms").unwrap_or(0))
                .await
        }
        None => member.pointer.get(),
    };
    let mut document = serde_json::to_value(&value).expect("serialize");
    if let Some(why) = member.stale {
        document["stale"] = why.into();
    }
    (StatusCode::OK, document.to_string())
}

/// Starts a member; returns its URL and its pointer cell.
async fn member(stale: Option<&'static str>, refuse: bool) -> (String, Pointer) {
    let pointer = Pointer::new(PointerValue::default());
    let state = Arc::new(Member {
        pointer: pointer.clone(),
        stale,
        refuse,
    });
    let app = Router::new()
        .route("/v1/active-region", axum::routing::get(active_region))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, pointer)
}

/// A URL nothing listens on (a member that is down).
async fn down() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    url
}

fn members(urls: &[&str]) -> ControllerUrls {
    ControllerUrls::parse(&urls.join(",")).expect("member URLs")
}

#[tokio::test]
async fn the_newest_fresh_answer_wins_and_stale_or_missing_members_are_named() {
    let client = HttpClient::new();
    let dead = down().await;
    let (stale, stale_pointer) = member(Some("has not reached etcd for 9 s"), false).await;
    stale_pointer.publish("eu-west-1", 9).expect("publish");
    let (older, older_pointer) = member(None, false).await;
    older_pointer.publish("us-east-1", 7).expect("publish");
    let (newer, newer_pointer) = member(None, false).await;
    newer_pointer.publish("eu-west-1", 8).expect("publish");

    let value = read_newest(&client, &members(&[&dead, &stale, &older, &newer]), None, 2_000)
        .await
        .expect("a fresh answer");
    assert_eq!(
        value,
        PointerValue {
            region: Some("eu-west-1".into()),
            generation: 8
        },
        "the newest answer not marked stale (the stale member's 9 does not count)"
    );

    let error = read_newest(&client, &members(&[&dead, &stale]), None, 2_000)
        .await
        .expect_err("no fresh answer");
    assert_eq!(error.members.len(), 2, "{error}");
    assert!(error.to_string().contains(&dead), "{error}");
    assert!(
        error
            .to_string()
            .contains("the pointer may be stale: has not reached etcd"),
        "{error}"
    );
    assert_eq!(error.refused, None);

    let (refusing, _) = member(None, true).await;
    let error = read_newest(&client, &members(&[&refusing]), None, 2_000)
        .await
        .expect_err("refused");
    assert_eq!(error.refused, Some(401), "{error}");
    assert!(error.to_string().contains("refused the token"), "{error}");
    let value = read_newest(&client, &members(&[&refusing, &newer]), None, 2_000)
        .await
        .expect("another member answers");
    assert_eq!(value.generation, 8);
}

/// The generation the watcher's env file records.
fn env_generation(path: &std::path::Path) -> u64 {
    controller::pointer::applied_generation(path)
}

#[tokio::test]
async fn the_watcher_follows_whichever_member_moves_with_the_first_one_down_and_another_stale() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env_file = dir.path().join("active-region.env");
    let dead = down().await;
    let (stale, stale_pointer) = member(Some("has not reached etcd for 9 s"), false).await;
    stale_pointer.publish("us-east-1", 1).expect("publish");
    let (fresh, fresh_pointer) = member(None, false).await;
    fresh_pointer.publish("us-east-1", 1).expect("publish");
    let options = WatchOptions {
        controllers: members(&[&dead, &stale, &fresh]),
        token: None,
        env_file: env_file.clone(),
        exec: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(controller::pointer::watch(options, async {
        let _ = stopped.await;
    }));
    crate::wait_for("generation 1 in the env file", 10_000, || {
        env_generation(&env_file) == 1
    })
    .await;
    // Only the fresh member moves; the stale one keeps naming us-east-1 and holds its polls.
    fresh_pointer.publish("eu-west-1", 2).expect("publish");
    crate::wait_for("generation 2 in the env file", 10_000, || {
        env_generation(&env_file) == 2
    })
    .await;
    let text = std::fs::read_to_string(&env_file).expect("env file");
    assert!(text.contains("SWITCHYARD_ACTIVE_REGION=eu-west-1"), "{text}");
    assert!(text.contains("AWS_REGION=eu-west-1"), "{text}");
    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watch stops on shutdown")
        .expect("join");
    assert!(ended.is_ok(), "{ended:?}");
}

#[tokio::test]
async fn a_token_refused_by_every_member_ends_the_watch_and_by_one_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (refusing, _) = member(None, true).await;
    let (also_refusing, _) = member(None, true).await;
    let options = WatchOptions {
        controllers: members(&[&refusing, &also_refusing]),
        token: Some("wrong".into()),
        env_file: dir.path().join("all-refuse.env"),
        exec: None,
    };
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        controller::pointer::watch(options, std::future::pending()),
    )
    .await
    .expect("the watch ends");
    assert!(matches!(ended, Err(WatchError::Unauthorized(401))), "{ended:?}");

    let (fresh, fresh_pointer) = member(None, false).await;
    fresh_pointer.publish("eu-west-1", 4).expect("publish");
    let env_file = dir.path().join("one-refuses.env");
    let options = WatchOptions {
        controllers: members(&[&refusing, &fresh]),
        token: Some("wrong".into()),
        env_file: env_file.clone(),
        exec: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(controller::pointer::watch(options, async {
        let _ = stopped.await;
    }));
    crate::wait_for("generation 4 from the member that takes the token", 10_000, || {
        env_generation(&env_file) == 4
    })
    .await;
    assert!(!watcher.is_finished(), "one refusing member does not end the watch");
    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("stops")
        .expect("join");
    assert!(ended.is_ok(), "{ended:?}");
}
