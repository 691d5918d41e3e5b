//! Redis probe against real redis-server processes: a password-protected primary and a replica.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use health::ProbeKind;
use health::probe::probe;

use crate::support::{START_DEADLINE, Server, find_binary, free_port, probe_until, skip, spec};

fn redis(address: &str, password: Option<&str>, expect_role: Option<&str>, max_lag: Option<u64>) -> ProbeKind {
    ProbeKind::Redis {
        address: address.to_string(),
        username: None,
        password: password.map(str::to_string),
        replication: expect_role.is_some(),
        expect_role: expect_role.map(str::to_string),
        max_replica_lag_ms: max_lag,
    }
}

/// Starts `redis-server` on loopback at `port` without persistence (its folder `dir`, its log
/// `dir/log`), with `extra` arguments.
fn start_redis(binary: &Path, dir: &Path, port: u16, log: &str, extra: &[&str]) -> Server {
    Server::start(testkit::redis_server(binary, dir, port).args(extra), dir.join(log))
}

#[tokio::test]
async fn redis_ping_auth_and_replication() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let primary_port = free_port();
    let primary_address = format!("127.0.0.1:{primary_port}");
    let primary = start_redis(
        &binary,
        dir.path(),
        primary_port,
        "primary.log",
        &["--requirepass", "s3cret"],
    );
    let ping = spec(redis(&primary_address, Some("s3cret"), None, None));
    let up = probe_until(&ping, START_DEADLINE, |o| o.success).await;
    assert_eq!(up.detail, "PONG");

    let wrong = probe(&spec(redis(&primary_address, Some("wrong"), None, None))).await;
    assert!(!wrong.success);
    assert!(wrong.detail.starts_with("AUTH refused"), "{}", wrong.detail);
    let no_auth = probe(&spec(redis(&primary_address, None, None, None))).await;
    assert!(!no_auth.success);
    assert!(no_auth.detail.contains("NOAUTH"), "{}", no_auth.detail);

    let master = probe(&spec(redis(&primary_address, Some("s3cret"), Some("master"), None))).await;
    assert!(master.success, "{master:?}");
    assert_eq!(master.replica_lag_ms, Some(0));
    let not_slave = probe(&spec(redis(&primary_address, Some("s3cret"), Some("slave"), None))).await;
    assert!(!not_slave.success);
    assert!(not_slave.detail.contains("expected slave"), "{}", not_slave.detail);

    let replica_port = free_port();
    let replica_address = format!("127.0.0.1:{replica_port}");
    let _replica = start_redis(
        &binary,
        dir.path(),
        replica_port,
        "replica.log",
        &[
            "--replicaof",
            "127.0.0.1",
            &primary_port.to_string(),
            "--masterauth",
            "s3cret",
        ],
    );
    // Once the link is up the replica reports a lag within the bound.
    let replica = spec(redis(&replica_address, None, Some("slave"), Some(10_000)));
    let synced = probe_until(&replica, START_DEADLINE, |o| o.success).await;
    assert!(synced.detail.contains("master link up"), "{}", synced.detail);
    assert!(synced.replica_lag_ms.is_some());
    // The master is idle: it PINGs its replica every 10 s (repl-ping-replica-period), so the
    // link's idle time runs 0..10 s. That is no lag: a bound of 1 s (the default
    // failback_lag_max_ms) holds through more than a whole ping period.
    let tight = spec(redis(&replica_address, None, Some("slave"), Some(1000)));
    let until = Instant::now() + Duration::from_secs(12);
    let mut idle_seen = 0;
    while Instant::now() < until {
        let outcome = probe(&tight).await;
        assert!(outcome.success, "{outcome:?}");
        assert!(outcome.replica_lag_ms.is_some_and(|lag| lag <= 1000), "{outcome:?}");
        if !outcome.detail.contains("last I/O 0 s ago") && !outcome.detail.contains("last I/O 1 s ago") {
            idle_seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        idle_seen > 0,
        "the link was never idle for 2 s or more: the test proves nothing"
    );
    // A master that stops talking (SIGSTOP) without closing the link: after the ping period and
    // a margin the link is stale and the lag unknown, well before repl-timeout (60 s) drops it.
    let pid = primary.child.id().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill").args([name, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let stale = probe_until(&tight, Duration::from_secs(30), |o| !o.success).await;
    signal("-CONT");
    assert_eq!(stale.replica_lag_ms, None, "{stale:?}");
    assert!(
        stale.detail.contains("master link up but silent for"),
        "{}",
        stale.detail
    );
    let _ = probe_until(&tight, Duration::from_secs(30), |o| o.success).await;
    // Cut the primary: the replica's link goes down and its lag becomes unknown, failing the bound.
    drop(primary);
    let broken = probe_until(&replica, Duration::from_secs(30), |o| !o.success).await;
    assert!(broken.detail.contains("lag unknown"), "{}", broken.detail);
}
