//! Redis probe: RESP2 by hand — `AUTH`, `PING`, optionally `INFO replication`.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Finding, REPLY_BYTES_MAX, connect, shown};
use crate::report::{POSITION_OFFSET, ReplicationPosition};

pub(super) struct Options<'a> {
    pub(super) username: Option<&'a str>,
    pub(super) password: Option<&'a str>,
    pub(super) replication: bool,
    pub(super) expect_role: Option<&'a str>,
}

/// Redis's default `repl-ping-replica-period`: a master sends its replicas a PING at least this
/// often, so a replica whose link is up hears from it at least this often.
const REPL_PING_PERIOD_S: i64 = 10;
/// Seconds without a byte from the master after which a replica's link counts as stale (its
/// lag unknown), though Redis only drops it after `repl-timeout` (60 s): the ping period and a
/// margin for a busy master and rounding.
const MASTER_SILENCE_S_MAX: i64 = REPL_PING_PERIOD_S + 5;

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
            Reply::Error(error) => return Ok(Finding::down(format!("AUTH refused: {}", shown(&error)))),
            other => return Err(format!("AUTH: unexpected reply {}", other.describe())),
        }
    }
    match command(&mut stream, &["PING"]).await? {
        Reply::Simple(text) if text == "PONG" => {}
        Reply::Error(error) => return Ok(Finding::down(format!("PING refused: {}", shown(&error)))),
        other => return Err(format!("PING: unexpected reply {}", other.describe())),
    }
    if !options.replication {
        return Ok(Finding::up("PONG"));
    }
    let info = match command(&mut stream, &["INFO", "replication"]).await? {
        Reply::Bulk(Some(info)) => String::from_utf8_lossy(&info).into_owned(),
        Reply::Error(error) => return Ok(Finding::down(format!("INFO refused: {}", shown(&error)))),
        other => return Err(format!("INFO: unexpected reply {}", other.describe())),
    };
    Ok(judge_info(&info, options.expect_role))
}

impl Reply {
    /// The reply for a detail, server text cut at [`super::SHOWN_CHARS_MAX`].
    fn describe(&self) -> String {
        match self {
            Reply::Simple(text) => format!("+{}", shown(text)),
            Reply::Error(text) => format!("-{}", shown(text)),
            Reply::Bulk(None) => "nil".to_string(),
            Reply::Bulk(Some(data)) => format!("'{}'", shown(&String::from_utf8_lossy(data))),
            Reply::Other => "of another type".to_string(),
        }
    }
}

/// Judges `INFO replication`: the role must match if asked; the detail names the replication
/// offset, so two servers' positions can be compared before a promotion.
///
/// A replica cannot time its lag: Redis streams the master's writes and the replica applies
/// them as they arrive, and `master_last_io_seconds_ago` is only the link's idle time (0–10 s
/// on a healthy replica of an idle master, which PINGs every `repl-ping-replica-period`). So a
/// replica's lag is 0 while its link is up, no full sync is running and it heard from its
/// master within [`MASTER_SILENCE_S_MAX`] seconds; unknown otherwise (link down, syncing, or a
/// silent link not yet dropped by `repl-timeout`). A master's lag is 0.
fn judge_info(info: &str, expect_role: Option<&str>) -> Finding {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<i64>().ok());
    let role = shown(field("role").unwrap_or("unknown"));
    if let Some(expected) = expect_role
        && role != expected
    {
        return Finding::down(format!("PONG, role {role}, expected {}", shown(expected)));
    }
    let position = field("master_repl_offset").and_then(|offset| {
        let role = if role == "slave" { "replica" } else { "primary" };
        ReplicationPosition::new(role, POSITION_OFFSET, offset, None)
    });
    let offset = field("master_repl_offset")
        .map(|offset| format!(", offset {}", shown(offset)))
        .unwrap_or_default();
    if role != "slave" {
        return Finding::up(format!("PONG, role {role}{offset}"))
            .with_lag(Some(0))
            .with_position(position);
    }
    let link = shown(field("master_link_status").unwrap_or("unknown"));
    let last_io = number("master_last_io_seconds_ago");
    let (lag, reading) = if link != "up" {
        let since = number("master_link_down_since_seconds")
            .filter(|s| *s >= 0)
            .map(|s| format!(" for {s} s"))
            .unwrap_or_default();
        (None, format!("master link {link}{since}, lag unknown"))
    } else if field("master_sync_in_progress") == Some("1") {
        (None, "master link up, full sync in progress, lag unknown".to_string())
    } else {
        match last_io {
            Some(seconds) if (0..=MASTER_SILENCE_S_MAX).contains(&seconds) => {
                (Some(0), format!("master link up, last I/O {seconds} s ago, lag 0 ms"))
            }
            Some(seconds) if seconds > MASTER_SILENCE_S_MAX => (
                None,
                format!(
                    "master link up but silent for {seconds} s (a master PINGs every \
                     {REPL_PING_PERIOD_S} s by default), lag unknown"
                ),
            ),
            _ => (None, "master link up, last I/O unknown, lag unknown".to_string()),
        }
    };
    Finding::up(format!("PONG, role slave, {reading}{offset}"))
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
            let length: i64 = rest.parse().map_err(|_| format!("bad bulk length '{}'", shown(rest)))?;
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
        _ => Err(format!("unexpected reply '{}'", shown(&line))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(link: &str, last_io: i64, extra: &str) -> String {
        format!(
            "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:{link}\r\n\
             master_last_io_seconds_ago:{last_io}\r\nmaster_sync_in_progress:0\r\n{extra}master_repl_offset:4242\r\n"
        )
    }

    #[test]
    fn replica_info_gives_role_position_and_lag() {
        let info = replica("up", 2, "");
        let finding = judge_info(&info, None);
        assert!(finding.success);
        assert_eq!(finding.replica_lag_ms, Some(0));
        assert_eq!(
            finding.detail,
            "PONG, role slave, master link up, last I/O 2 s ago, lag 0 ms, offset 4242"
        );
        let position = finding.position.clone().expect("a position");
        assert_eq!((position.role.as_str(), position.kind.as_str()), ("replica", "offset"));
        assert_eq!(position.received, "4242");
        let finding = judge_info(&info, Some("master"));
        assert!(!finding.success);
        assert!(finding.detail.contains("expected master"), "{}", finding.detail);
        let master = judge_info("role:master\r\nmaster_repl_offset:7\r\n", Some("master"));
        assert_eq!((master.success, master.replica_lag_ms), (true, Some(0)));
    }

    #[test]
    fn a_replica_of_an_idle_master_is_not_behind_by_the_links_idle_time() {
        // The master PINGs every 10 s: 0..=10 s of silence on a live link is not lag.
        for seconds in 0..=MASTER_SILENCE_S_MAX {
            let finding = judge_info(&replica("up", seconds, ""), None);
            assert_eq!(finding.replica_lag_ms, Some(0), "{}", finding.detail);
        }
        // Silent beyond the ping period and a margin: stale, though Redis has not dropped it yet.
        let stale = judge_info(&replica("up", MASTER_SILENCE_S_MAX + 1, ""), None);
        assert_eq!(stale.replica_lag_ms, None);
        assert!(stale.detail.contains("silent for 16 s"), "{}", stale.detail);
    }

    #[test]
    fn a_replica_without_a_live_link_has_no_known_lag() {
        let down = judge_info(&replica("down", -1, "master_link_down_since_seconds:42\r\n"), None);
        assert_eq!(down.replica_lag_ms, None);
        assert!(
            down.detail.contains("master link down for 42 s, lag unknown"),
            "{}",
            down.detail
        );
        let syncing = replica("up", 0, "").replace("master_sync_in_progress:0", "master_sync_in_progress:1");
        let syncing = judge_info(&syncing, None);
        assert_eq!(syncing.replica_lag_ms, None);
        assert!(syncing.detail.contains("full sync in progress"), "{}", syncing.detail);
        let unknown = judge_info("role:slave\r\nmaster_link_status:up\r\n", None);
        assert_eq!(unknown.replica_lag_ms, None);
    }

    #[test]
    fn server_text_in_details_is_cut() {
        let role = "r".repeat(100_000);
        let finding = judge_info(&format!("role:{role}\r\n"), Some("master"));
        assert!(!finding.success);
        assert!(
            finding.detail.chars().count() < 200,
            "{} characters",
            finding.detail.chars().count()
        );
        let bulk = Reply::Bulk(Some(vec![b'b'; REPLY_BYTES_MAX]));
        assert!(bulk.describe().chars().count() <= super::super::SHOWN_CHARS_MAX + 2);
        let error = Reply::Error("E".repeat(REPLY_BYTES_MAX)).describe();
        assert!(error.ends_with('…') && error.chars().count() <= super::super::SHOWN_CHARS_MAX + 1);
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
