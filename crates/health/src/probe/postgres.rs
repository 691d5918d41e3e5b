//! PostgreSQL probe: protocol 3.0 by hand — startup, trust / cleartext / md5 / SCRAM-SHA-256
//! authentication, simple queries.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{Cursor, hmac_sha256, xor};
use super::{Finding, REPLY_BYTES_MAX, SqlLogin, connect, random_u64};
use crate::report::{POSITION_LSN, ReplicationPosition};

/// Messages read while waiting for one reply (notices, parameter statuses, rows).
const MESSAGES_MAX: usize = 1024;
/// SCRAM iteration counts above this are refused (a hostile server could burn our CPU).
const SCRAM_ITERATIONS_MAX: u32 = 1_000_000;
/// Replica lag in milliseconds; 0 on a primary and on a replica that replayed all it received.
const LAG_QUERY: &str = "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 \
     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
     ELSE COALESCE(EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000, -1) END::bigint, \
     pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END::text, \
     pg_last_wal_replay_lsn()::text";

struct Message {
    tag: u8,
    body: Vec<u8>,
}

async fn read_message(stream: &mut TcpStream) -> Result<Message, String> {
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("read message: {e}"))?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=REPLY_BYTES_MAX).contains(&length) {
        return Err(format!("message length {length} out of range"));
    }
    let mut body = vec![0; length - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read message: {e}"))?;
    Ok(Message { tag: header[0], body })
}

async fn send(stream: &mut TcpStream, tag: Option<u8>, body: &[u8]) -> Result<(), String> {
    let length = u32::try_from(body.len() + 4).map_err(|_| "message too large".to_string())?;
    let mut message = Vec::with_capacity(body.len() + 5);
    message.extend(tag);
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(body);
    stream.write_all(&message).await.map_err(|e| format!("send: {e}"))
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
    format!("{severity} {code}: {message}")
}

pub(super) async fn probe(login: &SqlLogin<'_>, read_lag: bool) -> Finding {
    match session(login, read_lag).await {
        Ok(finding) => finding,
        Err(error) => Finding::down(error),
    }
}

async fn session(login: &SqlLogin<'_>, read_lag: bool) -> Result<Finding, String> {
    let mut stream = connect(login.address).await?;
    let version = startup(&mut stream, login).await?;
    let rows = query(&mut stream, "SELECT 1").await?;
    if rows.first().and_then(|row| row.first()).and_then(|v| v.as_deref()) != Some("1") {
        return Ok(Finding::down(format!("SELECT 1 returned {rows:?}")));
    }
    if !read_lag {
        let _ = send(&mut stream, Some(b'X'), &[]).await;
        return Ok(Finding::up(format!("SELECT 1 ok (PostgreSQL {version})")));
    }
    let rows = query(&mut stream, LAG_QUERY).await?;
    let _ = send(&mut stream, Some(b'X'), &[]).await;
    let row = rows.first().ok_or("the lag query returned no row")?;
    let lag = row
        .first()
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse::<i64>().ok());
    let replica = row.get(1).and_then(|v| v.as_deref()) == Some("t");
    let role = if replica { "replica" } else { "primary" };
    // A standby that has not received anything yet has no receive LSN: its replay LSN is what
    // it holds.
    let replayed = row.get(3).and_then(|v| v.as_deref());
    let received = row.get(2).and_then(|v| v.as_deref()).or(replayed).unwrap_or("");
    let position = ReplicationPosition::new(role, POSITION_LSN, received, replayed.filter(|_| replica));
    let at = position
        .as_ref()
        .map(|p| format!(" at LSN {}", p.received))
        .unwrap_or_default();
    let role = format!("{role}{at}");
    Ok(match lag {
        Some(lag) if lag >= 0 => {
            Finding::up(format!("SELECT 1 ok (PostgreSQL {version}), {role}, lag {lag} ms")).with_lag(Some(lag as u64))
        }
        _ => Finding::up(format!(
            "SELECT 1 ok (PostgreSQL {version}), {role}, lag unknown (nothing replayed yet?)"
        )),
    }
    .with_position(position))
}

/// Logs in; returns the server version.
async fn startup(stream: &mut TcpStream, login: &SqlLogin<'_>) -> Result<String, String> {
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
    send(stream, None, &body).await?;
    let mut scram: Option<Scram> = None;
    let mut version = String::from("?");
    for _ in 0..MESSAGES_MAX {
        let message = read_message(stream).await?;
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
                    3 => send(stream, Some(b'p'), &c_string(login.password)).await?,
                    5 => {
                        let salt = cursor.take(4)?;
                        let inner = hex::encode(Md5::digest(format!("{}{}", login.password, login.user)));
                        let mut outer = Md5::new();
                        outer.update(inner.as_bytes());
                        outer.update(salt);
                        let hashed = format!("md5{}", hex::encode(outer.finalize()));
                        send(stream, Some(b'p'), &c_string(&hashed)).await?;
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
                        send(stream, Some(b'p'), &body).await?;
                        scram = Some(state);
                    }
                    11 => {
                        let state = scram.as_mut().ok_or("SCRAM continue before start")?;
                        let server_first = String::from_utf8_lossy(cursor.rest()).into_owned();
                        let client_final = state.client_final(&server_first, login.password)?;
                        send(stream, Some(b'p'), client_final.as_bytes()).await?;
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

/// Runs a simple query; returns its rows as text.
async fn query(stream: &mut TcpStream, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    send(stream, Some(b'Q'), &c_string(sql)).await?;
    let mut rows = Vec::new();
    let mut error = None;
    for _ in 0..MESSAGES_MAX {
        let message = read_message(stream).await?;
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
                    Some(error) => Err(format!("{sql}: {error}")),
                    None => Ok(rows),
                };
            }
            _ => {} // RowDescription, CommandComplete, notices
        }
    }
    Err(format!("{sql}: more than {MESSAGES_MAX} messages"))
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
            .ok_or_else(|| format!("SCRAM server-final '{server_final}' is malformed"))?;
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
}
