//! `redis_promote` against three real redis-server processes (master `a` in eu, replicas `b`
//! in us and `c` in ap), logged in as an ACL user.

use providers::Failure;
use providers::db::redis::{RECORD_KEY, RedisPromote, Settings};

use crate::support::{Server, Strict, find_binary, free_port, order, skip, wait_until};

const USER: &str = "switchyard";
const PASSWORD: &str = "sw-s3cret";

fn start(binary: &std::path::Path, dir: &std::path::Path, name: &str, port: u16, master: Option<u16>) -> Server {
    let mut command = crate::support::redis_server(binary, dir, name, port, master, (USER, PASSWORD));
    Server::start(&mut command, dir.join(format!("{name}.log")))
}

async fn connect(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp("127.0.0.1".into(), port),
        redis: redis::RedisConnectionInfo {
            db: 0,
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            protocol: redis::ProtocolVersion::RESP2,
        },
    };
    redis::Client::open(info)?.get_multiplexed_async_connection().await
}

async fn query<T: redis::FromRedisValue>(port: u16, command: &redis::Cmd) -> redis::RedisResult<T> {
    let mut conn = connect(port).await?;
    command.query_async(&mut conn).await
}

async fn info(port: u16) -> String {
    query::<String>(port, redis::cmd("INFO").arg("replication"))
        .await
        .unwrap_or_default()
}

pub(crate) fn field(info: &str, key: &str) -> String {
    info.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// Linked to `master` and caught up with it.
async fn follows(port: u16, master: u16) -> bool {
    let replica = info(port).await;
    let master_offset = field(&info(master).await, "master_repl_offset");
    field(&replica, "role") == "slave"
        && field(&replica, "master_port") == master.to_string()
        && field(&replica, "master_link_status") == "up"
        && field(&replica, "master_repl_offset") == master_offset
}

#[tokio::test]
async fn redis_failover_fences_the_old_master_repoints_replicas_refuses_lag_and_reruns_as_no_op() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b, c) = (free_port(), free_port(), free_port());
    let _servers = [
        start(&binary, dir.path(), "a", a, None),
        start(&binary, dir.path(), "b", b, Some(a)),
        start(&binary, dir.path(), "c", c, Some(a)),
    ];
    wait_until("a to answer", || async move { connect(a).await.is_ok() }).await;
    query::<()>(a, redis::cmd("SET").arg("session:1").arg("cart-1"))
        .await
        .expect("write to the master");
    for replica in [b, c] {
        wait_until("the replicas to sync", || async move { follows(replica, a).await }).await;
    }
    std::fs::write(dir.path().join("password"), PASSWORD).expect("write password");
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{a}\"], us = [\"127.0.0.1:{b}\"], ap = [\"127.0.0.1:{c}\"] }}\n\
         username = \"{USER}\"\n\
         password = {{ file = \"{}\" }}\n\
         promote_lag_max_ms = 300\n",
        dir.path().join("password").display()
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    let step: RedisPromote = settings
        .check("sessions", &mut Strict::new(&["eu", "us", "ap"]))
        .expect("settings check");
    let (a_address, b_address) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));

    let outcome = step.run(&order(3, "eu", "us", false)).await.expect("promoted");
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert!(
        outcome.contains(&format!("old master {a_address} now replicates from {b_address}")),
        "{outcome}"
    );
    assert!(
        outcome.contains(&format!("127.0.0.1:{c} now replicates from {b_address}")),
        "{outcome}"
    );
    assert_eq!(field(&info(b).await, "role"), "master");
    let refused = query::<()>(a, redis::cmd("SET").arg("session:2").arg("x")).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.kind() == redis::ErrorKind::ReadOnly),
        "the old master refuses writes: {refused:?}"
    );
    query::<()>(b, redis::cmd("SET").arg("session:2").arg("cart-2"))
        .await
        .expect("the new master takes writes");
    for replica in [a, c] {
        wait_until("a and c to follow b", || async move { follows(replica, b).await }).await;
    }
    let kept: Option<String> = query(c, redis::cmd("GET").arg("session:1")).await.expect("read");
    assert_eq!(kept.as_deref(), Some("cart-1"));
    let record: String = query(a, redis::cmd("GET").arg(RECORD_KEY)).await.expect("read record");
    assert!(record.starts_with("3 "), "{record}");

    let again = step.run(&order(3, "eu", "us", false)).await.expect("no-op");
    assert!(again.contains(&format!("{b_address} already master")), "{again}");
    let stale = step.run(&order(2, "eu", "us", false)).await;
    assert!(matches!(stale, Err(Failure::Fenced(_))), "{stale:?}");

    // c loses its link (pointed at a closed port), b takes more writes: promoting c is
    // refused beyond the bound, and forced it is counted.
    let closed = free_port();
    query::<()>(c, redis::cmd("REPLICAOF").arg("127.0.0.1").arg(closed))
        .await
        .expect("cut c");
    for i in 0..20 {
        query::<()>(b, redis::cmd("SET").arg(format!("session:lag{i}")).arg("x"))
            .await
            .expect("write");
    }
    let refused = step.run(&order(4, "us", "ap", false)).await;
    let Err(Failure::Refused(message)) = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(
        message.contains("byte(s) of the replication stream behind"),
        "{message}"
    );
    query::<()>(b, redis::cmd("SET").arg("session:3").arg("after-refusal"))
        .await
        .expect("b was unpaused and still takes writes");
    let forced = step.run(&order(5, "us", "ap", true)).await.expect("forced");
    assert!(forced.contains("those writes are lost"), "{forced}");
    assert_eq!(field(&info(c).await, "role"), "master");
    for replica in [a, b] {
        wait_until("a and b to follow c", || async move { follows(replica, c).await }).await;
    }
    let lost: Option<String> = query(b, redis::cmd("GET").arg("session:3")).await.expect("read");
    assert_eq!(lost, None, "b resynchronised from c and dropped what c never had");
}

/// A `redis_promote` step over one server in eu (port `eu`) and one in us (port `us`), logging
/// in as the tests' account (its password written into `dir`).
fn eu_us_step(dir: &std::path::Path, eu: u16, us: u16) -> RedisPromote {
    std::fs::write(dir.join("password"), PASSWORD).expect("write password");
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{eu}\"], us = [\"127.0.0.1:{us}\"] }}\n\
         username = \"{USER}\"\npassword = {{ file = \"{}\" }}\n",
        dir.join("password").display()
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    settings
        .check("sessions", &mut Strict::new(&["eu", "us"]))
        .expect("settings check")
}

/// A host that takes TCP connections and never answers on them (a hung server, or one behind a
/// link that drops its replies): every login to it waits out the connection timeout. Counts the
/// connections it took.
fn silent_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&taken);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, taken)
}

#[tokio::test]
async fn redis_a_server_that_does_not_answer_the_first_survey_is_not_waited_for_again() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (silent, taken) = silent_server();
    let b = free_port();
    let _server = start(&binary, dir.path(), "b", b, None);
    wait_until("b to answer", || async move { connect(b).await.is_ok() }).await;
    let step = eu_us_step(dir.path(), silent, b);
    let outcome = step.run(&order(3, "eu", "us", false)).await.expect("ran");
    assert!(
        outcome.contains(&format!("127.0.0.1:{silent} unreachable")),
        "{outcome}"
    );
    assert!(
        outcome.contains(&format!(
            "127.0.0.1:{b} already master (no promotion record yet; generation 3's written)"
        )),
        "{outcome}"
    );
    // The first survey's login waited out its timeout; the survey after the promotion (whom
    // to repoint) does not connect to it again, which in a partition cost every run a second
    // timeout before the runbook's next step.
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 1, "{outcome}");
    let record: Option<String> = query(b, redis::cmd("GET").arg(RECORD_KEY)).await.expect("read");
    assert!(record.as_deref().is_some_and(|r| r.starts_with("3 ")), "{record:?}");
}

#[tokio::test]
async fn redis_an_unreachable_master_is_named_then_made_a_replica_when_it_returns() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b) = (free_port(), free_port());
    let mut servers = [
        start(&binary, dir.path(), "a", a, None),
        start(&binary, dir.path(), "b", b, Some(a)),
    ];
    wait_until("a to answer", || async move { connect(a).await.is_ok() }).await;
    query::<()>(a, redis::cmd("SET").arg("session:1").arg("cart-1"))
        .await
        .expect("write");
    wait_until("b to sync", || async move { follows(b, a).await }).await;
    servers[0].child.kill().expect("kill a");
    servers[0].child.wait().expect("reap a");

    let step = eu_us_step(dir.path(), a, b);
    let (a_address, b_address) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    let outcome = step.run(&order(3, "eu", "us", false)).await.expect("promoted");
    assert!(outcome.contains(&format!("{a_address} unreachable")), "{outcome}");
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert!(outcome.contains("the old master did not answer"), "{outcome}");
    let kept: Option<String> = query(b, redis::cmd("GET").arg("session:1")).await.expect("read");
    assert_eq!(kept.as_deref(), Some("cart-1"));

    // a returns as a master (empty, no record): the next run makes it a replica of b.
    servers[0] = start(&binary, dir.path(), "a", a, None);
    wait_until("a to answer again", || async move { connect(a).await.is_ok() }).await;
    let again = step.run(&order(4, "eu", "us", false)).await.expect("rolled forward");
    assert!(again.contains(&format!("{b_address} already master")), "{again}");
    assert!(
        again.contains(&format!("stray master {a_address} made a replica of {b_address}")),
        "{again}"
    );
    wait_until("a to follow b", || async move { follows(a, b).await }).await;
    let synced: Option<String> = query(a, redis::cmd("GET").arg("session:1")).await.expect("read");
    assert_eq!(synced.as_deref(), Some("cart-1"));
}

#[tokio::test]
async fn redis_with_the_master_gone_a_replica_ahead_of_the_candidate_refuses_until_forced() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b, c) = (free_port(), free_port(), free_port());
    let mut servers = [
        start(&binary, dir.path(), "a", a, None),
        start(&binary, dir.path(), "b", b, Some(a)),
        start(&binary, dir.path(), "c", c, Some(a)),
    ];
    wait_until("a to answer", || async move { connect(a).await.is_ok() }).await;
    query::<()>(a, redis::cmd("SET").arg("session:1").arg("cart-1"))
        .await
        .expect("write");
    for replica in [b, c] {
        wait_until("the replicas to sync", || async move { follows(replica, a).await }).await;
    }
    // b (us) loses its link; a takes more writes that only c (ap) receives; then a dies.
    query::<()>(b, redis::cmd("REPLICAOF").arg("127.0.0.1").arg(free_port()))
        .await
        .expect("cut b");
    for i in 0..20 {
        query::<()>(a, redis::cmd("SET").arg(format!("session:late{i}")).arg("x"))
            .await
            .expect("write");
    }
    wait_until("c to have the late writes", || async move { follows(c, a).await }).await;
    servers[0].child.kill().expect("kill a");
    servers[0].child.wait().expect("reap a");

    std::fs::write(dir.path().join("password"), PASSWORD).expect("write password");
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{a}\"], us = [\"127.0.0.1:{b}\"], ap = [\"127.0.0.1:{c}\"] }}\n\
         username = \"{USER}\"\npassword = {{ file = \"{}\" }}\npromote_lag_max_ms = 300\n",
        dir.path().join("password").display()
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    let step = settings
        .check("sessions", &mut Strict::new(&["eu", "us", "ap"]))
        .expect("settings check");
    let (b_address, c_address) = (format!("127.0.0.1:{b}"), format!("127.0.0.1:{c}"));
    let refused = step.run(&order(3, "eu", "us", false)).await;
    let Err(Failure::Refused(message)) = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(
        message.contains(&format!("{b_address} is still"))
            && message.contains(&format!("behind {c_address}"))
            && message.contains("--force-data-loss"),
        "{message}"
    );
    assert_eq!(field(&info(b).await, "role"), "slave", "b was not promoted");
    assert_eq!(field(&info(c).await, "role"), "slave", "c was not repointed");
    let late: Option<String> = query(c, redis::cmd("GET").arg("session:late19")).await.expect("read");
    assert_eq!(late.as_deref(), Some("x"), "c still holds what only it received");

    let forced = step.run(&order(4, "eu", "us", true)).await.expect("forced");
    assert!(forced.contains("those writes are lost"), "{forced}");
    assert!(forced.contains(&format!("promoted {b_address} in us")), "{forced}");
    assert!(
        forced.contains(&format!("{c_address} now replicates from {b_address}")),
        "{forced}"
    );
}

/// How long [`slow_promotion_proxy`] holds each answer once the candidate is being promoted:
/// each under the step's per-command bound, four of them past the old master's first pause.
const SLOW_ANSWER_MS: u64 = 3_500;

/// A TCP proxy to the candidate at `target`: on a connection that sent `REPLICAOF NO ONE`, the
/// answer to that command and to every later one is held [`SLOW_ANSWER_MS`] (a candidate slow
/// to promote), and `promoting` is notified. Its port.
async fn slow_promotion_proxy(target: u16, promoting: std::sync::Arc<tokio::sync::Notify>) -> u16 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let slow = std::sync::Arc::new(AtomicBool::new(false));
            let promoting = promoting.clone();
            let slow_requests = slow.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    let request = &buffer[..n];
                    let promote = b"REPLICAOF\r\n$2\r\nNO\r\n$3\r\nONE\r\n";
                    if request.windows(promote.len()).any(|w| w == promote) {
                        slow_requests.store(true, Ordering::SeqCst);
                        promoting.notify_one();
                    }
                    if server_write.write_all(request).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    if slow.load(Ordering::SeqCst) {
                        tokio::time::sleep(std::time::Duration::from_millis(SLOW_ANSWER_MS)).await;
                    }
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

// The old master is paused (CLIENT PAUSE WRITE) from the catch-up until it is a replica of the
// new one. The pause used to be set once, for promote_lag_max_ms + PAUSE_MARGIN_MS: a candidate
// slow to promote let it expire, the old master took writes, and its resynchronisation from
// the new master discarded them. The step now renews the pause while it runs.
#[tokio::test]
async fn redis_the_old_master_stays_paused_until_it_is_a_replica_however_slow_the_promotion() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b, c) = (free_port(), free_port(), free_port());
    let _servers = [
        start(&binary, dir.path(), "a", a, None),
        start(&binary, dir.path(), "b", b, Some(a)),
        start(&binary, dir.path(), "c", c, Some(a)),
    ];
    wait_until("a to answer", || async move { connect(a).await.is_ok() }).await;
    query::<()>(a, redis::cmd("SET").arg("session:1").arg("cart-1"))
        .await
        .expect("write to the master");
    for replica in [b, c] {
        wait_until("the replicas to sync", || async move { follows(replica, a).await }).await;
    }
    let promoting = std::sync::Arc::new(tokio::sync::Notify::new());
    let b_proxy = slow_promotion_proxy(b, promoting.clone()).await;
    std::fs::write(dir.path().join("password"), PASSWORD).expect("write password");
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{a}\"], us = [\"127.0.0.1:{b_proxy}\"], ap = [\"127.0.0.1:{c}\"] }}\n\
         username = \"{USER}\"\n\
         password = {{ file = \"{}\" }}\n\
         promote_lag_max_ms = 300\n",
        dir.path().join("password").display()
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    let step: RedisPromote = settings
        .check("sessions", &mut Strict::new(&["eu", "us", "ap"]))
        .expect("settings check");
    let run = tokio::spawn(async move { step.run(&order(3, "eu", "us", false)).await });
    tokio::time::timeout(crate::support::DEADLINE, promoting.notified())
        .await
        .expect("the step promotes b");
    // A shop's write to the old master while b is being promoted: held by the pause.
    let late = tokio::spawn(async move { query::<()>(a, redis::cmd("SET").arg("session:2").arg("late")).await });
    let outcome = run.await.expect("the step's task").expect("promoted");
    assert!(
        outcome.contains(&format!(
            "old master 127.0.0.1:{a} now replicates from 127.0.0.1:{b_proxy}"
        )),
        "{outcome}"
    );
    let late = tokio::time::timeout(crate::support::DEADLINE, late)
        .await
        .expect("the write is answered")
        .expect("the write's task");
    match late {
        // Acknowledged: it must be on the new master.
        Ok(()) => {
            let kept: Option<String> = query(b, redis::cmd("GET").arg("session:2")).await.expect("read");
            assert_eq!(
                kept.as_deref(),
                Some("late"),
                "the old master acknowledged a write the new master lacks: {outcome}"
            );
        }
        // Refused once the pause ended: the old master was a replica by then.
        Err(e) => assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e}"),
    }
}

// `switchyard guard` on Redis: the region's master has its writes paused (reads go on), a
// replica is left alone, and the unfence ends the pause of a master but never touches a
// replica.
#[tokio::test]
async fn redis_guard_pauses_the_regions_master_only_and_unpauses_only_a_master() {
    use providers::db::guard::GuardOutcome;
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b) = (free_port(), free_port());
    let _servers = [
        start(&binary, dir.path(), "a", a, None),
        start(&binary, dir.path(), "b", b, Some(a)),
    ];
    wait_until("a to answer", || async move { connect(a).await.is_ok() }).await;
    query::<()>(a, redis::cmd("SET").arg("session:1").arg("cart-1"))
        .await
        .expect("write to the master");
    wait_until("the replica to sync", || async move { follows(b, a).await }).await;
    std::fs::write(dir.path().join("password"), PASSWORD).expect("write password");
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{a}\"], us = [\"127.0.0.1:{b}\"] }}\n\
         username = \"{USER}\"\npassword = {{ file = \"{}\" }}\n",
        dir.path().join("password").display()
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    let step: RedisPromote = settings
        .check("sessions", &mut Strict::new(&["eu", "us"]))
        .expect("settings check");

    let reports = step.guard_fence("us", None).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, GuardOutcome::Refusing);
    // A master promoted under generation 4 is left alone by a fence for the move to 4.
    query::<()>(a, redis::cmd("SET").arg(RECORD_KEY).arg("4 127.0.0.1:1 eu"))
        .await
        .expect("a record");
    let reports = step.guard_fence("eu", Some(4)).await;
    assert_eq!(
        reports[0].outcome,
        GuardOutcome::Promoted { generation: 4 },
        "{reports:?}"
    );
    let reports = step.guard_fence("eu", Some(5)).await;
    assert_eq!(reports[0].outcome, GuardOutcome::Paused, "{reports:?}");
    // A write waits for the pause (nothing is acknowledged); a read is served.
    let mut set = redis::cmd("SET");
    set.arg("session:2").arg("cart-2");
    let write = query::<()>(a, &set);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1_500), write)
            .await
            .is_err(),
        "a write was acknowledged by a paused master"
    );
    let read: String = query(a, redis::cmd("GET").arg("session:1")).await.expect("a read");
    assert_eq!(read, "cart-1");

    let b_address = format!("127.0.0.1:{b}");
    let reports = step
        .guard_unfence("eu", &[format!("127.0.0.1:{a}"), b_address.clone()], Some(4))
        .await;
    assert_eq!(
        reports.len(),
        1,
        "another region's server is not this guard's: {reports:?}"
    );
    assert_eq!(reports[0].outcome, GuardOutcome::Unfenced, "{reports:?}");
    let reports = step.guard_unfence("us", &[b_address], None).await;
    assert!(
        matches!(&reports[0].outcome, GuardOutcome::Kept(why) if why.contains("replicates from")),
        "{reports:?}"
    );
    let mut set = redis::cmd("SET");
    set.arg("session:3").arg("cart-3");
    tokio::time::timeout(std::time::Duration::from_secs(5), query::<()>(a, &set))
        .await
        .expect("writes go through again")
        .expect("the write");
}
