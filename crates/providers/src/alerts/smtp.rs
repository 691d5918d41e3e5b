//! A minimal SMTP submission client (RFC 5321) for alert mail: greeting, `EHLO`, `STARTTLS`
//! (RFC 3207) or implicit TLS (RFC 8314) or none, `AUTH PLAIN` (RFC 4954), one message to
//! its recipients (those the server accepts: one refused recipient does not stop the others,
//! RFC 5321 §3.3), `QUIT` (also after a failure). The message is 7-bit: a quoted-printable
//! body (RFC 2045 §6.7, lines of at most 76 characters, far below RFC 5321's 998 octets) and
//! RFC 2047 encoded words of at most 75 characters in the subject, so it needs no `8BITMIME`. Written here rather than taken from a crate: the alert path
//! needs this much and no more, and the workspace already has rustls.
//!
//! Safety: after `STARTTLS` the client refuses a server that sent anything beyond its `220`
//! (bytes received in clear must not be read as if they came over TLS); it never
//! authenticates in clear (the settings check refuses a password with `tls = "none"` unless
//! the server is on loopback); every reply line and the whole session are bounded.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::secret::Secret;

/// Longest reply (all its lines) read, in bytes.
pub const REPLY_BYTES_MAX: usize = 16 * 1024;
/// Longest subject line, in characters.
pub const SUBJECT_CHARS_MAX: usize = 200;
/// Longest encoded line of a quoted-printable body (RFC 2045 §6.7), without its CRLF.
pub const QP_LINE_CHARS_MAX: usize = 76;
/// Longest RFC 2047 encoded word (RFC 2047 §2).
pub const ENCODED_WORD_CHARS_MAX: usize = 75;
/// How long the `QUIT` after a failed transaction may take.
pub const QUIT_AFTER_FAILURE_MS: u64 = 2_000;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain connect, then `STARTTLS` (port 587); a server without it is an error.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS (a local relay).
    None,
}

/// Why a message was not accepted: `Transient` is worth another attempt (4xx replies,
/// network trouble), `Permanent` is not (5xx replies, a server without what the settings ask).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

/// One mail server and envelope.
#[derive(Clone)]
pub struct Mailer {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub tls_config: Arc<ClientConfig>,
    pub helo_name: String,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout_ms: u64,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

struct Conn<S> {
    stream: S,
    buffer: Vec<u8>,
}

/// A reply: its code and its text lines joined.
type Reply = (u16, String);

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn reply(&mut self, doing: &str) -> Result<Reply, SmtpError> {
        let mut text = Vec::new();
        loop {
            let line = self.line(doing).await?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| {
                SmtpError::Permanent(format!(
                    "the SMTP server answered {doing} with '{line}', not a reply code"
                ))
            })?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            text.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return Ok((code, text.join(" ")));
            }
        }
    }

    async fn line(&mut self, doing: &str) -> Result<String, SmtpError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if self.buffer.len() > REPLY_BYTES_MAX {
                return Err(SmtpError::Permanent(format!(
                    "the SMTP server's reply to {doing} is longer than {REPLY_BYTES_MAX} bytes"
                )));
            }
            let mut chunk = [0u8; 2048];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| SmtpError::Transient(format!("reading the SMTP reply to {doing}: {e}")))?;
            if read == 0 {
                return Err(SmtpError::Transient(format!(
                    "the SMTP server closed the connection during {doing}"
                )));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    async fn write(&mut self, bytes: &[u8], doing: &str) -> Result<(), SmtpError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| SmtpError::Transient(format!("sending {doing}: {e}")))?;
        self.stream
            .flush()
            .await
            .map_err(|e| SmtpError::Transient(format!("sending {doing}: {e}")))
    }

    /// Sends one command line and expects a reply code of the class `expect` (2 or 3).
    async fn command(&mut self, line: &str, shown: &str, expect: u16) -> Result<Reply, SmtpError> {
        self.write(format!("{line}\r\n").as_bytes(), shown).await?;
        let reply = self.reply(shown).await?;
        expected(reply, expect, shown)
    }
}

fn expected(reply: Reply, class: u16, doing: &str) -> Result<Reply, SmtpError> {
    if reply.0 / 100 == class {
        return Ok(reply);
    }
    Err(refusal(reply.0, &reply.1, doing))
}

/// A 4xx reply is transient, anything else unexpected permanent; both carry the server's text.
fn refusal(code: u16, text: &str, doing: &str) -> SmtpError {
    let message = format!("the SMTP server answered {doing} with {code} {text}");
    if code / 100 == 4 {
        SmtpError::Transient(message)
    } else {
        SmtpError::Permanent(message)
    }
}

impl Mailer {
    /// Delivers one message; the whole session is bounded by `timeout_ms`. Returns the
    /// recipients the server refused (`address: reply`) when it accepted others; fails when it
    /// accepted none.
    pub async fn send(&self, subject: &str, body: &str, at_ms: u64) -> Result<Vec<String>, SmtpError> {
        let session = self.session(subject, body, at_ms);
        match tokio::time::timeout(Duration::from_millis(self.timeout_ms), session).await {
            Ok(result) => result,
            Err(_) => Err(SmtpError::Transient(format!(
                "SMTP server {}:{} did not finish within {} ms",
                self.host, self.port, self.timeout_ms
            ))),
        }
    }

    async fn session(&self, subject: &str, body: &str, at_ms: u64) -> Result<Vec<String>, SmtpError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| SmtpError::Transient(format!("connecting to SMTP server {}:{}: {e}", self.host, self.port)))?;
        let message = render_message(&self.from, &self.to, subject, body, at_ms);
        match self.tls {
            TlsMode::Implicit => {
                let tls = self.handshake(tcp).await?;
                let mut conn = Conn {
                    stream: tls,
                    buffer: Vec::new(),
                };
                let greeting = conn.reply("the greeting").await?;
                expected(greeting, 2, "the greeting")?;
                let ehlo = self.ehlo(&mut conn).await?;
                self.transaction(&mut conn, &ehlo, &message).await
            }
            TlsMode::None => {
                let mut conn = Conn {
                    stream: tcp,
                    buffer: Vec::new(),
                };
                let greeting = conn.reply("the greeting").await?;
                expected(greeting, 2, "the greeting")?;
                let ehlo = self.ehlo(&mut conn).await?;
                self.transaction(&mut conn, &ehlo, &message).await
            }
            TlsMode::StartTls => {
                let mut plain = Conn {
                    stream: tcp,
                    buffer: Vec::new(),
                };
                let greeting = plain.reply("the greeting").await?;
                expected(greeting, 2, "the greeting")?;
                let ehlo = self.ehlo(&mut plain).await?;
                if !ehlo.iter().any(|e| e == "STARTTLS") {
                    return Err(SmtpError::Permanent(format!(
                        "SMTP server {}:{} does not offer STARTTLS; set tls = \"tls\" for port 465, or tls = \"none\" for a local relay",
                        self.host, self.port
                    )));
                }
                plain.command("STARTTLS", "STARTTLS", 2).await?;
                if !plain.buffer.is_empty() {
                    return Err(SmtpError::Permanent(
                        "the SMTP server sent data after its STARTTLS reply (possible injection); not continuing"
                            .into(),
                    ));
                }
                let tls = self.handshake(plain.stream).await?;
                let mut conn = Conn {
                    stream: tls,
                    buffer: Vec::new(),
                };
                let ehlo = self.ehlo(&mut conn).await?;
                self.transaction(&mut conn, &ehlo, &message).await
            }
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SmtpError> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| SmtpError::Permanent(format!("TLS server name '{}': {e}", self.host)))?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.tls_config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                SmtpError::Transient(format!(
                    "TLS handshake with SMTP server {}:{}: {e}",
                    self.host, self.port
                ))
            })
    }

    async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn<S>) -> Result<Vec<String>, SmtpError> {
        conn.write(format!("EHLO {}\r\n", self.helo_name).as_bytes(), "EHLO")
            .await?;
        // Collect the lines separately: each names one extension.
        let mut lines = Vec::new();
        loop {
            let line = conn.line("EHLO").await?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
            if code / 100 != 2 {
                return Err(refusal(code, line.get(4..).unwrap_or(""), "EHLO"));
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                break;
            }
        }
        // The first line is the server's name, the others its extensions (`STARTTLS`,
        // `AUTH PLAIN LOGIN`, ...), compared upper-cased.
        Ok(lines.iter().skip(1).map(|l| l.to_ascii_uppercase()).collect())
    }

    /// The mail transaction, then `QUIT`: after a success as after a failure (the server
    /// then knows the client is gone rather than seeing the connection drop).
    async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        ehlo: &[String],
        message: &str,
    ) -> Result<Vec<String>, SmtpError> {
        let result = self.mail(conn, ehlo, message).await;
        match &result {
            // The message is accepted; a failed QUIT changes nothing.
            Ok(_) => {
                let _ = conn.command("QUIT", "QUIT", 2).await;
            }
            // Best effort, briefly: the connection may be what failed.
            Err(_) => {
                let quit = conn.command("QUIT", "QUIT", 2);
                let _ = tokio::time::timeout(Duration::from_millis(QUIT_AFTER_FAILURE_MS), quit).await;
            }
        }
        result
    }

    async fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        ehlo: &[String],
        message: &str,
    ) -> Result<Vec<String>, SmtpError> {
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            let auth = ehlo.iter().find(|e| e.starts_with("AUTH ") || e.starts_with("AUTH="));
            if !auth.is_some_and(|a| a.split([' ', '=']).any(|m| m == "PLAIN")) {
                return Err(SmtpError::Permanent(format!(
                    "SMTP server {}:{} does not offer AUTH PLAIN (it offers: {})",
                    self.host,
                    self.port,
                    auth.map_or("no AUTH", |a| a.as_str())
                )));
            }
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{}", password.expose()));
            conn.command(&format!("AUTH PLAIN {credentials}"), "AUTH PLAIN", 2)
                .await?;
        }
        conn.command(&format!("MAIL FROM:<{}>", self.from), "MAIL FROM", 2)
            .await?;
        // Each recipient on its own: a refused one (an unknown mailbox) leaves the others.
        let mut accepted = 0;
        let mut refused = Vec::new();
        let mut transient = false;
        for to in &self.to {
            let doing = format!("RCPT TO:<{to}>");
            conn.write(format!("{doing}\r\n").as_bytes(), &doing).await?;
            let (code, text) = conn.reply(&doing).await?;
            if code / 100 == 2 {
                accepted += 1;
            } else {
                transient |= code / 100 == 4;
                refused.push(format!("{to}: {code} {text}"));
            }
        }
        if accepted == 0 {
            let _ = conn.command("RSET", "RSET", 2).await;
            let message = format!("the SMTP server refused every recipient: {}", refused.join("; "));
            // One 4xx among them: another attempt may get through.
            return Err(if transient {
                SmtpError::Transient(message)
            } else {
                SmtpError::Permanent(message)
            });
        }
        conn.command("DATA", "DATA", 3).await?;
        conn.write(message.as_bytes(), "the message").await?;
        let reply = conn.reply("the end of the message").await?;
        expected(reply, 2, "the message")?;
        Ok(refused)
    }
}

/// The message as sent after `DATA`: headers, the body quoted-printable with CRLF line ends
/// and leading dots doubled (RFC 5321 §4.5.2), and the final `.` line.
pub fn render_message(from: &str, to: &[String], subject: &str, body: &str, at_ms: u64) -> String {
    let mut out = String::new();
    out.push_str(&format!("From: {from}\r\n"));
    // One address per folded line: many recipients never make a line too long.
    out.push_str(&format!("To: {}\r\n", to.join(",\r\n ")));
    out.push_str(&format!("Subject: {}\r\n", encode_subject(subject)));
    out.push_str(&format!("Date: {}\r\n", rfc5322_date(at_ms)));
    let domain = from.rsplit('@').next().unwrap_or("localhost");
    out.push_str(&format!(
        "Message-ID: <switchyard.{at_ms}.{:x}@{domain}>\r\n",
        crate::rest::random_u64()
    ));
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Transfer-Encoding: quoted-printable\r\n");
    out.push_str("\r\n");
    for line in body.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
        for physical in quoted_printable_line(line) {
            if physical.starts_with('.') {
                out.push('.');
            }
            out.push_str(&physical);
            out.push_str("\r\n");
        }
    }
    out.push_str(".\r\n");
    out
}

/// One line of text as quoted-printable lines (RFC 2045 §6.7): printable ASCII as is, `=`,
/// other bytes and a space or tab ending the line as `=XX`, soft breaks (`=` at the end) so
/// no line exceeds [`QP_LINE_CHARS_MAX`].
fn quoted_printable_line(line: &str) -> Vec<String> {
    let bytes = line.as_bytes();
    let mut lines = Vec::new();
    let mut current = String::new();
    for (i, &byte) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        let literal = matches!(byte, b'!'..=b'<' | b'>'..=b'~') || (matches!(byte, b' ' | b'\t') && !last);
        let token = if literal {
            (byte as char).to_string()
        } else {
            format!("={byte:02X}")
        };
        // Room for the soft break's `=`, except on the line's last token.
        let room = if last { QP_LINE_CHARS_MAX } else { QP_LINE_CHARS_MAX - 1 };
        if current.len() + token.len() > room {
            current.push('=');
            lines.push(std::mem::take(&mut current));
        }
        current.push_str(&token);
    }
    lines.push(current);
    lines
}

/// One line, at most [`SUBJECT_CHARS_MAX`] characters; non-ASCII as RFC 2047 encoded words
/// of at most [`ENCODED_WORD_CHARS_MAX`] characters each (whole characters in each), on folded
/// lines (the space between two encoded words is not displayed).
fn encode_subject(subject: &str) -> String {
    let clean: String = subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SUBJECT_CHARS_MAX)
        .collect();
    if clean.is_ascii() {
        return clean;
    }
    // `=?UTF-8?B?` and `?=` take 12; 63 characters of base64 carry 45 bytes (60 characters).
    const WORD_BYTES_MAX: usize = (ENCODED_WORD_CHARS_MAX - 12) / 4 * 3;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in clean.chars() {
        if chunk.len() + c.len_utf8() > WORD_BYTES_MAX {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// `Wed, 02 Dec 2026 08:30:00 +0000` for milliseconds since the Unix epoch.
pub fn rfc5322_date(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let (hour, minute, second) = ((seconds % 86_400) / 3600, (seconds % 3600) / 60, seconds % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!("{weekday}, {day:02} {month_name} {year} {hour:02}:{minute:02}:{second:02} +0000")
}

/// A mailbox as the envelope takes it: `local@domain`, no spaces, brackets or line breaks.
pub fn valid_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && address.len() <= 254
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_in_rfc5322_form() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_796_200_200_000), "Wed, 02 Dec 2026 08:30:00 +0000");
        assert_eq!(rfc5322_date(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn the_body_gets_crlf_and_doubled_leading_dots() {
        let text = render_message(
            "a@x.example",
            &["b@y.example".into()],
            "s",
            "one\n.two\r\n..three\n.",
            0,
        );
        let body = text.split("\r\n\r\n").nth(1).expect("a body");
        assert_eq!(body, "one\r\n..two\r\n...three\r\n..\r\n.\r\n");
        assert!(text.contains("Subject: s\r\n"));
        assert!(text.contains("To: b@y.example\r\n"));
    }

    #[test]
    fn subjects_stay_on_one_line_and_non_ascii_is_encoded() {
        assert_eq!(encode_subject("a\r\nBcc: x@y"), "a  Bcc: x@y");
        assert_eq!(encode_subject("région"), "=?UTF-8?B?csOpZ2lvbg==?=");
        assert_eq!(encode_subject(&"x".repeat(500)).len(), SUBJECT_CHARS_MAX);
    }

    #[test]
    fn addresses_are_checked() {
        assert!(valid_address("oncall@shop.example"));
        assert!(!valid_address("oncall"));
        assert!(!valid_address("a b@c"));
        assert!(!valid_address("a@b>\r\nRCPT TO:<c@d"));
    }

    /// A scripted server: replies to each command in turn; records what it received.
    async fn scripted(replies: Vec<&'static str>) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut received = String::new();
            let mut replies = replies.into_iter();
            if let Some(greeting) = replies.next() {
                socket.write_all(greeting.as_bytes()).await.expect("write");
            }
            let mut buffer = Vec::new();
            let mut in_data = false;
            loop {
                let mut chunk = [0u8; 4096];
                let Ok(read) = socket.read(&mut chunk).await else { break };
                if read == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..read]);
                loop {
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    let end = if in_data {
                        text.find("\r\n.\r\n").map(|i| i + 5)
                    } else {
                        text.find("\r\n").map(|i| i + 2)
                    };
                    let Some(end) = end else { break };
                    let unit: String = text[..end].to_string();
                    buffer.drain(..end);
                    received.push_str(&unit);
                    in_data = !in_data && unit.starts_with("DATA");
                    match replies.next() {
                        Some(reply) => socket.write_all(reply.as_bytes()).await.expect("write"),
                        None => return received,
                    }
                }
            }
            received
        });
        (port, task)
    }

    fn mailer(port: u16) -> Mailer {
        Mailer {
            host: "127.0.0.1".into(),
            port,
            tls: TlsMode::None,
            tls_config: common::tls_client::client_config(None).expect("roots"),
            helo_name: "localhost".into(),
            from: "switchyard@shop.example".into(),
            to: vec!["oncall@shop.example".into(), "ops@shop.example".into()],
            username: None,
            password: None,
            timeout_ms: 5_000,
        }
    }

    #[tokio::test]
    async fn a_message_goes_through_the_whole_dialogue() {
        let (port, server) = scripted(vec![
            "220 sink ESMTP\r\n",
            "250-sink\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n",
            "250 OK\r\n",
            "250 OK\r\n",
            "250 OK\r\n",
            "354 go ahead\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ])
        .await;
        mailer(port).send("fenced", "body line", 0).await.expect("sent");
        let received = server.await.expect("server");
        assert!(
            received.starts_with("EHLO localhost\r\nMAIL FROM:<switchyard@shop.example>\r\n"),
            "{received}"
        );
        assert!(received.contains("RCPT TO:<oncall@shop.example>\r\nRCPT TO:<ops@shop.example>\r\nDATA\r\n"));
        assert!(received.contains("Subject: fenced\r\n") && received.contains("\r\nbody line\r\n.\r\n"));
        assert!(received.ends_with("QUIT\r\n"), "{received}");
    }

    #[tokio::test]
    async fn a_refused_recipient_leaves_the_others_and_is_reported() {
        let (port, server) = scripted(vec![
            "220 sink\r\n",
            "250 sink\r\n",
            "250 OK\r\n",
            "550 5.1.1 no such user\r\n",
            "250 OK\r\n",
            "354 go ahead\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ])
        .await;
        let refused = mailer(port).send("s", "b", 0).await.expect("sent to the other one");
        assert_eq!(refused, vec!["oncall@shop.example: 550 5.1.1 no such user".to_string()]);
        let received = server.await.expect("server");
        assert!(
            received.contains("RCPT TO:<ops@shop.example>\r\nDATA\r\n"),
            "{received}"
        );
        assert!(received.ends_with("QUIT\r\n"), "{received}");
    }

    #[tokio::test]
    async fn every_recipient_refused_fails_and_still_says_goodbye_and_a_busy_server_is_transient() {
        let (port, server) = scripted(vec![
            "220 sink\r\n",
            "250 sink\r\n",
            "250 OK\r\n",
            "550 5.1.1 no such user\r\n",
            "553 5.1.3 bad address\r\n",
            "250 reset\r\n",
            "221 bye\r\n",
        ])
        .await;
        let error = mailer(port).send("s", "b", 0).await.expect_err("refused");
        assert_eq!(
            error,
            SmtpError::Permanent(
                "the SMTP server refused every recipient: oncall@shop.example: 550 5.1.1 no such user; ops@shop.example: 553 5.1.3 bad address".into()
            )
        );
        let received = server.await.expect("server");
        assert!(
            received.ends_with("RSET\r\nQUIT\r\n") && !received.contains("DATA"),
            "{received}"
        );
        // A mailbox busy for a moment (4xx) is worth another attempt.
        let (port, _server) = scripted(vec![
            "220 sink\r\n",
            "250 sink\r\n",
            "250 OK\r\n",
            "450 4.2.1 mailbox busy\r\n",
            "550 5.1.1 no such user\r\n",
        ])
        .await;
        let error = mailer(port).send("s", "b", 0).await.expect_err("refused");
        assert!(
            matches!(&error, SmtpError::Transient(m) if m.contains("450 4.2.1")),
            "{error:?}"
        );
        let (port, _server) = scripted(vec!["421 4.3.2 try later\r\n"]).await;
        let error = mailer(port).send("s", "b", 0).await.expect_err("busy");
        assert!(
            matches!(&error, SmtpError::Transient(m) if m.contains("421 4.3.2 try later")),
            "{error:?}"
        );
    }

    #[test]
    fn long_and_non_ascii_lines_are_quoted_printable_within_the_line_limits() {
        let long = format!("{}é= end \n.dot", "x".repeat(5_000));
        let text = render_message("a@x.example", &["b@y.example".into()], "s", &long, 0);
        assert!(
            text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{text}"
        );
        assert!(!text.contains("8bit"));
        assert!(text.is_ascii(), "a 7-bit message needs no 8BITMIME");
        for line in text.split("\r\n") {
            assert!(line.len() <= QP_LINE_CHARS_MAX + 1, "{} octets: {line}", line.len());
        }
        let body = text.split("\r\n\r\n").nth(1).expect("a body");
        // Decoded, the text comes back: soft breaks joined, =XX decoded, the dot unstuffed.
        let joined = body.replace("=\r\n", "");
        assert!(joined.contains("=C3=A9=3D end=20\r\n..dot\r\n.\r\n"), "{joined}");
        assert_eq!(joined.matches('x').count(), 5_000);
    }

    #[test]
    fn a_long_non_ascii_subject_is_split_into_short_encoded_words() {
        let subject = format!("[switchyard] all_down: région {}", "é".repeat(150));
        let encoded = encode_subject(&subject);
        let words: Vec<&str> = encoded.split("\r\n ").collect();
        assert!(words.len() > 3, "{encoded}");
        let mut decoded = Vec::new();
        for word in &words {
            assert!(word.len() <= ENCODED_WORD_CHARS_MAX, "{} chars: {word}", word.len());
            let b64 = word
                .strip_prefix("=?UTF-8?B?")
                .and_then(|w| w.strip_suffix("?="))
                .expect("a word");
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            // Each word holds whole characters.
            assert!(String::from_utf8(bytes.clone()).is_ok());
            decoded.extend(bytes);
        }
        let expected: String = subject.chars().take(SUBJECT_CHARS_MAX).collect();
        assert_eq!(String::from_utf8(decoded).expect("utf-8"), expected);
    }

    #[tokio::test]
    async fn starttls_is_required_when_asked_for() {
        let (port, _server) = scripted(vec!["220 sink\r\n", "250-sink\r\n250 8BITMIME\r\n"]).await;
        let mut mailer = mailer(port);
        mailer.tls = TlsMode::StartTls;
        let error = mailer.send("s", "b", 0).await.expect_err("no STARTTLS");
        assert!(
            matches!(&error, SmtpError::Permanent(m) if m.contains("does not offer STARTTLS")),
            "{error:?}"
        );
    }
}
