//! `digitalocean_db_promote` against an in-test fake of DigitalOcean's Managed Databases API:
//! DigitalOcean has no local server, so the fake follows the documented requests and answers —
//! `GET /v2/databases/{uuid}/replicas/{name}` (`{"replica": {"id", "name", "region", "status",
//! ...}}`, 404 `{"id": "not_found", ...}` once it is not a replica of that cluster),
//! `PUT /v2/databases/{uuid}/replicas/{name}/promote` (204, no body), `GET /v2/databases/{uuid}`
//! (`{"database": {"id", "name", "engine", "status", ...}}`) and `Authorization: Bearer` (401
//! `{"id": "unauthorized", ...}`). What the fake cannot know from the documentation: which
//! status a promoted replica shows before it is `online` (the fake says `creating` for a few
//! polls), and that it keeps the replica's id as its cluster id (DigitalOcean's replica object
//! carries an `id`; the step reads the promoted cluster by it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::common::{assert_refused, check_settings};
use crate::fake::{self, Collect, Request, answer, digitalocean_error as error, order, token_file};
use providers::Failure;

const TOKEN: &str = "dop_v1_db_token_for_tests";
const SOURCE: &str = "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30";
const US_ID: &str = "5e8c2a7b-1d2e-4c3f-8a9b-0c1d2e3f4a5b";
const AP_ID: &str = "6f9d3b8c-2e3f-4d40-9bac-1d2e3f4a5b6c";

#[derive(Clone)]
struct Replica {
    id: String,
    region: String,
    status: String,
}

#[derive(Default)]
struct Account {
    /// Replicas of the source cluster, by name.
    replicas: BTreeMap<String, Replica>,
    /// Clusters by id: (name, status, reads left before `online`).
    clusters: BTreeMap<String, (String, String, u32)>,
    /// Reads a promoted cluster answers `creating` before `online`.
    promote_polls: u32,
    promotes: u32,
}

type Shared = Arc<Mutex<Account>>;

fn not_found() -> axum::response::Response {
    error(404, "not_found", "The resource you were accessing could not be found.")
}

fn connection(host: &str) -> Value {
    json!({"uri": format!("mysql://doadmin:secret@{host}:25060/defaultdb?ssl-mode=REQUIRED"), "database": "defaultdb",
           "host": host, "port": 25060, "user": "doadmin", "password": "secret", "ssl": true})
}

fn handle(account: &Shared, request: Request) -> axum::response::Response {
    let mut account = account.lock().expect("fake state");
    if request.bearer() != Some(TOKEN) {
        return error(401, "unauthorized", "Unable to authenticate you.");
    }
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), parts.as_slice()) {
        ("GET", ["v2", "databases", cluster, "replicas", name]) if *cluster == SOURCE => {
            match account.replicas.get(*name) {
                Some(r) => answer(
                    200,
                    json!({"replica": {
                        "id": r.id, "name": name, "region": r.region, "status": r.status,
                        "created_at": "2026-11-30T10:00:00Z", "size": "db-s-2vcpu-4gb",
                        "connection": connection("replica.db.ondigitalocean.com"),
                        "private_connection": connection("private-replica.db.ondigitalocean.com"),
                        "tags": []
                    }}),
                    &[],
                ),
                None => not_found(),
            }
        }
        ("PUT", ["v2", "databases", cluster, "replicas", name, "promote"]) if *cluster == SOURCE => {
            let Some(replica) = account.replicas.remove(*name) else {
                return not_found();
            };
            account.promotes += 1;
            let polls = account.promote_polls;
            account
                .clusters
                .insert(replica.id.clone(), (name.to_string(), "creating".into(), polls));
            axum::response::IntoResponse::into_response(axum::http::StatusCode::NO_CONTENT)
        }
        ("GET", ["v2", "databases", id]) => {
            let Some((name, status, left)) = account.clusters.get_mut(*id) else {
                return not_found();
            };
            if *left == 0 {
                *status = "online".into();
            } else {
                *left -= 1;
            }
            answer(
                200,
                json!({"database": {
                    "id": id, "name": name, "engine": "mysql", "version": "8", "num_nodes": 1,
                    "size": "db-s-2vcpu-4gb", "region": "nyc3", "status": status,
                    "created_at": "2026-11-30T10:00:00Z", "connection": connection("db.ondigitalocean.com"),
                    "tags": []
                }}),
                &[],
            )
        }
        _ => not_found(),
    }
}

async fn start(promote_polls: u32) -> (Shared, String) {
    let mut account = Account {
        promote_polls,
        ..Account::default()
    };
    account
        .clusters
        .insert(SOURCE.into(), ("shop-db".into(), "online".into(), 0));
    for (name, id, region) in [("shop-db-nyc3", US_ID, "nyc3"), ("shop-db-sgp1", AP_ID, "sgp1")] {
        account.replicas.insert(
            name.into(),
            Replica {
                id: id.into(),
                region: region.into(),
                status: "online".into(),
            },
        );
    }
    let shared: Shared = Arc::new(Mutex::new(account));
    let state = Arc::clone(&shared);
    let base = fake::serve(move |request| handle(&state, request)).await;
    (shared, base)
}

fn step(base: &str, token: &std::path::Path, wait_ms: u64) -> providers::digitalocean_db::DigitalOceanDbPromote {
    let text = format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
cluster = "{SOURCE}"
primary_region = "eu"
replicas = {{ us = {{ name = "shop-db-nyc3", id = "{US_ID}" }}, ap = {{ name = "shop-db-sgp1", id = "{AP_ID}" }} }}
wait_ms = {wait_ms}
poll_ms = 10
"#,
        token.display()
    );
    check_settings(&text, Collect::new(&["eu", "us", "ap"]), check).expect("a checked step")
}

fn check(
    settings: &providers::digitalocean_db::Settings,
    checker: &mut Collect,
) -> Option<providers::digitalocean_db::DigitalOceanDbPromote> {
    settings.check("orders-db", checker)
}

#[tokio::test]
async fn digitalocean_replica_is_promoted_once_waited_online_fenced_against_a_second_and_failback_refused() {
    let (account, base) = start(3).await;
    let token = token_file(TOKEN);
    let step = step(&base, token.path(), 5_000);
    // The source's own region: nothing to promote.
    let home = step.run(&order(4, None, "eu")).await.expect("source serves eu");
    assert!(home.contains("served by the source cluster"), "{home}");

    let done = step.run(&order(5, Some("eu"), "us")).await.expect("promoted");
    assert!(done.starts_with("promoted the replica shop-db-nyc3 of us"), "{done}");
    assert!(done.contains("online after"), "{done}");
    {
        let account = account.lock().expect("state");
        assert_eq!(account.promotes, 1);
        assert!(!account.replicas.contains_key("shop-db-nyc3"));
        assert_eq!(account.clusters[US_ID].1, "online");
    }
    // A retry, or a restarted controller rolling forward: nothing promoted twice.
    let again = step.run(&order(5, Some("eu"), "us")).await.expect("re-run");
    assert!(again.contains("a primary cluster already"), "{again}");
    assert_eq!(account.lock().expect("state").promotes, 1);
    // A stale order for another region would make a second primary.
    let Err(Failure::Fenced(message)) = step.run(&order(4, Some("eu"), "ap")).await else {
        panic!("fenced");
    };
    assert!(message.contains("replica of us was promoted already"), "{message}");
    assert!(account.lock().expect("state").replicas.contains_key("shop-db-sgp1"));
    // Failing back to the source's region cannot be done by promotion.
    let Err(Failure::Refused(message)) = step.run(&order(6, Some("us"), "eu")).await else {
        panic!("refused");
    };
    assert!(message.contains("cannot make a cluster a replica again"), "{message}");
}

#[tokio::test]
async fn digitalocean_a_promotion_slower_than_wait_ms_is_finished_by_the_next_attempt_without_a_second_promote() {
    let (account, base) = start(1_000_000).await;
    let token = token_file(TOKEN);
    let step = step(&base, token.path(), 200);
    let Err(Failure::Retryable(message)) = step.run(&order(5, Some("eu"), "us")).await else {
        panic!("retryable");
    };
    assert!(
        message.contains("not an online cluster of its own within wait_ms = 200"),
        "{message}"
    );
    assert_eq!(account.lock().expect("state").promotes, 1);
    account
        .lock()
        .expect("state")
        .clusters
        .get_mut(US_ID)
        .expect("cluster")
        .2 = 2;
    let finished = step.run(&order(5, Some("eu"), "us")).await.expect("finished");
    assert!(
        finished.starts_with("an earlier run promoted the replica shop-db-nyc3"),
        "{finished}"
    );
    assert_eq!(account.lock().expect("state").promotes, 1, "promoted once");
}

#[tokio::test]
async fn digitalocean_a_forking_replica_is_retried_a_bad_token_refused_and_settings_named() {
    let (account, base) = start(0).await;
    account
        .lock()
        .expect("state")
        .replicas
        .get_mut("shop-db-nyc3")
        .expect("replica")
        .status = "forking".into();
    let token = token_file(TOKEN);
    let Err(Failure::Retryable(message)) = step(&base, token.path(), 1_000).run(&order(5, Some("eu"), "us")).await
    else {
        panic!("retryable");
    };
    assert!(message.contains("is forking, not online"), "{message}");
    assert_eq!(account.lock().expect("state").promotes, 0);
    let wrong = token_file("dop_v1_wrong");
    let Err(Failure::Refused(message)) = step(&base, wrong.path(), 1_000).run(&order(5, Some("eu"), "us")).await else {
        panic!("refused");
    };
    assert!(message.contains("401") && message.contains("unauthorized"), "{message}");

    let text = format!(
        r#"
token = {{ file = "{}" }}
cluster = "not-a-uuid"
primary_region = "mars"
replicas = {{ us = {{ name = "bad name", id = "123" }}, eu = {{ name = "ok", id = "{US_ID}" }} }}
wait_ms = 0
"#,
        token.path().display()
    );
    assert_refused(
        &text,
        Collect::new(&["eu", "us"]),
        check,
        &[
            "cluster 'not-a-uuid' is not a cluster UUID",
            "primary_region 'mars'",
            "replica name 'bad name'",
            "replica id '123' is not a UUID",
            "wait_ms = 0",
        ],
    );
}
