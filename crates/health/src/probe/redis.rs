//! Redis probe: RESP2 by hand — `AUTH`, `PING`, optionally `INFO replication`.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Finding, REPLY_BYTES_MAX, connect};
use crate::report::{POSITION_OFFSET, ReplicationPosition};

pub(super) struct Options<'a> {
    pub(super) username: Option<&'a str>,
    pub(super) password: Option<&'a str>,
    pub(super) replication: bool,
    pub(super) expect_role: Option<&'a str>,
}

/// One RESP reply, as far as a probe needs it.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Bulk(Option<Vec<u8>>),
    Other,
}

pub(super) async fn probe(address: &str, options: &Options<'_>) -> Finding {
    match exchange(address, options).await {
        Ok(finding) => finding,
        Err(error) => Finding::down(error),
    }
}

async fn exchange(address: &str, options: &Options<'_>) -> Result<Finding, String> {
    let stream = connect(address).await?;
    let mut stream = BufReader::new(stream);
    if let Some(password) = options.password {
        let mut args = vec!["AUTH"];
        args.extend(options.username);
        args.push(password);
        match command(&mut stream, &args).await? {
            Reply::Simple(_) => {}
            Reply::Error(error) => return Ok(Finding::down(format!("AUTH refused: {error}"))),
            other => return Err(format!("AUTH: unexpected reply {other:?}")),
        }
    }
    match command(&mut stream, &["PING"]).await? {
        Reply::Simple(text) if text == "PONG" => {}
        Reply::Error(error) => return Ok(Finding::down(format!("PING refused: {error}"))),
        other => return Err(format!("PING: unexpected reply {other:?}")),
    }
    if !options.replication {
        return Ok(Finding::up("PONG"));
    }
    let info = match command(&mut stream, &["INFO", "replication"]).await? {
        Reply::Bulk(Some(info)) => String::from_utf8_lossy(&info).into_owned(),
        Reply::Error(error) => return Ok(Finding::down(format!("INFO refused: {error}"))),
        other => return Err(format!("INFO: unexpected reply {other:?}")),
    };
    Ok(judge_info(&info, options.expect_role))
}

/// Judges `INFO replication`: the role must match if asked; a replica's lag is
/// `master_last_io_seconds_ago` while its link is up, unknown otherwise. The detail names the
/// replication offset, so two servers' positions can be compared before a promotion.
fn judge_info(info: &str, expect_role: Option<&str>) -> Finding {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let role = field("role").unwrap_or("unknown");
    if let Some(expected) = expect_role
        && role != expected
    {
        return Finding::down(format!("PONG, role {role}, expected {expected}"));
    }
    let position = field("master_repl_offset").and_then(|offset| {
        let role = if role == "slave" { "replica" } else { "primary" };
        ReplicationPosition::new(role, POSITION_OFFSET, offset, None)
    });
    let offset = field("master_repl_offset")
        .map(|offset| format!(", offset {offset}"))
        .unwrap_or_default();
    if role != "slave" {
        return Finding::up(format!("PONG, role {role}{offset}"))
            .with_lag(Some(0))
            .with_position(position);
    }
    let link = field("master_link_status").unwrap_or("unknown");
    let lag = match (
        link,
        field("master_last_io_seconds_ago").and_then(|v| v.parse::<i64>().ok()),
    ) {
        ("up", Some(seconds)) if seconds >= 0 => Some(seconds as u64 * 1000),
        _ => None,
    };
    Finding::up(format!("PONG, role slave, master link {link}{offset}"))
        .with_lag(lag)
        .with_position(position)
}

async fn command<S>(stream: &mut BufReader<S>, args: &[&str]) -> Result<Reply, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream
        .get_mut()
        .write_all(&request)
        .await
        .map_err(|e| format!("send {}: {e}", args[0]))?;
    read_reply(stream).await.map_err(|e| format!("{}: {e}", args[0]))
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<String, String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(REPLY_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if read == 0 {
        return Err("connection closed".into());
    }
    if !line.ends_with(b"\r\n") {
        return Err("reply line too long or cut".into());
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<Reply, String> {
    let line = read_line(reader).await?;
    let (kind, rest) = line.split_at_checked(1).ok_or("empty reply line")?;
    match kind {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Other),
        "$" => {
            let length: i64 = rest.parse().map_err(|_| format!("bad bulk length '{rest}'"))?;
            if length < 0 {
                return Ok(Reply::Bulk(None));
            }
            let length = usize::try_from(length).map_err(|_| "bulk length overflow".to_string())?;
            if length > REPLY_BYTES_MAX {
                return Err(format!("bulk reply of {length} bytes exceeds {REPLY_BYTES_MAX}"));
            }
            let mut data = vec![0; length + 2];
            reader.read_exact(&mut data).await.map_err(|e| e.to_string())?;
            data.truncate(length);
            Ok(Reply::Bulk(Some(data)))
        }
        _ => Err(format!("unexpected reply '{line}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_info_gives_lag_and_role() {
        let info = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:2\r\nmaster_repl_offset:4242\r\n";
        let finding = judge_info(info, None);
        assert!(finding.success);
        assert_eq!(finding.replica_lag_ms, Some(2000));
        assert_eq!(finding.detail, "PONG, role slave, master link up, offset 4242");
        let position = finding.position.clone().expect("a position");
        assert_eq!((position.role.as_str(), position.kind.as_str()), ("replica", "offset"));
        assert_eq!(position.received, "4242");
        let finding = judge_info(info, Some("master"));
        assert!(!finding.success);
        assert!(finding.detail.contains("expected master"), "{}", finding.detail);
        let down = "role:slave\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\n";
        assert_eq!(judge_info(down, None).replica_lag_ms, None);
    }

    #[tokio::test]
    async fn replies_parse_and_garbage_is_an_error() {
        let mut input: &[u8] = b"+PONG\r\n$5\r\nhello\r\n$-1\r\n-ERR nope\r\n*garbage\r\n";
        assert_eq!(read_reply(&mut input).await, Ok(Reply::Simple("PONG".into())));
        assert_eq!(read_reply(&mut input).await, Ok(Reply::Bulk(Some(b"hello".to_vec()))));
        assert_eq!(read_reply(&mut input).await, Ok(Reply::Bulk(None)));
        assert_eq!(read_reply(&mut input).await, Ok(Reply::Error("ERR nope".into())));
        assert!(read_reply(&mut input).await.is_err());
        assert!(read_reply(&mut input).await.is_err());
        let mut huge: &[u8] = b"$99999999999\r\n";
        assert!(read_reply(&mut huge).await.is_err());
    }
}
