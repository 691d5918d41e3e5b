//! PostgreSQL probe: protocol 3.0 by hand — startup, trust / cleartext / md5 / SCRAM-SHA-256
//! authentication, simple queries.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{Cursor, hmac_sha256, xor};
use super::{Finding, REPLY_BYTES_MAX, SQL_PROBE_BYTES_MAX, SqlLogin, connect, random_u64, shown, shown_rows};
use crate::report::{POSITION_LSN, ReplicationPosition};

/// Messages read while waiting for one reply (notices, parameter statuses, rows).
const MESSAGES_MAX: usize = 1024;
/// SCRAM iteration counts above this are refused (a hostile server could burn our CPU).
const SCRAM_ITERATIONS_MAX: u32 = 1_000_000;
/// What a standby's replication looks like, for [`judge_lag`]: whether the server is in
/// recovery, its received (a primary's current) and replayed LSNs, its WAL receiver's
/// `pg_stat_wal_receiver.status` (NULL without a receiver, or when the view hides it from a
/// user without `pg_read_all_stats`/`pg_monitor`) and whether a receiver runs at all (its `pid`,
/// which every user sees), the bytes of WAL received but not replayed, and the age in
/// milliseconds of the last replayed transaction (`now() - pg_last_xact_replay_timestamp()`,
/// its commit time on the primary).
const LAG_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END::text, \
     pg_last_wal_replay_lsn()::text, \
     (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
     EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL), \
     pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, \
     (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::bigint";

struct Message {
    tag: u8,
    body: Vec<u8>,
}

/// A connection and the bytes read from it so far, bounded by [`SQL_PROBE_BYTES_MAX`].
struct Connection {
    stream: TcpStream,
    bytes_read: usize,
}

impl Connection {
    async fn read_message(&mut self) -> Result<Message, String> {
        let mut header = [0u8; 5];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("read message: {e}"))?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=REPLY_BYTES_MAX).contains(&length) {
            return Err(format!("message length {length} out of range"));
        }
        self.bytes_read += 1 + length;
        if self.bytes_read > SQL_PROBE_BYTES_MAX {
            return Err(format!(
                "the server sent more than {} KiB in one probe (the bound of SQL_PROBE_BYTES_MAX)",
                SQL_PROBE_BYTES_MAX / 1024
            ));
        }
        let mut body = vec![0; length - 4];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("read message: {e}"))?;
        Ok(Message { tag: header[0], body })
    }

    async fn send(&mut self, tag: Option<u8>, body: &[u8]) -> Result<(), String> {
        let length = u32::try_from(body.len() + 4).map_err(|_| "message too large".to_string())?;
        let mut message = Vec::with_capacity(body.len() + 5);
        message.extend(tag);
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(body);
        self.stream.write_all(&message).await.map_err(|e| format!("send: {e}"))
    }
}

/// `ErrorResponse` fields as `SEVERITY CODE: message`.
fn error_text(body: &[u8]) -> String {
    let mut cursor = Cursor::new(body);
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    while let Ok(field) = cursor.u8() {
        if field == 0 {
            break;
        }
        let value = String::from_utf8_lossy(cursor.c_str()).into_owned();
        match field {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{} {}: {}", shown(&severity), shown(&code), shown(&message))
}

pub(super) async fn probe(login: &SqlLogin<'_>, read_lag: bool) -> Finding {
    match session(login, read_lag).await {
        Ok(finding) => finding,
        Err(error) => Finding::down(error),
    }
}

async fn session(login: &SqlLogin<'_>, read_lag: bool) -> Result<Finding, String> {
    let stream = connect(login.address).await?;
    let mut connection = Connection { stream, bytes_read: 0 };
    let version = shown(&startup(&mut connection, login).await?);
    let rows = query(&mut connection, "SELECT 1", "SELECT 1").await?;
    if rows.first().and_then(|row| row.first()).and_then(|v| v.as_deref()) != Some("1") {
        return Ok(Finding::down(format!("SELECT 1 returned {}", shown_rows(&rows))));
    }
    if !read_lag {
        let _ = connection.send(Some(b'X'), &[]).await;
        return Ok(Finding::up(format!("SELECT 1 ok (PostgreSQL {version})")));
    }
    let rows = query(&mut connection, "the replication query", LAG_QUERY).await?;
    let _ = connection.send(Some(b'X'), &[]).await;
    let row = rows.first().ok_or("the replication query returned no row")?;
    let text = |index: usize| row.get(index).and_then(|v| v.as_deref());
    let number = |index: usize| text(index).and_then(|v| v.parse::<i64>().ok());
    let replica = text(0) == Some("t");
    let role = if replica { "replica" } else { "primary" };
    // A standby that has not received anything yet has no receive LSN: its replay LSN is what
    // it holds.
    let replayed = text(2);
    let received = text(1).or(replayed).unwrap_or("");
    let position = ReplicationPosition::new(role, POSITION_LSN, received, replayed.filter(|_| replica));
    let at = position
        .as_ref()
        .map(|p| format!(" at LSN {}", shown(&p.received)))
        .unwrap_or_default();
    let standby = Standby {
        replica,
        receiver_status: text(3),
        receiver_running: text(4) == Some("t"),
        pending_bytes: number(5),
        replay_age_ms: number(6),
    };
    let (lag, reading) = judge_lag(&standby, login.user);
    Ok(
        Finding::up(format!("SELECT 1 ok (PostgreSQL {version}), {role}{at}, {reading}"))
            .with_lag(lag)
            .with_position(position),
    )
}

/// A server's replication state as [`LAG_QUERY`] reads it.
#[derive(Debug, Clone, Copy)]
struct Standby<'a> {
    replica: bool,
    receiver_status: Option<&'a str>,
    receiver_running: bool,
    pending_bytes: Option<i64>,
    replay_age_ms: Option<i64>,
}

/// The replication lag in milliseconds, and the words for the detail:
///
/// - a primary: 0;
/// - a standby whose WAL receiver is not `streaming` (none at all — the primary is down or
///   unreachable and the receiver exited — or `starting`, `waiting`, `stopping`…): unknown. Its
///   receive LSN stays at the last record it got, so once replay catches up received = replayed
///   says nothing about the primary;
/// - a standby whose receiver's status is hidden from `user` (only `pid` is shown without
///   `pg_read_all_stats`): unknown, with what to grant;
/// - streaming with all received WAL replayed: 0 (nothing pending; the time since the last
///   replayed commit is only how long the primary has been idle);
/// - streaming with WAL still to replay: `now() - pg_last_xact_replay_timestamp()` — the age of
///   the last replayed commit, an upper bound of the age of the oldest one still to replay (after
///   an idle spell it reads the idle time until replay catches up); unknown when nothing was
///   replayed since the standby started, or when that commit is in the future (clock skew).
fn judge_lag(standby: &Standby<'_>, user: &str) -> (Option<u64>, String) {
    if !standby.replica {
        return (Some(0), "lag 0 ms".to_string());
    }
    match (standby.receiver_status, standby.receiver_running) {
        (Some("streaming"), _) => {}
        (Some(status), _) => {
            return (
                None,
                format!("lag unknown: the WAL receiver is {}, not streaming", shown(status)),
            );
        }
        (None, true) => {
            return (
                None,
                format!(
                    "lag unknown: pg_stat_wal_receiver hides the WAL receiver's status from '{}' \
                     (GRANT pg_monitor TO it)",
                    shown(user)
                ),
            );
        }
        (None, false) => {
            return (
                None,
                "lag unknown: no WAL receiver, not streaming (primary down or unreachable?)".to_string(),
            );
        }
    }
    match (standby.pending_bytes, standby.replay_age_ms) {
        (Some(0), _) => (Some(0), "streaming, all received WAL replayed, lag 0 ms".to_string()),
        (Some(pending), Some(age)) if age >= 0 => (
            Some(age as u64),
            format!("streaming, {pending} bytes of WAL to replay, lag {age} ms (age of the last replayed commit)"),
        ),
        (Some(pending), Some(age)) => (
            None,
            format!(
                "lag unknown: {pending} bytes of WAL to replay and the last replayed commit is {} ms \
                 in the future (clock skew?)",
                age.unsigned_abs()
            ),
        ),
        (Some(pending), None) => (
            None,
            format!("lag unknown: {pending} bytes of WAL to replay, no transaction replayed since startup"),
        ),
        (None, _) => (None, "lag unknown: streaming, nothing received yet".to_string()),
    }
}

/// Logs in; returns the server version.
async fn startup(connection: &mut Connection, login: &SqlLogin<'_>) -> Result<String, String> {
    let mut body = Vec::with_capacity(96);
    body.extend_from_slice(&196_608u32.to_be_bytes());
    let mut pairs = vec![("user", login.user), ("application_name", "switchyard-health")];
    if let Some(database) = login.database {
        pairs.push(("database", database));
    }
    for (key, value) in pairs {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    connection.send(None, &body).await?;
    let mut scram: Option<Scram> = None;
    let mut version = String::from("?");
    for _ in 0..MESSAGES_MAX {
        let message = connection.read_message().await?;
        match message.tag {
            b'E' => {
                return Err(format!(
                    "login as '{}' refused: {}",
                    login.user,
                    error_text(&message.body)
                ));
            }
            b'R' => {
                let mut cursor = Cursor::new(&message.body);
                let code = u32::from_be_bytes(cursor.take(4)?.try_into().map_err(|_| "cut")?);
                match code {
                    0 => {}
                    3 => connection.send(Some(b'p'), &c_string(login.password)).await?,
                    5 => {
                        let salt = cursor.take(4)?;
                        let inner = hex::encode(Md5::digest(format!("{}{}", login.password, login.user)));
                        let mut outer = Md5::new();
                        outer.update(inner.as_bytes());
                        outer.update(salt);
                        let hashed = format!("md5{}", hex::encode(outer.finalize()));
                        connection.send(Some(b'p'), &c_string(&hashed)).await?;
                    }
                    10 => {
                        let mechanisms = cursor.rest();
                        if !mechanisms.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256") {
                            return Err("the server offers no SCRAM-SHA-256 (channel binding only?)".into());
                        }
                        let state = Scram::new();
                        let first = state.client_first();
                        let mut body = c_string("SCRAM-SHA-256");
                        body.extend_from_slice(&(first.len() as u32).to_be_bytes());
                        body.extend_from_slice(first.as_bytes());
                        connection.send(Some(b'p'), &body).await?;
                        scram = Some(state);
                    }
                    11 => {
                        let state = scram.as_mut().ok_or("SCRAM continue before start")?;
                        let server_first = String::from_utf8_lossy(cursor.rest()).into_owned();
                        let client_final = state.client_final(&server_first, login.password)?;
                        connection.send(Some(b'p'), client_final.as_bytes()).await?;
                    }
                    12 => {
                        let state = scram.as_ref().ok_or("SCRAM final before start")?;
                        state.verify_server(&String::from_utf8_lossy(cursor.rest()))?;
                    }
                    other => {
                        return Err(format!(
                            "authentication method {other} is not supported; use trust, password, md5 or scram-sha-256"
                        ));
                    }
                }
            }
            b'S' => {
                let mut cursor = Cursor::new(&message.body);
                if cursor.c_str() == b"server_version" {
                    version = String::from_utf8_lossy(cursor.c_str()).into_owned();
                }
            }
            b'Z' => return Ok(version),
            _ => {} // BackendKeyData, notices
        }
    }
    Err("login did not finish".into())
}

fn c_string(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Runs a simple query (`what` names it in errors); returns its rows as text.
async fn query(connection: &mut Connection, what: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    connection.send(Some(b'Q'), &c_string(sql)).await?;
    let mut rows = Vec::new();
    let mut error = None;
    for _ in 0..MESSAGES_MAX {
        let message = connection.read_message().await.map_err(|e| format!("{what}: {e}"))?;
        match message.tag {
            b'D' => {
                let mut cursor = Cursor::new(&message.body);
                let count = u16::from_be_bytes(cursor.take(2)?.try_into().map_err(|_| "cut")?);
                let mut row = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let length = i32::from_be_bytes(cursor.take(4)?.try_into().map_err(|_| "cut")?);
                    row.push(match usize::try_from(length) {
                        Ok(length) => Some(String::from_utf8_lossy(cursor.take(length)?).into_owned()),
                        Err(_) => None,
                    });
                }
                rows.push(row);
            }
            b'E' => error = Some(error_text(&message.body)),
            b'Z' => {
                return match error {
                    Some(error) => Err(format!("{what}: {error}")),
                    None => Ok(rows),
                };
            }
            _ => {} // RowDescription, CommandComplete, notices
        }
    }
    Err(format!("{what}: more than {MESSAGES_MAX} messages"))
}

/// The client side of SCRAM-SHA-256 (RFC 5802/7677) without channel binding.
struct Scram {
    client_nonce: String,
    auth_message: String,
    server_signature: Vec<u8>,
}

impl Scram {
    fn new() -> Scram {
        let nonce: Vec<u8> = [random_u64(), random_u64(), random_u64()]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect();
        Scram {
            client_nonce: BASE64.encode(nonce),
            auth_message: String::new(),
            server_signature: Vec::new(),
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.client_nonce)
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare())
    }

    fn client_final(&mut self, server_first: &str, password: &str) -> Result<String, String> {
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("SCRAM server-first lacks '{name}'"))
        };
        let nonce = field("r")?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err("SCRAM server nonce does not extend ours".into());
        }
        let salt = BASE64
            .decode(field("s")?)
            .map_err(|_| "SCRAM salt is not base64".to_string())?;
        let iterations: u32 = field("i")?.parse().map_err(|_| "SCRAM iteration count".to_string())?;
        if !(1..=SCRAM_ITERATIONS_MAX).contains(&iterations) {
            return Err(format!("SCRAM iteration count {iterations} out of range"));
        }
        let salted = pbkdf2_sha256(password.as_bytes(), &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare());
        let client_signature = hmac_sha256(&stored_key, self.auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        let server_key = hmac_sha256(&salted, b"Server Key");
        self.server_signature = hmac_sha256(&server_key, self.auth_message.as_bytes());
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    fn verify_server(&self, server_final: &str) -> Result<(), String> {
        let signature = server_final
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v.trim_end_matches('\0')).ok())
            .ok_or_else(|| format!("SCRAM server-final '{}' is malformed", shown(server_final)))?;
        if signature != self.server_signature {
            return Err("SCRAM server signature does not match: not the server we think".into());
        }
        Ok(())
    }
}

/// PBKDF2-HMAC-SHA256 with one output block (32 bytes), as SCRAM-SHA-256 uses it.
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &block);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1), first 32 bytes.
        let out = pbkdf2_sha256(b"passwd", b"salt", 1);
        assert_eq!(
            hex::encode(out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn scram_matches_rfc7677_example() {
        // RFC 7677 section 3 (user "user", password "pencil").
        let mut scram = Scram {
            client_nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            auth_message: String::new(),
            server_signature: Vec::new(),
        };
        // The RFC's client-first-bare carries n=user; PostgreSQL sends n= (it ignores it).
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_message = scram.client_final(server_first, "pencil").expect("valid");
        assert!(final_message.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
        // With the RFC's exact auth message the proof is the RFC's.
        scram.auth_message = String::new();
        let salted = pbkdf2_sha256(
            b"pencil",
            &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64"),
            4096,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = xor(&client_key, &hmac_sha256(&Sha256::digest(&client_key), auth.as_bytes()));
        assert_eq!(BASE64.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(scram.client_final("r=someone-else,s=AA==,i=1", "x").is_err());
        assert!(
            scram
                .client_final("r=rOprNGfwEbeRWgbNEkqO1,s=AA==,i=99999999", "x")
                .is_err()
        );
    }

    fn standby(status: Option<&str>, running: bool, pending: Option<i64>, age: Option<i64>) -> Standby<'_> {
        Standby {
            replica: true,
            receiver_status: status,
            receiver_running: running,
            pending_bytes: pending,
            replay_age_ms: age,
        }
    }

    #[test]
    fn a_standby_that_is_not_streaming_has_no_known_lag() {
        // Cut off long ago, everything it got replayed: received = replayed, yet not 0.
        let (lag, words) = judge_lag(&standby(None, false, Some(0), Some(3_600_000)), "probe");
        assert_eq!(lag, None);
        assert!(words.contains("no WAL receiver"), "{words}");
        for status in ["starting", "waiting", "restarting", "stopping", "stopped"] {
            let (lag, words) = judge_lag(&standby(Some(status), true, Some(0), Some(5)), "probe");
            assert_eq!(lag, None, "{status}");
            assert!(
                words.contains(&format!("WAL receiver is {status}, not streaming")),
                "{words}"
            );
        }
        // Without pg_read_all_stats the view shows the receiver's pid only.
        let (lag, words) = judge_lag(&standby(None, true, Some(0), Some(5)), "probe");
        assert_eq!(lag, None);
        assert!(
            words.contains("GRANT pg_monitor TO it") && words.contains("'probe'"),
            "{words}"
        );
    }

    #[test]
    fn a_streaming_standby_reads_zero_when_caught_up_and_the_replay_age_otherwise() {
        // Idle for an hour, nothing pending: 0, not the idle time.
        let (lag, words) = judge_lag(&standby(Some("streaming"), true, Some(0), Some(3_600_000)), "p");
        assert_eq!(lag, Some(0));
        assert!(words.contains("all received WAL replayed"), "{words}");
        let (lag, words) = judge_lag(&standby(Some("streaming"), true, Some(8192), Some(1500)), "p");
        assert_eq!(lag, Some(1500));
        assert!(words.contains("8192 bytes of WAL to replay, lag 1500 ms"), "{words}");
        assert_eq!(
            judge_lag(&standby(Some("streaming"), true, Some(8192), None), "p").0,
            None
        );
        let (lag, words) = judge_lag(&standby(Some("streaming"), true, Some(8192), Some(-200)), "p");
        assert_eq!(lag, None);
        assert!(words.contains("clock skew"), "{words}");
        assert_eq!(judge_lag(&standby(Some("streaming"), true, None, None), "p").0, None);
        let primary = Standby {
            replica: false,
            ..standby(None, false, None, None)
        };
        assert_eq!(judge_lag(&primary, "p").0, Some(0));
    }

    /// A PostgreSQL message: tag, length, body.
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&(u32::try_from(body.len() + 4).expect("small")).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// Answers one query with `rows` DataRow messages of one `value_bytes`-byte column each.
    async fn serve_rows(rows: usize, value_bytes: usize) -> Connection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut row = 1u16.to_be_bytes().to_vec();
            row.extend_from_slice(&(u32::try_from(value_bytes).expect("small")).to_be_bytes());
            row.extend(std::iter::repeat_n(b'x', value_bytes));
            let mut reply = Vec::new();
            for _ in 0..rows {
                reply.extend(message(b'D', &row));
            }
            reply.extend(message(b'Z', b"I"));
            // Read the query first (unread data would make our close a reset), then answer; the
            // client may stop reading and close, so a failed write is expected then.
            let mut query = [0u8; 64];
            let _ = stream.read(&mut query).await;
            let _ = stream.write_all(&reply).await;
            let _ = stream.read(&mut query).await;
        });
        let stream = connect(&address.to_string()).await.expect("connect");
        Connection { stream, bytes_read: 0 }
    }

    #[tokio::test]
    async fn a_result_beyond_the_probe_byte_bound_fails_the_probe() {
        let value = 200 * 1024;
        let mut within = serve_rows(SQL_PROBE_BYTES_MAX / value - 1, value).await;
        let rows = query(&mut within, "the test query", "SELECT x")
            .await
            .expect("within the bound");
        assert_eq!(rows.len(), SQL_PROBE_BYTES_MAX / value - 1);
        let mut beyond = serve_rows(SQL_PROBE_BYTES_MAX / value + 1, value).await;
        let error = query(&mut beyond, "the test query", "SELECT x")
            .await
            .expect_err("beyond the bound");
        assert!(
            error.starts_with("the test query: the server sent more than 1024 KiB in one probe"),
            "{error}"
        );
    }

    #[test]
    fn server_errors_are_cut() {
        let mut body = b"SERROR\0C42000\0M".to_vec();
        body.extend(std::iter::repeat_n(b'm', 200_000));
        body.extend_from_slice(b"\0\0");
        let text = error_text(&body);
        assert!(text.starts_with("ERROR 42000: mmm"), "{}", &text[..40]);
        assert!(text.chars().count() < 200, "{} characters", text.chars().count());
        assert!(text.ends_with('…'));
    }
}
