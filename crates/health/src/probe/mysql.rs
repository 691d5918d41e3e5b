//! MariaDB/MySQL probe: the client/server protocol by hand — handshake v10,
//! `mysql_native_password` or `caching_sha2_password` (fast path), `COM_QUERY`.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{Cursor, xor};
use super::{Finding, REPLY_BYTES_MAX, SQL_PROBE_BYTES_MAX, SqlLogin, connect, cut, shown, shown_rows};
use crate::report::{POSITION_GTID, ReplicationPosition};

const CLIENT_LONG_PASSWORD: u32 = 1;
const CLIENT_LONG_FLAG: u32 = 4;
const CLIENT_CONNECT_WITH_DB: u32 = 8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
/// utf8mb4_general_ci.
const CHARSET_UTF8MB4: u8 = 45;
/// Packets of one result set read at most (columns + rows + terminators).
const RESULT_PACKETS_MAX: usize = 1024;
/// Authentication round trips (plugin switches, extra data) before giving up.
const AUTH_ROUNDS_MAX: usize = 4;

/// A connection, its packet sequence and the bytes read from it so far, bounded by
/// [`SQL_PROBE_BYTES_MAX`].
struct Connection {
    stream: TcpStream,
    sequence: u8,
    bytes_read: usize,
}

impl Connection {
    async fn read_packet(&mut self) -> Result<Vec<u8>, String> {
        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("read packet: {e}"))?;
        let length = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if length > REPLY_BYTES_MAX {
            return Err(format!("packet of {length} bytes exceeds {REPLY_BYTES_MAX}"));
        }
        self.bytes_read += 4 + length;
        if self.bytes_read > SQL_PROBE_BYTES_MAX {
            return Err(format!(
                "the server sent more than {} KiB in one probe (the bound of SQL_PROBE_BYTES_MAX)",
                SQL_PROBE_BYTES_MAX / 1024
            ));
        }
        self.sequence = header[3].wrapping_add(1);
        let mut payload = vec![0; length];
        self.stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("read packet: {e}"))?;
        Ok(payload)
    }

    async fn write_packet(&mut self, payload: &[u8]) -> Result<(), String> {
        let length = u32::try_from(payload.len()).map_err(|_| "packet too large".to_string())?;
        let mut packet = Vec::with_capacity(payload.len() + 4);
        packet.extend_from_slice(&length.to_le_bytes()[..3]);
        packet.push(self.sequence);
        packet.extend_from_slice(payload);
        self.sequence = self.sequence.wrapping_add(1);
        self.stream
            .write_all(&packet)
            .await
            .map_err(|e| format!("send packet: {e}"))
    }
}

/// The server's error packet as `ERROR code (state): message`.
fn error_text(packet: &[u8]) -> String {
    let mut cursor = Cursor::new(packet);
    let _ = cursor.u8();
    let code = cursor.take(2).map(|b| u16::from_le_bytes([b[0], b[1]])).unwrap_or(0);
    let mut rest = cursor.rest();
    let mut state = String::new();
    if rest.first() == Some(&b'#') && rest.len() >= 6 {
        state = String::from_utf8_lossy(&rest[1..6]).into_owned();
        rest = &rest[6..];
    }
    format!(
        "ERROR {code} ({}): {}",
        shown(&state),
        shown(&String::from_utf8_lossy(rest))
    )
}

pub(super) async fn probe(login: &SqlLogin<'_>, read_lag: bool) -> Finding {
    match session(login, read_lag).await {
        Ok(finding) => finding,
        Err(error) => Finding::down(error),
    }
}

/// Characters of a GTID position shown in a detail.
const GTID_SHOWN_CHARS_MAX: usize = 200;

async fn session(login: &SqlLogin<'_>, read_lag: bool) -> Result<Finding, String> {
    let stream = connect(login.address).await?;
    let mut connection = Connection {
        stream,
        sequence: 0,
        bytes_read: 0,
    };
    let version = shown(&handshake(&mut connection, login).await?);
    let rows = query(&mut connection, "SELECT 1").await?;
    if rows.rows.first().and_then(|row| row.first()).and_then(|v| v.as_deref()) != Some("1") {
        return Ok(Finding::down(format!(
            "SELECT 1 on {version} returned {}",
            shown_rows(&rows.rows)
        )));
    }
    if !read_lag {
        let _ = connection.write_packet_fresh(&[0x01]).await;
        return Ok(Finding::up(format!("SELECT 1 ok ({version})")));
    }
    let status = match query(&mut connection, "SHOW REPLICA STATUS").await {
        Ok(status) => status,
        Err(_) => query(&mut connection, "SHOW SLAVE STATUS").await?,
    };
    let Some(row) = status.rows.first() else {
        // A primary: its GTID position is what every replica is compared with.
        let statement = if version.contains("MariaDB") {
            "SELECT @@GLOBAL.gtid_binlog_pos"
        } else {
            "SELECT @@GLOBAL.gtid_executed"
        };
        let written = query(&mut connection, statement)
            .await
            .ok()
            .and_then(|set| set.rows.first().and_then(|row| row.first()).cloned().flatten());
        let _ = connection.write_packet_fresh(&[0x01]).await;
        let position = written
            .as_deref()
            .and_then(|w| ReplicationPosition::new("primary", POSITION_GTID, w, None));
        let at = position
            .as_ref()
            .map(|p| format!(", GTID position {}", shown_gtids(&p.received)))
            .unwrap_or_default();
        return Ok(Finding::up(format!("SELECT 1 ok ({version}), not a replica{at}"))
            .with_lag(Some(0))
            .with_position(position));
    };
    let _ = connection.write_packet_fresh(&[0x01]).await;
    let cell = |names: [&str; 2]| {
        status
            .columns
            .iter()
            .position(|name| name == names[0] || name == names[1])
            .and_then(|index| row.get(index))
            .and_then(|value| value.as_deref())
    };
    let position = cell(["Gtid_IO_Pos", "Retrieved_Gtid_Set"]).and_then(|received| {
        ReplicationPosition::new(
            "replica",
            POSITION_GTID,
            received,
            cell(["Gtid_Slave_Pos", "Executed_Gtid_Set"]),
        )
    });
    let column = status
        .columns
        .iter()
        .position(|name| name == "Seconds_Behind_Master" || name == "Seconds_Behind_Source");
    let seconds = column
        .and_then(|index| row.get(index))
        .and_then(|value| value.as_deref())
        .and_then(|text| text.parse::<u64>().ok());
    // The GTIDs received (MariaDB `Gtid_IO_Pos`, MySQL `Retrieved_Gtid_Set`), when the row has
    // them: what a promotion of this replica would keep.
    let received = status
        .columns
        .iter()
        .position(|name| name == "Gtid_IO_Pos" || name == "Retrieved_Gtid_Set")
        .and_then(|index| row.get(index))
        .and_then(|value| value.as_deref())
        .filter(|text| !text.is_empty())
        .map(|text| format!(", received GTIDs {}", shown_gtids(text)))
        .unwrap_or_default();
    Ok(match seconds {
        Some(seconds) => Finding::up(format!("SELECT 1 ok ({version}), replica {seconds} s behind{received}"))
            .with_lag(Some(seconds.saturating_mul(1000))),
        None => Finding::up(format!(
            "SELECT 1 ok ({version}), replica lag unknown (replication stopped?){received}"
        )),
    }
    .with_position(position))
}

/// A GTID position for the detail line, cut at [`GTID_SHOWN_CHARS_MAX`] with `…`.
fn shown_gtids(text: &str) -> String {
    cut(text, GTID_SHOWN_CHARS_MAX)
}

impl Connection {
    /// Sends a command packet (sequence restarts at 0).
    async fn write_packet_fresh(&mut self, payload: &[u8]) -> Result<(), String> {
        self.sequence = 0;
        self.write_packet(payload).await
    }
}

/// Reads the server greeting, logs in; returns the server version.
async fn handshake(connection: &mut Connection, login: &SqlLogin<'_>) -> Result<String, String> {
    let greeting = connection.read_packet().await?;
    if greeting.first() == Some(&0xff) {
        return Err(format!("server refused the connection: {}", error_text(&greeting)));
    }
    let mut cursor = Cursor::new(&greeting);
    let protocol = cursor.u8()?;
    if protocol != 10 {
        return Err(format!("unsupported protocol version {protocol} (not MySQL/MariaDB?)"));
    }
    let version = String::from_utf8_lossy(cursor.c_str()).into_owned();
    cursor.take(4)?; // connection id
    let mut scramble = cursor.take(8)?.to_vec();
    cursor.take(1)?;
    let low = cursor.take(2)?;
    let mut capabilities = u32::from(u16::from_le_bytes([low[0], low[1]]));
    let mut plugin = "mysql_native_password".to_string();
    if !cursor.is_empty() {
        cursor.take(3)?; // charset, status
        let high = cursor.take(2)?;
        capabilities |= u32::from(u16::from_le_bytes([high[0], high[1]])) << 16;
        let data_length = usize::from(cursor.u8()?);
        cursor.take(10)?;
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let part = data_length.saturating_sub(8).max(13);
            let data = cursor.take(part.min(cursor.len()))?;
            scramble.extend_from_slice(data.strip_suffix(&[0]).unwrap_or(data));
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            plugin = String::from_utf8_lossy(cursor.c_str()).into_owned();
        }
    }
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(format!("server {} does not speak protocol 4.1", shown(&version)));
    }
    let mut flags = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH;
    if login.database.is_some() {
        flags |= CLIENT_CONNECT_WITH_DB;
    }
    let auth = scramble_for(&plugin, login.password, &scramble)?;
    let mut response = Vec::with_capacity(128);
    response.extend_from_slice(&flags.to_le_bytes());
    response.extend_from_slice(&(16u32 * 1024 * 1024).to_le_bytes());
    response.push(CHARSET_UTF8MB4);
    response.extend_from_slice(&[0; 23]);
    response.extend_from_slice(login.user.as_bytes());
    response.push(0);
    response.push(u8::try_from(auth.len()).map_err(|_| "auth response too long".to_string())?);
    response.extend_from_slice(&auth);
    if let Some(database) = login.database {
        response.extend_from_slice(database.as_bytes());
        response.push(0);
    }
    response.extend_from_slice(plugin.as_bytes());
    response.push(0);
    connection.write_packet(&response).await?;
    for _ in 0..AUTH_ROUNDS_MAX {
        let packet = connection.read_packet().await?;
        match packet.first() {
            Some(0x00) => return Ok(version),
            Some(0xff) => return Err(format!("login as '{}' refused: {}", login.user, error_text(&packet))),
            Some(0xfe) => {
                // Auth switch: another plugin with a fresh scramble.
                let mut cursor = Cursor::new(&packet[1..]);
                plugin = String::from_utf8_lossy(cursor.c_str()).into_owned();
                let data = cursor.rest();
                let scramble = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
                let auth = scramble_for(&plugin, login.password, &scramble)?;
                connection.write_packet(&auth).await?;
            }
            Some(0x01) => match packet.get(1) {
                Some(0x03) => {} // caching_sha2 fast path succeeded; OK follows
                Some(0x04) => {
                    return Err(format!(
                        "user '{}' needs caching_sha2_password full authentication, which needs TLS; \
                         create the probe user WITH mysql_native_password or log in once to fill the cache",
                        login.user
                    ));
                }
                _ => return Err("unexpected authentication data from the server".into()),
            },
            _ => return Err("unexpected packet during login".into()),
        }
    }
    Err(format!("login did not finish within {AUTH_ROUNDS_MAX} rounds"))
}

fn scramble_for(plugin: &str, password: &str, scramble: &[u8]) -> Result<Vec<u8>, String> {
    if password.is_empty() {
        return Ok(Vec::new());
    }
    match plugin {
        "mysql_native_password" => {
            let stage1 = Sha1::digest(password.as_bytes());
            let stage2 = Sha1::digest(stage1);
            let mut hasher = Sha1::new();
            hasher.update(scramble);
            hasher.update(stage2);
            Ok(xor(&stage1, &hasher.finalize()))
        }
        "caching_sha2_password" => {
            let stage1 = Sha256::digest(password.as_bytes());
            let stage2 = Sha256::digest(stage1);
            let mut hasher = Sha256::new();
            hasher.update(stage2);
            hasher.update(scramble);
            Ok(xor(&stage1, &hasher.finalize()))
        }
        other => Err(format!(
            "authentication plugin '{}' is not supported; use mysql_native_password for the probe user",
            shown(other)
        )),
    }
}

#[derive(Debug)]
struct ResultSet {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

/// Reads a length-encoded integer.
fn lenenc_int(cursor: &mut Cursor<'_>) -> Result<Option<u64>, String> {
    let first = cursor.u8()?;
    let value = match first {
        0xfb => return Ok(None),
        0xfc => u64::from(u16::from_le_bytes(cursor.take(2)?.try_into().map_err(|_| "cut")?)),
        0xfd => {
            let b = cursor.take(3)?;
            u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16
        }
        0xfe => u64::from_le_bytes(cursor.take(8)?.try_into().map_err(|_| "cut")?),
        small => u64::from(small),
    };
    Ok(Some(value))
}

fn lenenc_str(cursor: &mut Cursor<'_>) -> Result<Option<String>, String> {
    match lenenc_int(cursor)? {
        None => Ok(None),
        Some(length) => {
            let length = usize::try_from(length).map_err(|_| "length overflow".to_string())?;
            Ok(Some(String::from_utf8_lossy(cursor.take(length)?).into_owned()))
        }
    }
}

fn is_eof(packet: &[u8]) -> bool {
    packet.first() == Some(&0xfe) && packet.len() < 9
}

/// Runs `sql` (our own short statement, named in errors); reads its result set.
async fn query(connection: &mut Connection, sql: &str) -> Result<ResultSet, String> {
    read_result(connection, sql).await.map_err(|e| format!("{sql}: {e}"))
}

async fn read_result(connection: &mut Connection, sql: &str) -> Result<ResultSet, String> {
    let mut command = vec![0x03];
    command.extend_from_slice(sql.as_bytes());
    connection.write_packet_fresh(&command).await?;
    let first = connection.read_packet().await?;
    match first.first() {
        Some(0xff) => return Err(error_text(&first)),
        Some(0x00) => {
            return Ok(ResultSet {
                columns: Vec::new(),
                rows: Vec::new(),
            });
        }
        _ => {}
    }
    let count = lenenc_int(&mut Cursor::new(&first))?.ok_or("bad column count")?;
    let count = usize::try_from(count).map_err(|_| "column count overflow".to_string())?;
    if count > RESULT_PACKETS_MAX {
        return Err(format!("{count} columns"));
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let packet = connection.read_packet().await?;
        let mut cursor = Cursor::new(&packet);
        for _ in 0..4 {
            lenenc_str(&mut cursor)?; // catalog, schema, table, org_table
        }
        columns.push(lenenc_str(&mut cursor)?.unwrap_or_default());
    }
    let terminator = connection.read_packet().await?;
    if !is_eof(&terminator) {
        return Err("expected EOF after column definitions".to_string());
    }
    let mut rows = Vec::new();
    for _ in 0..RESULT_PACKETS_MAX {
        let packet = connection.read_packet().await?;
        if is_eof(&packet) {
            return Ok(ResultSet { columns, rows });
        }
        if packet.first() == Some(&0xff) {
            return Err(error_text(&packet));
        }
        let mut cursor = Cursor::new(&packet);
        let mut row = Vec::with_capacity(count);
        for _ in 0..count {
            row.push(lenenc_str(&mut cursor)?);
        }
        rows.push(row);
    }
    Err(format!("more than {RESULT_PACKETS_MAX} rows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_scramble_matches_the_reference() {
        // The server stores SHA1(SHA1(password)); it checks SHA1(scramble ++ stored) XOR response
        // == SHA1(password), whose SHA1 is the stored value again.
        let scramble = b"abcdefghijklmnopqrst";
        let response = scramble_for("mysql_native_password", "secret", scramble).expect("supported");
        let stored = Sha1::digest(Sha1::digest(b"secret"));
        let mut hasher = Sha1::new();
        hasher.update(scramble);
        hasher.update(stored);
        let stage1 = xor(&response, &hasher.finalize());
        assert_eq!(Sha1::digest(&stage1).to_vec(), stored.to_vec());
        assert!(scramble_for("client_ed25519", "x", scramble).is_err());
        assert!(scramble_for("client_ed25519", "", scramble).expect("empty").is_empty());
    }

    #[test]
    fn lenenc_values() {
        let bytes = [0x05, 0xfc, 0x10, 0x01, 0xfb, 0x02, b'h', b'i'];
        let mut cursor = Cursor::new(&bytes);
        assert_eq!(lenenc_int(&mut cursor), Ok(Some(5)));
        assert_eq!(lenenc_int(&mut cursor), Ok(Some(0x110)));
        assert_eq!(lenenc_str(&mut cursor), Ok(None));
        assert_eq!(lenenc_str(&mut cursor), Ok(Some("hi".into())));
        assert!(lenenc_str(&mut Cursor::new(&[0x09, b'a'])).is_err());
    }

    /// A MySQL packet: 3-byte length, sequence, payload.
    fn packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = (u32::try_from(payload.len()).expect("small")).to_le_bytes()[..3].to_vec();
        bytes.push(sequence);
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Answers one query with a one-column result of `rows` rows of `value_bytes` bytes each.
    async fn serve_rows(rows: usize, value_bytes: usize) -> Connection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let eof = [0xfe, 0, 0, 0x02, 0];
            let mut column = Vec::new();
            for part in ["def", "", "", "", "x", "x"] {
                column.push(u8::try_from(part.len()).expect("short"));
                column.extend_from_slice(part.as_bytes());
            }
            column.extend_from_slice(&[0x0c, 45, 0, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
            let mut row = vec![0xfd];
            row.extend_from_slice(&(u32::try_from(value_bytes).expect("small")).to_le_bytes()[..3]);
            row.extend(std::iter::repeat_n(b'x', value_bytes));
            let mut reply = packet(1, &[1]);
            reply.extend(packet(2, &column));
            reply.extend(packet(3, &eof));
            for n in 0..rows {
                reply.extend(packet((4 + n) as u8, &row));
            }
            reply.extend(packet((4 + rows) as u8, &eof));
            // Read the query first (unread data would make our close a reset), then answer.
            let mut query = [0u8; 64];
            let _ = stream.read(&mut query).await;
            let _ = stream.write_all(&reply).await;
            let _ = stream.read(&mut query).await;
        });
        let stream = connect(&address.to_string()).await.expect("connect");
        Connection {
            stream,
            sequence: 0,
            bytes_read: 0,
        }
    }

    #[tokio::test]
    async fn a_result_beyond_the_probe_byte_bound_fails_the_probe() {
        let value = 200 * 1024;
        let mut within = serve_rows(SQL_PROBE_BYTES_MAX / value - 1, value).await;
        let set = query(&mut within, "SELECT x").await.expect("within the bound");
        assert_eq!(set.columns, ["x"]);
        assert_eq!(set.rows.len(), SQL_PROBE_BYTES_MAX / value - 1);
        let mut beyond = serve_rows(SQL_PROBE_BYTES_MAX / value + 1, value).await;
        let error = query(&mut beyond, "SELECT x").await.expect_err("beyond the bound");
        assert!(
            error.starts_with("SELECT x: the server sent more than 1024 KiB in one probe"),
            "{error}"
        );
    }

    #[test]
    fn server_errors_are_cut() {
        let mut packet = vec![0xff, 0x15, 0x04, b'#'];
        packet.extend_from_slice(b"28000");
        packet.extend(std::iter::repeat_n(b'm', 200_000));
        let text = error_text(&packet);
        assert!(text.starts_with("ERROR 1045 (28000): mmm"), "{}", &text[..40]);
        assert!(text.chars().count() < 200, "{} characters", text.chars().count());
        assert!(text.ends_with('…'));
        assert_eq!(
            shown_gtids(&"0-1-1,".repeat(1000)).chars().count(),
            GTID_SHOWN_CHARS_MAX
        );
    }
}
