//! Alert channels (`[[alerts]]` in the controller's config): a generic JSON webhook, a
//! Slack-compatible incoming webhook, PagerDuty's Events API v2 and SMTP email.
//!
//! The controller raises an alert (a condition by key: `decision`, `step_failed`, `fenced`,
//! `all_down`, `stuck`, `rate_limit`) and resolves it when the condition ends. Each raise opens
//! an incident with a dedup key (kept until the resolve, so PagerDuty groups a condition's
//! updates and its resolve into one incident); every channel gets the alert through its own
//! bounded queue and worker task, so sending never blocks the runbook or the engine, and a
//! slow channel never holds up another:
//! - a full queue drops its oldest alert and counts it ([`ChannelStats::dropped`]);
//! - each channel is rate-limited (a token bucket, `per_minute_max`);
//! - a delivery is tried at most [`DELIVERY_ATTEMPTS_MAX`] times with jittered backoff;
//!   429 answers wait for `Retry-After` (bounded, [`crate::rest`]); answers that no retry can
//!   fix (4xx, SMTP 5xx) are not retried; failures are logged with the channel's own text.

pub mod queue;
pub mod smtp;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

use crate::Checker;
use crate::rest::{self, Rest};
use crate::secret::{Secret, SecretSource};
use queue::{Incidents, Queue, TokenBucket};

/// The alert kinds a `[[alerts]]` entry may name.
pub const KINDS: &[&str] = &["webhook", "slack", "pagerduty", "email"];
/// The events an entry may subscribe to with `events = [...]` (default: all).
pub const EVENTS: &[&str] = &["decision", "step_failed", "fenced", "all_down", "stuck", "rate_limit"];
/// Most `[[alerts]]` entries.
pub const CHANNELS_MAX: usize = 16;
/// Alerts waiting per channel at most; beyond, the oldest is dropped.
pub const QUEUE_ALERTS_MAX: usize = 64;
/// Default and largest `per_minute_max`.
pub const PER_MINUTE_DEFAULT: u32 = 10;
pub const PER_MINUTE_MAX: u32 = 600;
/// Attempts of one delivery (the first and the retries).
pub const DELIVERY_ATTEMPTS_MAX: u32 = 3;
/// First wait between two attempts; doubles, plus up to half of it as jitter.
pub const DELIVERY_BACKOFF_FIRST_MS: u64 = 1_000;
/// Default and longest timeout of one delivery.
pub const DELIVERY_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const DELIVERY_TIMEOUT_MS_MAX: u64 = 60_000;
/// Where PagerDuty takes events.
pub const PAGERDUTY_URL_DEFAULT: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty's limit on `payload.summary`, in characters.
pub const PAGERDUTY_SUMMARY_CHARS_MAX: usize = 1024;
/// Default SMTP submission port per TLS mode.
pub const SMTP_PORT_STARTTLS: u16 = 587;
pub const SMTP_PORT_TLS: u16 = 465;
pub const SMTP_PORT_NONE: u16 = 25;

/// One `[[alerts]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSection {
    /// `webhook`, `slack`, `pagerduty` or `email`.
    pub kind: Spanned<String>,
    /// `webhook`: where to POST the JSON; `slack`: the incoming webhook URL (better from
    /// `url_secret`); `pagerduty`: overrides the Events API URL.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// The URL from a file or an environment variable (a Slack webhook URL is a secret).
    #[serde(default)]
    pub url_secret: Option<Spanned<SecretSource>>,
    /// `pagerduty`: the integration's routing key.
    #[serde(default)]
    pub routing_key: Option<Spanned<SecretSource>>,
    /// `email`: `host` or `host:port` of the submission server.
    #[serde(default)]
    pub smtp_server: Option<Spanned<String>>,
    /// `email`: `starttls` (default), `tls` (implicit, port 465) or `none`.
    #[serde(default)]
    pub tls: Option<Spanned<String>>,
    /// `email`: a PEM file of CA certificates for the server (default: the Mozilla roots).
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub from: Option<Spanned<String>>,
    #[serde(default)]
    pub to: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub username: Option<Spanned<String>>,
    #[serde(default)]
    pub password: Option<Spanned<SecretSource>>,
    /// `email`: the name given in `EHLO`.
    #[serde(default)]
    pub helo_name: Option<Spanned<String>>,
    /// The events sent to this channel (default: all of [`EVENTS`]).
    #[serde(default)]
    pub events: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub per_minute_max: Option<Spanned<u32>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<u64>>,
}

/// A checked channel, ready to be started by [`Alerts::start`].
#[derive(Debug, Clone)]
pub struct Channel {
    /// `kind #index` (1-based), for logs and metrics.
    pub name: String,
    sink: Sink,
    events: Option<Vec<String>>,
    per_minute_max: u32,
}

#[derive(Debug, Clone)]
enum Sink {
    Webhook {
        url: String,
        /// The URL came from `url_secret`: kept out of errors and logs, as Slack's is.
        secret: bool,
        client: Rest,
    },
    Slack {
        url: Secret,
        client: Rest,
    },
    PagerDuty {
        url: String,
        routing_key: Secret,
        client: Rest,
    },
    Email(Box<smtp::Mailer>),
}

impl AlertSection {
    /// Reports every problem through `checker`; the channel, or `None` after a problem.
    /// `index` is the entry's position (0-based) among `[[alerts]]`.
    pub fn check(&self, index: usize, checker: &mut dyn Checker) -> Option<Channel> {
        let checker = &mut crate::cas::Counted::new(checker);
        let kind = self.kind.get_ref().as_str();
        let name = format!("{kind} #{}", index + 1);
        let what = format!("alert {name}");
        let timeout_ms = match &self.timeout_ms {
            None => DELIVERY_TIMEOUT_MS_DEFAULT,
            Some(t) if (1..=DELIVERY_TIMEOUT_MS_MAX).contains(t.get_ref()) => *t.get_ref(),
            Some(t) => {
                checker.error(
                    t.span(),
                    format!("{what}: timeout_ms = {} is out of range", t.get_ref()),
                    format!("use 1..={DELIVERY_TIMEOUT_MS_MAX} (default {DELIVERY_TIMEOUT_MS_DEFAULT})"),
                );
                DELIVERY_TIMEOUT_MS_DEFAULT
            }
        };
        let per_minute_max = match &self.per_minute_max {
            None => PER_MINUTE_DEFAULT,
            Some(p) if (1..=PER_MINUTE_MAX).contains(p.get_ref()) => *p.get_ref(),
            Some(p) => {
                checker.error(
                    p.span(),
                    format!("{what}: per_minute_max = {} is out of range", p.get_ref()),
                    format!("use 1..={PER_MINUTE_MAX} (default {PER_MINUTE_DEFAULT})"),
                );
                PER_MINUTE_DEFAULT
            }
        };
        let events = self.events.as_ref().map(|events| {
            for event in events.get_ref() {
                if !EVENTS.contains(&event.as_str()) {
                    checker.error(
                        events.span(),
                        format!("{what}: unknown event '{event}'"),
                        format!("use some of {}", EVENTS.join(", ")),
                    );
                }
            }
            if events.get_ref().is_empty() {
                checker.error(
                    events.span(),
                    format!("{what}: events is empty, so nothing would be sent"),
                    "remove events to get all of them, or name some".into(),
                );
            }
            events.get_ref().clone()
        });
        self.refuse_foreign_keys(kind, &what, checker);
        let sink = match kind {
            "webhook" => self.check_webhook(&what, timeout_ms, checker),
            "slack" => self.check_slack(&what, timeout_ms, checker),
            "pagerduty" => self.check_pagerduty(&what, timeout_ms, checker),
            "email" => self.check_email(&what, timeout_ms, checker),
            other => {
                checker.error(
                    self.kind.span(),
                    format!("unknown alert kind '{other}'"),
                    format!("use one of {}", KINDS.join(", ")),
                );
                None
            }
        };
        if checker.errors > 0 {
            return None;
        }
        Some(Channel {
            name,
            sink: sink?,
            events,
            per_minute_max,
        })
    }

    /// Keys of another kind are mistakes (a `routing_key` on a Slack entry would be ignored).
    fn refuse_foreign_keys(&self, kind: &str, what: &str, checker: &mut dyn Checker) {
        let email = matches!(kind, "email");
        let present: [(&str, Option<std::ops::Range<usize>>, bool); 11] = [
            (
                "url",
                self.url.as_ref().map(Spanned::span),
                matches!(kind, "webhook" | "slack" | "pagerduty"),
            ),
            (
                "url_secret",
                self.url_secret.as_ref().map(Spanned::span),
                matches!(kind, "webhook" | "slack"),
            ),
            (
                "routing_key",
                self.routing_key.as_ref().map(Spanned::span),
                kind == "pagerduty",
            ),
            ("smtp_server", self.smtp_server.as_ref().map(Spanned::span), email),
            ("tls", self.tls.as_ref().map(Spanned::span), email),
            ("ca_file", self.ca_file.as_ref().map(Spanned::span), email),
            ("from", self.from.as_ref().map(Spanned::span), email),
            ("to", self.to.as_ref().map(Spanned::span), email),
            ("username", self.username.as_ref().map(Spanned::span), email),
            ("password", self.password.as_ref().map(Spanned::span), email),
            ("helo_name", self.helo_name.as_ref().map(Spanned::span), email),
        ];
        if !KINDS.contains(&kind) {
            return;
        }
        for (key, span, allowed) in present {
            if let Some(span) = span
                && !allowed
            {
                checker.error(
                    span,
                    format!("{what}: '{key}' does not apply to kind = \"{kind}\""),
                    "remove it (see README, Alerts, for each kind's keys)".into(),
                );
            }
        }
    }

    /// The URL from `url` or `url_secret` (exactly one).
    fn url(&self, what: &str, checker: &mut dyn Checker) -> Option<(String, std::ops::Range<usize>)> {
        match (&self.url, &self.url_secret) {
            (Some(url), None) => Some((url.get_ref().clone(), url.span())),
            (None, Some(secret)) => secret
                .get_ref()
                .resolve(secret.span(), &format!("{what} url_secret"), checker)
                .map(|s| (s.expose().to_string(), secret.span())),
            (Some(url), Some(_)) => {
                checker.error(
                    url.span(),
                    format!("{what} has both url and url_secret"),
                    "keep one".into(),
                );
                None
            }
            (None, None) => {
                checker.error(
                    self.kind.span(),
                    format!("{what} has no url"),
                    "add url = \"https://...\" or url_secret = { env = \"VARIABLE\" }".into(),
                );
                None
            }
        }
    }

    fn check_webhook(&self, what: &str, timeout_ms: u64, checker: &mut dyn Checker) -> Option<Sink> {
        let (url, span) = self.url(what, checker)?;
        // A generic webhook may be plain http inside a private network (no secret in it).
        let parsed: Option<hyper::Uri> = url.parse().ok();
        let valid = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.port_u16() != Some(0)
        });
        if !valid {
            checker.error(
                span,
                format!("alert url: '{url}' does not start with http:// or https:// and a host (and a port in 1..=65535) ({what})"),
                "write it like https://hooks.example.com/switchyard".into(),
            );
            return None;
        }
        let client = client(what, timeout_ms, span, checker)?;
        Some(Sink::Webhook {
            url,
            secret: self.url_secret.is_some(),
            client,
        })
    }

    fn check_slack(&self, what: &str, timeout_ms: u64, checker: &mut dyn Checker) -> Option<Sink> {
        let (url, span) = self.url(what, checker)?;
        if let Err(message) = rest::check_base_url(&url) {
            checker.error(
                span.clone(),
                format!("{what}: {message}"),
                "use the https:// incoming webhook URL Slack gives".into(),
            );
            return None;
        }
        if self.url.is_some() && url.contains("hooks.slack.com/services/") {
            checker.warn(span.clone(), format!("{what}: the Slack webhook URL is a secret written in the config file"), "move it to a file or variable: url_secret = { file = \"slack.url\" } or { env = \"SLACK_WEBHOOK_URL\" }".into());
        }
        let client = client(what, timeout_ms, span, checker)?;
        Some(Sink::Slack {
            url: Secret::new(url),
            client,
        })
    }

    fn check_pagerduty(&self, what: &str, timeout_ms: u64, checker: &mut dyn Checker) -> Option<Sink> {
        let url = match &self.url {
            None => PAGERDUTY_URL_DEFAULT.to_string(),
            Some(url) => match rest::check_base_url(url.get_ref()) {
                Ok(_) => url.get_ref().clone(),
                Err(message) => {
                    checker.error(
                        url.span(),
                        format!("{what}: {message}"),
                        format!("remove url to use {PAGERDUTY_URL_DEFAULT}"),
                    );
                    return None;
                }
            },
        };
        let Some(key) = &self.routing_key else {
            checker.error(self.kind.span(), format!("{what} has no routing_key"), "add routing_key = { env = \"PAGERDUTY_ROUTING_KEY\" } (the integration key of an Events API v2 integration)".into());
            return None;
        };
        let routing_key = key
            .get_ref()
            .resolve(key.span(), &format!("{what} routing_key"), checker)?;
        let client = client(what, timeout_ms, key.span(), checker)?;
        Some(Sink::PagerDuty {
            url,
            routing_key,
            client,
        })
    }

    fn check_email(&self, what: &str, timeout_ms: u64, checker: &mut dyn Checker) -> Option<Sink> {
        let tls = match self.tls.as_ref().map(|t| t.get_ref().as_str()) {
            None | Some("starttls") => smtp::TlsMode::StartTls,
            Some("tls") => smtp::TlsMode::Implicit,
            Some("none") => smtp::TlsMode::None,
            Some(other) => {
                let span = self.tls.as_ref().map(Spanned::span).unwrap_or(self.kind.span());
                checker.error(
                    span,
                    format!("{what}: tls = \"{other}\" is not a TLS mode"),
                    "use \"starttls\" (port 587), \"tls\" (port 465) or \"none\" (a local relay)".into(),
                );
                smtp::TlsMode::StartTls
            }
        };
        let default_port = match tls {
            smtp::TlsMode::StartTls => SMTP_PORT_STARTTLS,
            smtp::TlsMode::Implicit => SMTP_PORT_TLS,
            smtp::TlsMode::None => SMTP_PORT_NONE,
        };
        let server = match &self.smtp_server {
            None => {
                checker.error(
                    self.kind.span(),
                    format!("{what} has no smtp_server"),
                    "add smtp_server = \"smtp.example.com:587\"".into(),
                );
                None
            }
            Some(server) => match split_host_port(server.get_ref(), default_port) {
                Some(hp) => Some((hp, server.span())),
                None => {
                    checker.error(
                        server.span(),
                        format!("{what}: smtp_server '{}' is not host or host:port", server.get_ref()),
                        "write it like \"smtp.example.com:587\"".into(),
                    );
                    None
                }
            },
        };
        let from = match &self.from {
            Some(from) if smtp::valid_address(from.get_ref()) => Some(from.get_ref().clone()),
            Some(from) => {
                checker.error(
                    from.span(),
                    format!("{what}: from '{}' is not a mail address", from.get_ref()),
                    "write it like \"switchyard@shop.example\"".into(),
                );
                None
            }
            None => {
                checker.error(
                    self.kind.span(),
                    format!("{what} has no from"),
                    "add from = \"switchyard@shop.example\"".into(),
                );
                None
            }
        };
        let to = match &self.to {
            Some(to) if !to.get_ref().is_empty() => {
                for address in to.get_ref() {
                    if !smtp::valid_address(address) {
                        checker.error(
                            to.span(),
                            format!("{what}: to '{address}' is not a mail address"),
                            "write addresses like \"oncall@shop.example\"".into(),
                        );
                    }
                }
                Some(to.get_ref().clone())
            }
            _ => {
                let span = self.to.as_ref().map(Spanned::span).unwrap_or(self.kind.span());
                checker.error(
                    span,
                    format!("{what} has no recipients"),
                    "add to = [\"oncall@shop.example\"]".into(),
                );
                None
            }
        };
        let password = match (&self.username, &self.password) {
            (Some(_), Some(password)) => {
                password
                    .get_ref()
                    .resolve(password.span(), &format!("{what} password"), checker)
            }
            (None, None) => None,
            (Some(user), None) => {
                checker.error(
                    user.span(),
                    format!("{what} has a username but no password"),
                    "add password = { env = \"SMTP_PASSWORD\" } or remove username".into(),
                );
                None
            }
            (None, Some(password)) => {
                checker.error(
                    password.span(),
                    format!("{what} has a password but no username"),
                    "add username = \"...\"".into(),
                );
                None
            }
        };
        let ((host, port), server_span) = server?;
        if tls == smtp::TlsMode::None && self.password.is_some() && !is_loopback_host(&host) {
            let span = self.password.as_ref().map(Spanned::span).unwrap_or(server_span.clone());
            checker.error(
                span,
                format!("{what}: the password would cross the network in clear (tls = \"none\" to {host})"),
                "use tls = \"starttls\" or \"tls\"".into(),
            );
        }
        let ca_file = self.ca_file.as_ref().map(|f| {
            let path = f.get_ref();
            (
                if path.is_relative() {
                    checker.folder().join(path)
                } else {
                    path.clone()
                },
                f.span(),
            )
        });
        let tls_config = match common::tls_client::client_config(ca_file.as_ref().map(|(p, _)| p.as_path())) {
            Ok(config) => config,
            Err(message) => {
                let span = ca_file.map(|(_, s)| s).unwrap_or(server_span);
                checker.error(
                    span,
                    format!("{what}: {message}"),
                    "give a PEM file of the CA certificates that signed the server's certificate".into(),
                );
                return None;
            }
        };
        Some(Sink::Email(Box::new(smtp::Mailer {
            host,
            port,
            tls,
            tls_config,
            helo_name: self
                .helo_name
                .as_ref()
                .map_or("localhost".to_string(), |h| h.get_ref().clone()),
            from: from?,
            to: to?,
            username: self.username.as_ref().map(|u| u.get_ref().clone()),
            password,
            timeout_ms,
        })))
    }
}

fn client(what: &str, timeout_ms: u64, span: std::ops::Range<usize>, checker: &mut dyn Checker) -> Option<Rest> {
    Rest::for_step("", None, timeout_ms, what, span, checker)
}

fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    let text = text.trim();
    if text.is_empty() || text.contains(['/', ' ']) {
        return None;
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && !host.is_empty() => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((text.to_string(), default_port)),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The event name of an alert key (the engine's `runbook` key is a failed step).
pub fn event_of(key: &str) -> &str {
    match key {
        "runbook" => "step_failed",
        other => other,
    }
}

/// How urgent an event is, in PagerDuty's words.
pub fn severity_of(event: &str) -> &'static str {
    match event {
        "fenced" | "all_down" | "stuck" => "critical",
        "step_failed" => "error",
        "rate_limit" => "warning",
        _ => "info",
    }
}

/// One alert as the channels send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The condition's key (`fenced`, `all_down`, `runbook`, `decision`, `stuck`, ...).
    pub key: String,
    /// `false` for a trigger (or update), `true` when the condition ended.
    pub resolved: bool,
    pub message: String,
    pub generation: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The incident's dedup key (the same from trigger to resolve).
    pub incident: String,
    /// Who sends it (the controller's vantage name).
    pub source: String,
}

impl Alert {
    pub fn event(&self) -> &str {
        event_of(&self.key)
    }

    fn summary(&self) -> String {
        if self.resolved {
            format!("[switchyard] resolved: {} ({})", self.event(), self.message)
        } else {
            format!("[switchyard] {}: {}", self.event(), self.message)
        }
    }
}

/// What one channel did since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub channel: String,
    pub sent: u64,
    pub failed: u64,
    /// Dropped from a full queue, oldest first.
    pub dropped: u64,
}

struct Lane {
    channel: Channel,
    queue: Mutex<Queue<Alert>>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
    sent: AtomicU64,
    failed: AtomicU64,
}

/// The running channels. Sending never waits; dropping this stops the workers once their
/// queues are empty.
pub struct Alerts {
    lanes: Vec<Arc<Lane>>,
    incidents: Mutex<Incidents>,
    source: String,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").field("channels", &self.lanes.len()).finish()
    }
}

impl Alerts {
    /// Starts one worker task per channel (call inside a tokio runtime). `source` names the
    /// sender in alerts and dedup keys.
    pub fn start(channels: Vec<Channel>, source: &str) -> Alerts {
        let lanes: Vec<Arc<Lane>> = channels
            .into_iter()
            .map(|channel| {
                Arc::new(Lane {
                    channel,
                    queue: Mutex::new(Queue::new(QUEUE_ALERTS_MAX)),
                    wake: tokio::sync::Notify::new(),
                    closed: AtomicBool::new(false),
                    sent: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                })
            })
            .collect();
        for lane in &lanes {
            tokio::spawn(work(Arc::clone(lane)));
        }
        Alerts {
            lanes,
            incidents: Mutex::new(Incidents::default()),
            source: source.to_string(),
        }
    }

    /// Raises (or updates) the condition `key`.
    pub fn raise(&self, key: &str, message: &str, generation: u64, at_ms: u64) {
        let incident = self.incidents().raise(&self.source, key, generation, at_ms);
        self.enqueue(Alert {
            key: key.to_string(),
            resolved: false,
            message: message.to_string(),
            generation,
            at_ms,
            incident,
            source: self.source.clone(),
        });
    }

    /// Ends the condition `key`; nothing is sent when it was not raised.
    pub fn resolve(&self, key: &str, message: &str, generation: u64, at_ms: u64) {
        let Some(incident) = self.incidents().resolve(key) else {
            return;
        };
        self.enqueue(Alert {
            key: key.to_string(),
            resolved: true,
            message: message.to_string(),
            generation,
            at_ms,
            incident,
            source: self.source.clone(),
        });
    }

    fn incidents(&self) -> std::sync::MutexGuard<'_, Incidents> {
        self.incidents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, alert: Alert) {
        for lane in &self.lanes {
            if let Some(events) = &lane.channel.events
                && !events.iter().any(|e| e == alert.event())
            {
                continue;
            }
            let dropped = lane.queue.lock().unwrap_or_else(|p| p.into_inner()).push(alert.clone());
            if let Some(dropped) = dropped {
                tracing::warn!(channel = %lane.channel.name, key = %dropped.key, "alert queue full: dropped the oldest alert");
            }
            lane.wake.notify_one();
        }
    }

    pub fn stats(&self) -> Vec<ChannelStats> {
        self.lanes
            .iter()
            .map(|lane| ChannelStats {
                channel: lane.channel.name.clone(),
                sent: lane.sent.load(Ordering::Relaxed),
                failed: lane.failed.load(Ordering::Relaxed),
                dropped: lane.queue.lock().unwrap_or_else(|p| p.into_inner()).dropped(),
            })
            .collect()
    }
}

impl Drop for Alerts {
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.closed.store(true, Ordering::Release);
            lane.wake.notify_one();
        }
    }
}

/// A channel's worker: takes alerts in order, waits for the rate limit, delivers.
async fn work(lane: Arc<Lane>) {
    let started = Instant::now();
    let now_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut bucket = TokenBucket::new(lane.channel.per_minute_max, now_ms());
    loop {
        let next = lane.queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(alert) = next else {
            if lane.closed.load(Ordering::Acquire) {
                return;
            }
            lane.wake.notified().await;
            continue;
        };
        while let Err(wait_ms) = bucket.take(now_ms()) {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        match deliver_with_retries(&lane.channel, &alert).await {
            Ok(()) => {
                lane.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(message) => {
                lane.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %lane.channel.name, key = %alert.key, error = %message, "alert not delivered");
            }
        }
    }
}

/// Why one delivery attempt failed, and whether another could succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    Retry(String),
    GiveUp(String),
}

async fn deliver_with_retries(channel: &Channel, alert: &Alert) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match deliver(&channel.sink, alert).await {
            Ok(()) => return Ok(()),
            Err(Undelivered::GiveUp(message)) => return Err(message),
            Err(Undelivered::Retry(message)) => {
                attempt += 1;
                if attempt >= DELIVERY_ATTEMPTS_MAX {
                    return Err(format!("{message} (after {attempt} attempts)"));
                }
                let base = DELIVERY_BACKOFF_FIRST_MS << (attempt - 1);
                let wait = base + rest::random_u64() % (base / 2 + 1);
                tracing::info!(channel = %channel.name, error = %message, wait_ms = wait, "alert delivery failed; retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

/// The HTTP answer of a channel as a delivery result: 2xx delivered; 429, 408 and 5xx worth
/// another attempt; other statuses not.
fn judged(channel: &str, answer: Result<rest::Answer, rest::RestError>) -> Result<(), Undelivered> {
    let answer = answer.map_err(|e| Undelivered::Retry(e.to_string()))?;
    if answer.is_success() {
        return Ok(());
    }
    let message = format!("{channel} answered {}: {}", answer.status, answer.shown());
    match answer.status {
        408 | 429 | 500..=599 => Err(Undelivered::Retry(message)),
        _ => Err(Undelivered::GiveUp(message)),
    }
}

/// `judged` with every occurrence of the secret `url` in its message replaced by `shown`.
fn hidden(judged: Result<(), Undelivered>, url: &str, shown: &str) -> Result<(), Undelivered> {
    let hide = |m: String| m.replace(url, shown);
    judged.map_err(|undelivered| match undelivered {
        Undelivered::Retry(m) => Undelivered::Retry(hide(m)),
        Undelivered::GiveUp(m) => Undelivered::GiveUp(hide(m)),
    })
}

/// The JSON a generic webhook receives.
pub fn webhook_body(alert: &Alert) -> Value {
    json!({
        "key": alert.key,
        "event": alert.event(),
        "action": if alert.resolved { "resolve" } else { "trigger" },
        "severity": severity_of(alert.event()),
        "message": alert.message,
        "generation": alert.generation,
        "at_ms": alert.at_ms,
        "incident": alert.incident,
        "source": alert.source,
    })
}

/// The JSON a Slack incoming webhook receives (`text`, with mrkdwn).
pub fn slack_body(alert: &Alert) -> Value {
    let icon = if alert.resolved {
        ":white_check_mark:"
    } else if severity_of(alert.event()) == "critical" {
        ":rotating_light:"
    } else {
        ":warning:"
    };
    let head = if alert.resolved {
        format!("resolved: {}", alert.event())
    } else {
        alert.event().to_string()
    };
    json!({
        "text": format!(
            "{icon} *switchyard {head}* (generation {}, {})\n{}",
            alert.generation,
            slack_escaped(&alert.source),
            slack_escaped(&alert.message)
        )
    })
}

/// Text for Slack's `text` with `&`, `<` and `>` escaped, as Slack asks: unescaped, `<` starts a
/// control sequence, so a message quoting an answer (`<!channel>`, `<https://x|click>`, an
/// HTML error page) would notify the whole channel or show a disguised link.
pub fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The event PagerDuty's Events API v2 receives: a trigger with payload, or a resolve.
pub fn pagerduty_body(alert: &Alert, routing_key: &str) -> Value {
    if alert.resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": alert.incident,
        });
    }
    let summary: String = alert.summary().chars().take(PAGERDUTY_SUMMARY_CHARS_MAX).collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.incident,
        "payload": {
            "summary": summary,
            "source": alert.source,
            "severity": severity_of(alert.event()),
            "component": "switchyard-controller",
            "class": alert.event(),
            "custom_details": {
                "key": alert.key,
                "generation": alert.generation,
                "message": alert.message,
                "at_ms": alert.at_ms,
            },
        },
    })
}

async fn deliver(sink: &Sink, alert: &Alert) -> Result<(), Undelivered> {
    match sink {
        Sink::Webhook { url, secret, client } => {
            let answer = client.send(Method::POST, url, Some(&webhook_body(alert))).await;
            let judged = judged("the webhook", answer);
            match secret {
                true => hidden(judged, url, "<the webhook URL>"),
                false => judged,
            }
        }
        Sink::Slack { url, client } => {
            let answer = client.send(Method::POST, url.expose(), Some(&slack_body(alert))).await;
            // The webhook URL is the secret: keep it out of errors and logs.
            hidden(judged("Slack", answer), url.expose(), "<the Slack webhook URL>")
        }
        Sink::PagerDuty {
            url,
            routing_key,
            client,
        } => {
            let answer = client
                .send(Method::POST, url, Some(&pagerduty_body(alert, routing_key.expose())))
                .await;
            // PagerDuty explains a refusal in `message` and `errors`; keep its words.
            judged("PagerDuty", answer)
        }
        Sink::Email(mailer) => {
            let subject = alert.summary();
            let body = format!(
                "{}\n\nevent: {}\nseverity: {}\ngeneration: {}\nincident: {}\nsource: {}\nat: {}\n",
                alert.message,
                alert.event(),
                severity_of(alert.event()),
                alert.generation,
                alert.incident,
                alert.source,
                smtp::rfc5322_date(alert.at_ms)
            );
            mailer.send(&subject, &body, alert.at_ms).await.map_err(|e| match e {
                smtp::SmtpError::Transient(m) => Undelivered::Retry(m),
                smtp::SmtpError::Permanent(m) => Undelivered::GiveUp(m),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(key: &str, resolved: bool) -> Alert {
        Alert {
            key: key.into(),
            resolved,
            message: "step 'dns' refused generation 4".into(),
            generation: 4,
            at_ms: 1_000,
            incident: "ctl/fenced/g4-1000".into(),
            source: "ctl".into(),
        }
    }

    #[test]
    fn pagerduty_gets_a_trigger_with_payload_and_a_resolve_with_the_same_dedup_key() {
        let trigger = pagerduty_body(&alert("fenced", false), "R0UTING");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "ctl/fenced/g4-1000");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "ctl");
        assert!(
            trigger["payload"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains("fenced"))
        );
        let resolve = pagerduty_body(&alert("fenced", true), "R0UTING");
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UTING", "event_action": "resolve", "dedup_key": "ctl/fenced/g4-1000"})
        );
    }

    #[test]
    fn slack_text_escapes_what_slack_would_read_as_control_sequences() {
        let mut quoting = alert("runbook", false);
        quoting.message = "HAProxy answered: <!channel> <https://evil.example|log in> & more".into();
        let text = slack_body(&quoting)["text"].as_str().expect("text").to_string();
        assert!(
            text.ends_with("HAProxy answered: &lt;!channel&gt; &lt;https://evil.example|log in&gt; &amp; more"),
            "{text}"
        );
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
    }

    #[test]
    fn the_engines_runbook_key_is_a_failed_step() {
        let body = webhook_body(&alert("runbook", false));
        assert_eq!(body["event"], "step_failed");
        assert_eq!(body["severity"], "error");
        assert_eq!(body["action"], "trigger");
        assert!(
            slack_body(&alert("runbook", true))["text"]
                .as_str()
                .is_some_and(|t| t.contains("resolved: step_failed"))
        );
    }

    fn webhook_channel(url: &str, events: Option<Vec<String>>) -> Channel {
        Channel {
            name: "webhook #1".into(),
            sink: Sink::Webhook {
                url: url.into(),
                secret: false,
                client: Rest::new("", None, 60_000).expect("client"),
            },
            events,
            per_minute_max: PER_MINUTE_MAX,
        }
    }

    #[tokio::test]
    async fn a_stuck_channel_drops_its_oldest_alerts_and_counts_them_without_blocking_the_sender() {
        // A receiver that accepts and never answers: the first delivery hangs.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let alerts = Alerts::start(vec![webhook_channel(&url, None)], "ctl");
        let extra = 6;
        for i in 0..(QUEUE_ALERTS_MAX + extra) {
            alerts.raise(&format!("k{i}"), "m", 1, 0);
        }
        let stats = &alerts.stats()[0];
        // One alert may already be in delivery; the others beyond the queue were dropped.
        assert!((extra as u64 - 1..=extra as u64).contains(&stats.dropped), "{stats:?}");
        assert_eq!(stats.sent, 0);
    }

    #[tokio::test]
    async fn a_filtered_channel_gets_only_its_events_and_resolves_only_of_raised_conditions() {
        let alerts = Alerts::start(
            vec![webhook_channel("http://127.0.0.1:1/x", Some(vec!["fenced".into()]))],
            "ctl",
        );
        alerts.raise("runbook", "a step failed", 1, 0);
        alerts.resolve("all_down", "never raised", 1, 0);
        assert_eq!(alerts.lanes[0].queue.lock().expect("queue").len(), 0);
        alerts.raise("fenced", "stale", 2, 5);
        alerts.resolve("fenced", "resumed", 3, 6);
        let mut queue = alerts.lanes[0].queue.lock().expect("queue");
        // The worker may have taken the first already; what is left pairs by incident.
        let mut left = Vec::new();
        while let Some(alert) = queue.pop() {
            left.push(alert);
        }
        assert!(
            left.iter()
                .all(|a| a.key == "fenced" && a.incident == "ctl/fenced/g2-5"),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn a_webhook_url_from_url_secret_is_not_shown_in_failures() {
        // Discord's and Teams' webhook URLs carry their token in the path, others in the query.
        let url = "http://127.0.0.1:1/api/webhooks/123/TOKENPART?key=QUERYSECRET";
        let sink = Sink::Webhook {
            url: url.into(),
            secret: true,
            client: Rest::new("", None, 2_000).expect("client"),
        };
        let error = deliver(&sink, &alert("fenced", false))
            .await
            .expect_err("nothing listens on port 1");
        let Undelivered::Retry(message) = error else {
            panic!("a refused connection is worth a retry: {error:?}");
        };
        assert!(
            !message.contains("TOKENPART") && !message.contains("QUERYSECRET") && message.contains("<the webhook URL>"),
            "{message}"
        );
        // A URL written in the config file is no secret: shown, to say where delivery failed.
        let open = Sink::Webhook {
            url: url.into(),
            secret: false,
            client: Rest::new("", None, 2_000).expect("client"),
        };
        let error = deliver(&open, &alert("fenced", false)).await.expect_err("refused");
        assert!(
            matches!(&error, Undelivered::Retry(m) if m.contains("127.0.0.1:1")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_slack_failure_does_not_show_the_webhook_url() {
        let sink = Sink::Slack {
            url: Secret::new("http://127.0.0.1:1/services/T000/B000/SECRETPART"),
            client: Rest::new("", None, 2_000).expect("client"),
        };
        let error = deliver(&sink, &alert("fenced", false))
            .await
            .expect_err("nothing listens on port 1");
        let Undelivered::Retry(message) = error else {
            panic!("a refused connection is worth a retry: {error:?}");
        };
        assert!(
            !message.contains("SECRETPART") && message.contains("<the Slack webhook URL>"),
            "{message}"
        );
    }

    #[test]
    fn refusals_keep_the_channels_words_and_only_transient_ones_are_retried() {
        let answer = |status: u16, body: &'static str| {
            Ok(rest::Answer {
                status,
                retry_after_ms: None,
                body: bytes::Bytes::from_static(body.as_bytes()),
            })
        };
        assert_eq!(judged("PagerDuty", answer(202, r#"{"status":"success"}"#)), Ok(()));
        assert_eq!(
            judged(
                "PagerDuty",
                answer(400, r#"{"status":"invalid event","message":"Event object is invalid","errors":["Invalid routing key"]}"#)
            ),
            Err(Undelivered::GiveUp(
                r#"PagerDuty answered 400: {"status":"invalid event","message":"Event object is invalid","errors":["Invalid routing key"]}"#
                    .into()
            ))
        );
        assert!(
            matches!(judged("Slack", answer(429, "rate_limited")), Err(Undelivered::Retry(m)) if m.contains("rate_limited"))
        );
        assert!(matches!(judged("Slack", answer(503, "")), Err(Undelivered::Retry(_))));
        assert!(
            matches!(judged("Slack", answer(404, "no_service")), Err(Undelivered::GiveUp(m)) if m.contains("no_service"))
        );
    }

    #[test]
    fn smtp_servers_take_a_default_port_by_tls_mode() {
        assert_eq!(
            split_host_port("smtp.example.com", 587),
            Some(("smtp.example.com".into(), 587))
        );
        assert_eq!(split_host_port("127.0.0.1:2525", 587), Some(("127.0.0.1".into(), 2525)));
        assert_eq!(split_host_port("[::1]:25", 587), Some(("::1".into(), 25)));
        assert_eq!(split_host_port("a:b", 587), None);
        assert_eq!(split_host_port("", 587), None);
    }
}
