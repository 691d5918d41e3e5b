//! The `haproxy` step against a real HAProxy with stats sockets (unix and TCP, level admin).

use std::process::{Command, Stdio};
use std::time::Duration;

use providers::haproxy::{Admin, Haproxy, Settings};
use providers::{Failure, Order};

use crate::common::{Collect, Server, assert_refused, check_settings, free_port, installed, wait_until};

const REGIONS: [&str; 2] = ["eu-west-1", "us-east-1"];

struct Lb {
    _server: Server,
    dir: tempfile::TempDir,
    admin_port: u16,
}

/// Starts HAProxy with a `shop` backend of four servers (two per region, nothing listening
/// behind them: admin states do not need them), or says why it cannot.
fn start_haproxy(extra_socket_level: &str) -> Option<Lb> {
    let Some(haproxy) = installed("haproxy") else {
        eprintln!("SKIPPED: HAProxy is not installed (apt-get install haproxy, or scripts/install-test-deps.sh)");
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path();
    let admin_port = free_port();
    let (front, back) = (free_port(), free_port());
    let d = path.display();
    std::fs::write(
        path.join("haproxy.cfg"),
        format!(
            "global\n  stats socket {d}/admin.sock mode 600 level admin\n  stats socket ipv4@127.0.0.1:{admin_port} level {extra_socket_level}\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\nfrontend shop\n  bind 127.0.0.1:{front}\n  default_backend shop\nbackend shop\n  server us1 127.0.0.1:{back}\n  server us2 127.0.0.1:{back}\n  server eu1 127.0.0.1:{back} disabled\n  server eu2 127.0.0.1:{back}\n"
        ),
    )
    .expect("write haproxy.cfg");
    let log = path.join("haproxy.log");
    let child = Command::new(haproxy)
        .args(["-db", "-f"])
        .arg(path.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start haproxy");
    let server = Server { child, log };
    let socket = path.join("admin.sock");
    wait_until("HAProxy's stats socket", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    Some(Lb {
        _server: server,
        dir,
        admin_port,
    })
}

fn step(folder: &std::path::Path, endpoint: &str, extra: &str) -> Haproxy {
    let text = format!(
        "{endpoint}\n{extra}\n[regions]\n\"us-east-1\" = [\"shop/us1\", \"shop/us2\"]\n\"eu-west-1\" = [\"shop/eu1\", \"shop/eu2\"]\n"
    );
    check_settings(
        &text,
        Collect::in_folder(folder, &REGIONS),
        |settings: &Settings, checker| settings.check("lb", checker),
    )
    .unwrap_or_else(|errors| panic!("checks: {errors:?}"))
}

fn order(generation: u64, serving: &[&str]) -> Order {
    Order {
        generation,
        kind: "failover".into(),
        from: None,
        to: serving[0].into(),
        serving: serving.iter().map(|s| s.to_string()).collect(),
        reason: "test".into(),
        force_data_loss: false,
    }
}

async fn states(step: &Haproxy) -> Vec<(String, Admin)> {
    let mut states: Vec<(String, Admin)> = step
        .servers()
        .await
        .expect("show servers state")
        .into_iter()
        .map(|s| (s.server.clone(), s.admin()))
        .collect();
    states.sort();
    states
}

#[tokio::test]
async fn servers_are_set_read_back_and_a_rerun_changes_nothing() {
    let Some(lb) = start_haproxy("admin") else { return };
    let step = step(lb.dir.path(), "socket = \"admin.sock\"", "");
    // eu1 starts disabled in haproxy.cfg: the first run must bring it up.
    let detail = step.run(&order(1, &["eu-west-1"])).await.expect("fail over to eu");
    assert!(detail.contains("(3 changed)"), "{detail}");
    assert_eq!(
        states(&step).await,
        vec![
            ("eu1".into(), Admin::Ready),
            ("eu2".into(), Admin::Ready),
            ("us1".into(), Admin::Maint),
            ("us2".into(), Admin::Maint),
        ]
    );
    let again = step.run(&order(1, &["eu-west-1"])).await.expect("the same again");
    assert!(again.contains("(0 changed)"), "{again}");
    // Draining standby over the TCP socket; both regions serving (active-active).
    let tcp = step_tcp(&lb, "standby = \"drain\"");
    tcp.run(&order(2, &["us-east-1"])).await.expect("back to us");
    assert_eq!(
        states(&tcp).await,
        vec![
            ("eu1".into(), Admin::Drain),
            ("eu2".into(), Admin::Drain),
            ("us1".into(), Admin::Ready),
            ("us2".into(), Admin::Ready),
        ]
    );
    tcp.run(&order(3, &["us-east-1", "eu-west-1"])).await.expect("both");
    assert!(states(&tcp).await.iter().all(|(_, state)| *state == Admin::Ready));
}

fn step_tcp(lb: &Lb, extra: &str) -> Haproxy {
    step(
        lb.dir.path(),
        &format!("address = \"127.0.0.1:{}\"", lb.admin_port),
        extra,
    )
}

#[tokio::test]
async fn a_socket_below_admin_level_and_unknown_servers_are_refused() {
    let Some(lb) = start_haproxy("operator") else { return };
    let outcome = step_tcp(&lb, "").run(&order(1, &["eu-west-1"])).await;
    // At level operator `show servers state` works but `set server` does not.
    assert!(
        matches!(&outcome, Err(Failure::Refused(m)) if m.contains("level admin")),
        "{outcome:?}"
    );
    let text = "socket = \"admin.sock\"\n[regions]\n\"us-east-1\" = [\"shop/us9\"]\n";
    let settings: Settings = toml::from_str(text).expect("parses");
    let mut checker = Collect::in_folder(lb.dir.path(), &REGIONS);
    let missing = settings.check("lb", &mut checker).expect("checks");
    let outcome = missing.run(&order(1, &["us-east-1"])).await;
    assert!(
        matches!(&outcome, Err(Failure::Refused(m)) if m.contains("no server 'us9'")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_missing_socket_is_a_retryable_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = step(dir.path(), "socket = \"absent.sock\"", "timeout_ms = 500")
        .run(&order(1, &["eu-west-1"]))
        .await;
    assert!(
        matches!(&outcome, Err(Failure::Retryable(m)) if m.contains("absent.sock")),
        "{outcome:?}"
    );
}

#[test]
fn settings_problems_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "socket = \"a.sock\"\naddress = \"127.0.0.1:1\"\nstandby = \"off\"\n[regions]\n\"mars-1\" = [\"shop/m1\"]\n\"us-east-1\" = [\"shop/u1\", \"bad name\"]\n\"eu-west-1\" = [\"shop/u1\"]\n";
    assert_refused(
        text,
        Collect::in_folder(dir.path(), &REGIONS),
        |settings: &Settings, checker| settings.check("lb", checker),
        &[
            "exactly one of socket and address",
            "standby = 'off'",
            "'mars-1'",
            "'bad name'",
            "listed for regions",
        ],
    );
}
