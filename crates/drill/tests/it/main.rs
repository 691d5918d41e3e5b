//! The drill's runtime against real in-process pieces: two regional stores replicating a
//! global table, the demo shop in each region (on 127.0.0.11 and 127.0.0.12, same port), the
//! authoritative DNS server with a failover record, and a stand-in controller whose pointer a
//! recording fault target moves, as the real controller would when a region dies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use drill::history::{Action, Phase};
use drill::runtime::deployment::{Deployment, RegionTargets};
use drill::runtime::{DrillOptions, dynamo, http::HttpClient};
use drill::scenario::{self, Component, Durations, FaultAction, FaultError, FaultTarget, RegionRole, Roles};
use serde_json::json;
use store::global::{Peer, ReplicationConfig};
use store::server::{ServerConfig, run as run_store};
use store::{Engine, SystemClock};
use tokio::net::{TcpListener, UdpSocket};

/// Ports tried for a DNS server that needs the same port for UDP and TCP.
const UDP_TCP_PORT_ATTEMPTS: usize = 20;

const KEY: &[u8] = b"drill-integration-replication-key";
const TTL_S: u32 = 1;
const DEADLINE_MS: u64 = 20_000;

/// A deployment of `regions` keeping its history in `table`, with nothing else (no DNS
/// server, controller, fault proxy, process control or databases): tests set what they use.
fn deployment_of(table: &str, regions: Vec<RegionTargets>) -> Deployment {
    Deployment {
        shop_name: "shop.lab.test.".into(),
        shop_port: 1,
        dns_server: "127.0.0.1:1".parse().expect("addr"),
        controller_url: None,
        fault_proxy_url: None,
        fault_proxy_token_file: None,
        fault_proxy_token: None,
        table: table.into(),
        regions,
        processes: Default::default(),
        links: BTreeMap::new(),
        process_control: None,
        providers: Vec::new(),
        controllers: Vec::new(),
        databases: Vec::new(),
        database_accounts: None,
    }
}

/// Region `name` with its store at `store_url` and nothing else (no shop, no processes).
fn store_region(name: &str, store_url: &str) -> RegionTargets {
    RegionTargets {
        name: name.into(),
        store_url: store_url.into(),
        shop_addresses: Vec::new(),
        store_process: None,
        app_processes: Vec::new(),
        proxy_process: None,
        database_processes: Vec::new(),
    }
}

/// Stops the servers a test started.
fn stop_all(stops: Vec<tokio::sync::oneshot::Sender<()>>) {
    for stop in stops {
        // A server that already ended has dropped its receiver: nothing to stop.
        let _ = stop.send(());
    }
}

/// What the recording target sees of a region outage: the primary killed, then restarted.
fn primary_killed_then_restarted() -> Vec<FaultAction> {
    let primary = Component::Region(RegionRole::Primary);
    vec![
        FaultAction::Kill {
            target: primary.clone(),
        },
        FaultAction::Restart { target: primary },
    ]
}

struct Lab {
    deployment: Deployment,
    dns_admin: SocketAddr,
    controller: Arc<Mutex<(String, u64)>>,
    _dirs: Vec<tempfile::TempDir>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn start_stores() -> (
    Vec<(String, String)>,
    Vec<tempfile::TempDir>,
    Vec<tokio::sync::oneshot::Sender<()>>,
) {
    // Every store, as its peers see it.
    let mut stores = Vec::new();
    let mut listeners = Vec::new();
    for region in ["r1", "r2"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        stores.push(Peer {
            region: region.to_string(),
            url,
        });
        listeners.push(listener);
    }
    let mut dirs = Vec::new();
    let mut stops = Vec::new();
    for (store, listener) in stores.iter().zip(listeners) {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path(), &store.region, Arc::new(SystemClock)).expect("open engine");
        let others = stores.iter().filter(|other| other.region != store.region);
        let replication = ReplicationConfig::new(others.cloned().collect(), KEY.to_vec());
        let config = ServerConfig {
            credentials: None,
            replication: Some(replication),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = run_store(listener, engine, config, async {
                let _ = stopped.await;
            })
            .await;
        });
        dirs.push(dir);
        stops.push(stop);
    }
    let urls = stores.into_iter().map(|store| (store.region, store.url)).collect();
    (urls, dirs, stops)
}

/// The shops of both regions on the same port of 127.0.0.11 and 127.0.0.12.
async fn start_shops(stores: &[(String, String)]) -> (u16, Vec<tokio::sync::oneshot::Sender<()>>) {
    let all: BTreeMap<String, String> = stores.iter().cloned().collect();
    for _attempt in 0..20 {
        let first = TcpListener::bind("127.0.0.11:0").await.expect("bind shop r1");
        let port = first.local_addr().expect("addr").port();
        let Ok(second) = TcpListener::bind(("127.0.0.12", port)).await else {
            continue;
        };
        let mut stops = Vec::new();
        for ((region, _), listener) in stores.iter().zip([first, second]) {
            let config = demoapp::DemoAppConfig {
                region: region.clone(),
                instance: format!("{region}-a"),
                stores: all.clone(),
                pointers: Vec::new(),
                pointer_token: None,
                credentials: None,
                table_prefix: "shop".into(),
                tables_create: true,
                pointer_stale_ms: 10_000,
                databases: demoapp::databases::ShopDatabases::default(),
            };
            // One after the other: the first creates the global tables, the second finds them.
            let shop = demoapp::build(&config).await.expect("shop builds");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(demoapp::serve(listener, shop, async {
                let _ = stopped.await;
            }));
            stops.push(stop);
        }
        return (port, stops);
    }
    panic!("no port free on both 127.0.0.11 and 127.0.0.12");
}

async fn start_dns() -> (SocketAddr, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = format!(
        r#"
[dns]
[[dns.zones]]
origin = "lab.test."
ns = ["ns1"]

[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["127.0.0.53"]

[[dns.zones.records]]
name = "shop"
type = "A"
ttl = {TTL_S}
policy = "failover"

[[dns.zones.records.members]]
role = "primary"
values = ["127.0.0.11"]
health = "r1"

[[dns.zones.records.members]]
role = "secondary"
values = ["127.0.0.12"]
health = "r2"
"#
    );
    let parsed = dns::parse(&config, "drill-test.toml").expect("valid DNS config");
    // DNS listens on one port for UDP and TCP: the kernel's free UDP port may be taken for
    // TCP by another test running at the same time, so try a few.
    let mut bound = None;
    for _ in 0..UDP_TCP_PORT_ATTEMPTS {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let address = udp.local_addr().expect("addr");
        if let Ok(tcp) = TcpListener::bind(address).await {
            bound = Some((udp, address, tcp));
            break;
        }
    }
    let (udp, address, tcp) = bound.expect("a port free for both UDP and TCP");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin_address = admin.local_addr().expect("addr");
    let options = dns::Options {
        token: None,
        state_dir: None,
        config_path: None,
        reload_interval_ms: 0,
        udp_workers: 1,
        seed: 1,
        limits: dns::Limits::default(),
        admin_tls: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dns::run(
        dns::Sockets { udp, tcp, admin },
        parsed.zones,
        options,
        async {
            let _ = stopped.await;
        },
    ));
    (address, admin_address, stop)
}

async fn start_controller(state: Arc<Mutex<(String, u64)>>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = Router::new().route(
        "/v1/active-region",
        get(move || {
            let state = Arc::clone(&state);
            async move {
                let (region, generation) = state.lock().expect("lock").clone();
                axum::Json(json!({"region": region, "generation": generation}))
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind controller");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

async fn start_lab() -> Lab {
    let (stores, dirs, mut stop) = start_stores().await;
    let (port, shop_stops) = start_shops(&stores).await;
    stop.extend(shop_stops);
    let (dns_server, dns_admin, dns_stop) = start_dns().await;
    stop.push(dns_stop);
    let controller = Arc::new(Mutex::new(("r1".to_string(), 1u64)));
    let (controller_url, controller_stop) = start_controller(Arc::clone(&controller)).await;
    stop.push(controller_stop);
    let regions = stores
        .iter()
        .zip(["127.0.0.11", "127.0.0.12"])
        .map(|((name, url), address)| RegionTargets {
            shop_addresses: vec![address.parse().expect("ip")],
            store_process: Some(format!("store-{name}")),
            app_processes: vec![format!("app-{name}")],
            ..store_region(name, url)
        })
        .collect();
    let mut deployment = deployment_of("drill-history", regions);
    deployment.shop_port = port;
    deployment.dns_server = dns_server;
    deployment.controller_url = Some(controller_url);
    Lab {
        deployment,
        dns_admin,
        controller,
        _dirs: dirs,
        stop,
    }
}

/// Records every action; a region kill moves the pointer and the DNS health as the controller
/// would, a restart moves them back.
struct RecordingTarget {
    calls: Mutex<Vec<FaultAction>>,
    controller: Arc<Mutex<(String, u64)>>,
    dns_admin: SocketAddr,
    http: HttpClient,
}

impl RecordingTarget {
    /// A target moving `lab`'s pointer and DNS health, with no call recorded yet.
    fn of(lab: &Lab) -> RecordingTarget {
        RecordingTarget {
            calls: Mutex::new(Vec::new()),
            controller: Arc::clone(&lab.controller),
            dns_admin: lab.dns_admin,
            http: HttpClient::new(),
        }
    }

    async fn push_health(&self, generation: u64, r1: &str) -> Result<(), FaultError> {
        let body = json!({"generation": generation, "targets": {"r1": r1, "r2": "healthy"}});
        let response = self
            .http
            .send(
                "PUT",
                &format!("http://{}/v1/health", self.dns_admin),
                &[("content-type", "application/json")],
                Some(body.to_string().into_bytes()),
                5_000,
            )
            .await
            .map_err(|e| FaultError::Failed {
                action: "push health".into(),
                reason: e.to_string(),
            })?;
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        Ok(())
    }
}

impl FaultTarget for RecordingTarget {
    async fn apply(&self, roles: &Roles, action: &FaultAction) -> Result<(), FaultError> {
        assert_eq!(roles.primary, "r1", "the pointer named r1 when the drill started");
        self.calls.lock().expect("lock").push(action.clone());
        let generation = {
            let mut pointer = self.controller.lock().expect("lock");
            match action {
                FaultAction::Kill {
                    target: Component::Region(RegionRole::Primary),
                } => *pointer = (roles.secondary.clone(), pointer.1 + 1),
                FaultAction::Restart {
                    target: Component::Region(RegionRole::Primary),
                } => *pointer = (roles.primary.clone(), pointer.1 + 1),
                _ => return Ok(()),
            }
            pointer.1
        };
        let r1 = if self.controller.lock().expect("lock").0 == "r1" {
            "healthy"
        } else {
            "unhealthy"
        };
        self.push_health(generation, r1).await
    }
}

fn short() -> DrillOptions {
    DrillOptions {
        durations: Durations {
            warmup_ms: 2_000,
            fault_ms: 4_000,
            settle_ms: 7_000,
        },
        clients: 2,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failback_drill_against_real_stores_shops_and_dns() {
    let lab = start_lab().await;
    let target = RecordingTarget::of(&lab);
    let scenario = scenario::by_name("failback").expect("exists");
    let outcome = tokio::time::timeout(
        Duration::from_millis(DEADLINE_MS * 6),
        drill::runtime::run(&scenario, &lab.deployment, &target, &short(), std::future::pending()),
    )
    .await
    .expect("the drill ends")
    .expect("the drill runs");
    let report = &outcome.report;
    let text = drill::report::render_text(report);
    println!("{text}");
    assert!(!outcome.interrupted);
    assert_eq!(*target.calls.lock().expect("lock"), primary_killed_then_restarted());
    let m = &report.measurements;
    assert!(m.requests_ok > 0, "the shop served orders through DNS");
    assert!(report.check.acknowledged > 20, "the writers wrote: {:?}", report.check);
    assert_eq!(report.check.lost, 0);
    assert!(report.check.divergent_keys.is_empty());
    assert_eq!(m.failovers, 2, "the pointer moved away and back");
    assert_eq!(m.dns_answer_before, vec!["127.0.0.11".to_string()]);
    assert_eq!(m.dns_answer_switched_to, Some(vec!["127.0.0.12".to_string()]));
    assert!(m.rto_dns_ms.is_some() && m.failback_ms.is_some());
    assert!(m.client_lookups >= 2, "clients re-resolved after the TTL");
    let (gap_ms, ttl_s) = m.client_requery_gap_ms_min.expect("clients queried more than once");
    assert_eq!(ttl_s, TTL_S);
    assert!(gap_ms >= u64::from(TTL_S) * 1000, "clients honour the TTL: {gap_ms} ms");
    assert!(report.passed, "{text}");
    let html = drill::report::render_html(report);
    assert!(html.contains("<svg") && html.contains("failback"));
    // DRILL_REPORT_DIR=/some/dir keeps the reports of this run to look at.
    if let Ok(dir) = std::env::var("DRILL_REPORT_DIR") {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("failback.html"), &html).expect("write the HTML report");
        let json = serde_json::to_string_pretty(report).expect("encode");
        std::fs::write(dir.join("failback.json"), json).expect("write the JSON report");
    }
    stop_all(lab.stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_drill_heals_what_it_broke() {
    let lab = start_lab().await;
    let target = RecordingTarget::of(&lab);
    let scenario = scenario::by_name("region-outage").expect("exists");
    let mut options = short();
    options.durations.fault_ms = 60_000;
    // Interrupt once the fault is in force.
    let calls = &target.calls;
    let interrupt = async {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(DEADLINE_MS);
        while calls.lock().expect("lock").is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the fault was injected in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let outcome = tokio::time::timeout(
        Duration::from_millis(DEADLINE_MS * 3),
        drill::runtime::run(&scenario, &lab.deployment, &target, &options, interrupt),
    )
    .await
    .expect("the interrupted drill ends quickly")
    .expect("the drill runs");
    assert!(outcome.interrupted);
    assert!(outcome.heal_errors.is_empty());
    assert_eq!(
        *target.calls.lock().expect("lock"),
        primary_killed_then_restarted(),
        "the kill was undone by a restart"
    );
    assert_eq!(lab.controller.lock().expect("lock").0, "r1");
    stop_all(lab.stop);
}

/// The writer's history and the set check against real replicating stores: a write deleted
/// behind the drill's back in both regions is reported lost, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_finds_a_write_removed_from_real_stores() {
    let (stores, _dirs, stops) = start_stores().await;
    let http = HttpClient::new();
    dynamo::ensure_global_table(&http, &stores, "checked")
        .await
        .expect("table created and made global");
    let mut history = drill::history::History::new();
    let mut t = 0;
    for i in 0..20u64 {
        let (region, url) = &stores[(i % 2) as usize];
        let key = format!("run-k{i}");
        let value = format!("run-v{i}");
        let action = Action::Write {
            key: key.clone(),
            value: value.clone(),
            region: region.clone(),
        };
        history.invoke(1, t, action).expect("valid");
        dynamo::put(&http, url, "checked", &key, &value)
            .await
            .expect("write acknowledged");
        t += 1;
        history.complete(1, t, Phase::Ok, None, None).expect("valid");
    }
    // Wait for replication, then delete one item (the delete replicates too).
    let recorder = drill::runtime::recorder::Recorder::new();
    let regions = stores.iter().map(|(name, url)| store_region(name, url)).collect();
    let deployment = deployment_of("checked", regions);
    let state = drill::runtime::converge(&http, &deployment, "run-", DEADLINE_MS, &recorder).await;
    assert_eq!(drill::checker::check(&history, &state, None).present, 20);
    dynamo::call(
        &http,
        &stores[0].1,
        "DeleteItem",
        &json!({"TableName": "checked", "Key": {"key": {"S": "run-k7"}}}),
        5_000,
    )
    .await
    .expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEADLINE_MS);
    loop {
        let state = drill::runtime::converge(&http, &deployment, "run-", DEADLINE_MS, &recorder).await;
        let result = drill::checker::check(&history, &state, None);
        if result.lost == 1 && result.divergent_keys.is_empty() {
            assert_eq!(result.listed[0].key, "run-k7");
            assert_eq!(result.present, 19);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delete replicated: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_all(stops);
}

/// The deployment target against the real fault proxy's control API: a scenario's toxics land
/// on exactly the mapped proxies, in Toxiproxy's shape, and its heal removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_target_drives_the_real_fault_proxy() {
    use drill::runtime::deployment::LinkNames;
    use drill::runtime::target::{DeploymentTarget, NoProcessControl};
    use drill::scenario::{Link, StepPhase};

    let registry = Arc::new(faultproxy::Registry::new(faultproxy::Limits::default(), 1));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fault API");
    let api = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // With a token, as a fault proxy reachable beyond loopback must have: the drill sends it.
    const TOKEN: &str = "drill-fault-token";
    let bearer = format!("Bearer {TOKEN}");
    tokio::spawn(faultproxy::api::serve_with_token(
        listener,
        registry,
        Some(TOKEN.to_string()),
        async {
            let _ = stopped.await;
        },
    ));
    let http = HttpClient::new();
    for name in ["v0-r1", "v1-r1", "repl-r1-r2", "repl-r2-r1"] {
        let body = json!({"name": name, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"});
        let response = http
            .send(
                "POST",
                &format!("{api}/proxies"),
                &[("content-type", "application/json"), ("authorization", &bearer)],
                Some(body.to_string().into_bytes()),
                5_000,
            )
            .await
            .expect("fault API answers");
        assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
    }
    let mut links = BTreeMap::new();
    links.insert("health:0:r1".to_string(), LinkNames::One("v0-r1".into()));
    links.insert("health:1:r1".to_string(), LinkNames::One("v1-r1".into()));
    links.insert("replication:r1:r2".to_string(), LinkNames::One("repl-r1-r2".into()));
    links.insert("replication:r2:r1".to_string(), LinkNames::One("repl-r2-r1".into()));
    links.insert("controller:r1".to_string(), LinkNames::One("missing-proxy".into()));
    let regions = ["r1", "r2"].map(|name| store_region(name, "http://127.0.0.1:1"));
    let mut deployment = deployment_of("t", regions.into());
    deployment.fault_proxy_url = Some(api.clone());
    deployment.fault_proxy_token = Some(TOKEN.to_string());
    deployment.links = links;
    let mut tokenless = deployment.clone();
    tokenless.fault_proxy_token = None;
    let target = DeploymentTarget::new(deployment, NoProcessControl);
    let roles = Roles {
        primary: "r1".into(),
        secondary: "r2".into(),
    };
    let toxics = |proxy: &'static str| {
        let http = http.clone();
        let api = api.clone();
        let bearer = bearer.clone();
        async move {
            let response = http
                .send(
                    "GET",
                    &format!("{api}/proxies/{proxy}/toxics"),
                    &[("authorization", &bearer)],
                    None,
                    5_000,
                )
                .await
                .expect("fault API answers");
            let mut names: Vec<String> = response
                .json()
                .expect("JSON")
                .as_array()
                .expect("a list of toxics")
                .iter()
                .map(|t| format!("{}:{}:{}", t["name"].as_str().unwrap_or(""), t["type"], t["stream"]))
                .collect();
            names.sort();
            names
        }
    };

    let plan = scenario::by_name("vantage-partition")
        .expect("exists")
        .plan(&Durations::default());
    // Without the token the fault proxy refuses, and the drill says so.
    let without = DeploymentTarget::new(tokenless, NoProcessControl);
    let first = plan.iter().find(|s| s.phase == StepPhase::Fault).expect("a fault step");
    let error = without
        .apply(&roles, &first.action)
        .await
        .expect_err("refused without the token");
    assert!(error.to_string().contains("401"), "{error}");
    assert!(toxics("v0-r1").await.is_empty(), "nothing was added without the token");
    for step in plan.iter().filter(|s| s.phase == StepPhase::Fault) {
        target.apply(&roles, &step.action).await.expect("toxic added");
    }
    assert_eq!(
        toxics("v0-r1").await,
        vec![
            "drill-cut-vantage-down:\"timeout\":\"downstream\"",
            "drill-cut-vantage-up:\"timeout\":\"upstream\""
        ]
    );
    assert!(toxics("v1-r1").await.is_empty(), "only vantage 0 is cut");
    for step in plan.iter().filter(|s| s.phase == StepPhase::Heal) {
        target.apply(&roles, &step.action).await.expect("toxic removed");
    }
    assert!(toxics("v0-r1").await.is_empty());
    // Healing twice is harmless (404 is what a heal wants).
    for step in plan.iter().filter(|s| s.phase == StepPhase::Heal) {
        target
            .apply(&roles, &step.action)
            .await
            .expect("already removed is fine");
    }

    // A link mapped to a proxy the fault proxy does not have, a link not mapped at all, and a
    // process fault without process control: each a clear error.
    let blackhole = |link| FaultAction::AddToxic {
        link,
        toxic: drill::scenario::Toxic {
            name: "x".into(),
            stream: drill::scenario::Stream::Upstream,
            kind: drill::scenario::ToxicKind::Blackhole,
        },
    };
    let primary = RegionRole::Primary;
    let cut_controller = blackhole(Link::Controller { region: primary });
    let error = target.apply(&roles, &cut_controller).await.expect_err("no such proxy");
    assert!(error.to_string().contains("missing-proxy"), "{error}");
    let cut_frontend = blackhole(Link::Frontend { region: primary });
    let error = target.apply(&roles, &cut_frontend).await.expect_err("not mapped");
    assert!(matches!(error, FaultError::Unsupported { .. }), "{error}");
    let kill = FaultAction::Kill {
        target: Component::Store(RegionRole::Primary),
    };
    let error = target.apply(&roles, &kill).await.expect_err("no process names");
    assert!(error.to_string().contains("no store process for region r1"), "{error}");
    let _ = stop.send(());
}

/// Process faults through the deployment file's shell commands, with names quoted.
#[tokio::test]
async fn command_process_control_runs_the_commands() {
    use drill::runtime::deployment::ProcessCommands;
    use drill::runtime::target::{CommandProcessControl, DeploymentTarget};

    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("calls.log");
    let log = log.display();
    let commands = ProcessCommands {
        kill: format!("echo kill {{name}} >> {log}"),
        stop: format!("echo stop {{name}} >> {log}"),
        cont: format!("echo cont {{name}} >> {log}"),
        restart: "echo 'cannot restart' >&2; exit 3".into(),
        cut_network: Some(format!("echo cut-network {{name}} >> {log}")),
        heal_network: None,
        fill_disk: Some(format!("echo fill-disk {{name}} >> {log}")),
        free_disk: None,
    };
    let regions = ["r1", "r2"].map(|name| RegionTargets {
        store_process: Some(format!("store {name}")),
        app_processes: vec![format!("app-{name}-1"), format!("app-{name}-2")],
        proxy_process: Some(format!("lb-{name}")),
        ..store_region(name, "http://127.0.0.1:1")
    });
    let mut deployment = deployment_of("t", regions.into());
    deployment.process_control = Some(commands.clone());
    let target = DeploymentTarget::new(deployment, CommandProcessControl { commands });
    let roles = Roles {
        primary: "r2".into(),
        secondary: "r1".into(),
    };
    let region = Component::Region(RegionRole::Primary);
    target
        .apply(&roles, &FaultAction::Stop { target: region.clone() })
        .await
        .expect("stop runs");
    target
        .apply(&roles, &FaultAction::Cont { target: region.clone() })
        .await
        .expect("cont runs");
    target
        .apply(
            &roles,
            &FaultAction::Kill {
                target: Component::Store(RegionRole::Secondary),
            },
        )
        .await
        .expect("kill runs");
    target
        .apply(
            &roles,
            &FaultAction::CutNetwork {
                region: RegionRole::Primary,
            },
        )
        .await
        .expect("cut-network runs with the region's name");
    let unhealable = target
        .apply(
            &roles,
            &FaultAction::HealNetwork {
                region: RegionRole::Primary,
            },
        )
        .await
        .expect_err("no heal_network command");
    assert!(unhealable.to_string().contains("heal_network"), "{unhealable}");
    target
        .apply(
            &roles,
            &FaultAction::FillDisk {
                region: RegionRole::Primary,
            },
        )
        .await
        .expect("fill-disk runs with the region's name");
    let unfreeable = target
        .apply(
            &roles,
            &FaultAction::FreeDisk {
                region: RegionRole::Primary,
            },
        )
        .await
        .expect_err("no free_disk command");
    assert!(unfreeable.to_string().contains("free_disk"), "{unfreeable}");
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).expect("commands ran");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        vec![
            "stop lb-r2",
            "stop app-r2-1",
            "stop app-r2-2",
            "stop store r2",
            "cont store r2",
            "cont app-r2-2",
            "cont app-r2-1",
            "cont lb-r2",
            "kill store r1",
            "cut-network r2",
            "fill-disk r2",
        ],
        "front to back when stopping, back to front when continuing; the space stays in one name"
    );
    let error = target
        .apply(&roles, &FaultAction::Restart { target: region })
        .await
        .expect_err("the restart command fails");
    assert!(error.to_string().contains("cannot restart"), "{error}");
}

/// A `controller_url` where nothing listens (a typo, a stopped controller) is said within
/// `CONTROLLER_UNREACHABLE_WAIT_MS`, naming the address and what to check, instead of after
/// the 30 s a just-started controller gets to make its first decision.
#[tokio::test]
async fn a_controller_that_does_not_answer_is_named_before_the_decision_wait() {
    let (dns_server, _dns_admin, dns_stop) = start_dns().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mut deployment = deployment_of(
        "drill-history",
        vec![
            store_region("r1", "http://127.0.0.1:9"),
            store_region("r2", "http://127.0.0.1:9"),
        ],
    );
    deployment.dns_server = dns_server;
    deployment.controller_url = Some(format!("http://{closed}"));
    let error = drill::runtime::discover_roles(&HttpClient::new(), &deployment)
        .await
        .expect_err("nothing listens there");
    let _ = dns_stop.send(());
    assert!(
        error.contains(&format!(
            "did not answer for {} ms",
            drill::runtime::CONTROLLER_UNREACHABLE_WAIT_MS
        )),
        "{error}"
    );
    assert!(
        error.contains(&closed.to_string()) && error.contains("controller_url"),
        "{error}"
    );
}
