//! Alert channels (`[[alerts]]` in the controller's config): a generic JSON webhook, a
//! Slack-compatible incoming webhook, PagerDuty's Events API v2 and SMTP email.
//!
//! The controller raises an alert (a condition by key: `decision`, `step_failed`, `fenced`,
//! `all_down`, `stuck`, `rate_limit`, `ha_leadership`) and resolves it when the condition
//! ends. Each raise opens an incident whose dedup key names the condition within the group of
//! controllers (`{group}/{key}`, [`queue::dedup_key`]), so PagerDuty groups a condition's
//! updates and its resolve into one incident whichever member (or restart) sends them; the
//! controller records the incidents in its audit log and [`Alerts::restore`]s the open ones
//! at start; a new leader of a group of controllers [`Alerts::adopt`]s those its predecessor
//! left open (kept in etcd), with their original dedup keys. Every channel gets the alert through its own bounded queue and worker task, so
//! sending never blocks the runbook or the engine, and a slow channel never holds up another:
//! - a waiting trigger absorbs a newer update of the same incident, so updates never fill the
//!   queue; a queue full all the same drops its oldest alert and counts it
//!   ([`ChannelStats::dropped`]);
//! - each channel is rate-limited (a token bucket, `per_minute_max`);
//! - a delivery is retried until it succeeds or [`DELIVERY_GIVE_UP_MS`] passed: a 429's
//!   `Retry-After` is honoured up to [`RETRY_AFTER_MAX_MS`]; a 429 without it waits from
//!   [`RATE_LIMITED_BACKOFF_FIRST_MS`] (PagerDuty asks for "a backoff of a few minutes"), other
//!   transient failures from [`DELIVERY_BACKOFF_FIRST_MS`], doubling up to
//!   [`DELIVERY_BACKOFF_MAX_MS`], with jitter; answers that no retry can fix (4xx, SMTP 5xx)
//!   are not retried; failures are logged with the channel's own text;
//! - each trigger and resolve is tracked until it finished on every channel it goes to
//!   (delivered, given up on, or dropped from a full queue): [`Alerts::finished`] reports those,
//!   and the controller records them in its audit log (and the group's list of incidents), so a
//!   controller that died between opening an incident and delivering it pages it again at its
//!   restart (or the next leader does) instead of adopting it silently. The tracking holds one
//!   counter per incident with an alert queued or in delivery: bounded by the queues.

pub mod queue;
pub mod smtp;

use std::collections::{BTreeMap, BTreeSet};
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
pub const EVENTS: &[&str] = &[
    "decision",
    "step_failed",
    "fenced",
    "all_down",
    "stuck",
    "rate_limit",
    "ha_leadership",
];
/// Most `[[alerts]]` entries.
pub const CHANNELS_MAX: usize = 16;
/// Alerts waiting per channel at most (updates of a waiting incident merge into it); beyond,
/// the oldest is dropped.
pub const QUEUE_ALERTS_MAX: usize = 64;
/// Default and largest `per_minute_max`.
pub const PER_MINUTE_DEFAULT: u32 = 10;
pub const PER_MINUTE_MAX: u32 = 600;
/// How long one alert is retried (it stays pending meanwhile) before it counts as failed.
pub const DELIVERY_GIVE_UP_MS: u64 = 30 * 60_000;
/// First wait after a transient failure (network, 408, 5xx); doubles, plus up to half of it as
/// jitter, up to [`DELIVERY_BACKOFF_MAX_MS`].
pub const DELIVERY_BACKOFF_FIRST_MS: u64 = 2_000;
/// First wait after a 429 without `Retry-After` (PagerDuty's Events API sends none and asks
/// for a backoff of a few minutes); doubles like the other backoff.
pub const RATE_LIMITED_BACKOFF_FIRST_MS: u64 = 60_000;
/// Longest backoff between two attempts.
pub const DELIVERY_BACKOFF_MAX_MS: u64 = 5 * 60_000;
/// Longest `Retry-After` honoured as asked; a longer one is waited for this long, then tried.
pub const RETRY_AFTER_MAX_MS: u64 = 10 * 60_000;
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

    /// The URL from `url` or `url_secret` (exactly one), and how errors may show it: as is
    /// when written in the config, only `scheme://host/…` when it is a secret.
    fn url(&self, what: &str, checker: &mut dyn Checker) -> Option<(String, std::ops::Range<usize>, String)> {
        match (&self.url, &self.url_secret) {
            (Some(url), None) => Some((url.get_ref().clone(), url.span(), url.get_ref().clone())),
            (None, Some(secret)) => secret
                .get_ref()
                .resolve(secret.span(), &format!("{what} url_secret"), checker)
                .map(|s| {
                    let url = s.expose().to_string();
                    let shown = common::text::shown_url(&url);
                    (url, secret.span(), shown)
                }),
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
        let (url, span, shown) = self.url(what, checker)?;
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
                format!("alert url: '{shown}' does not start with http:// or https:// and a host (and a port in 1..=65535) ({what})"),
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
        let (url, span, shown) = self.url(what, checker)?;
        if let Err(message) = rest::check_base_url_shown(&url, &shown) {
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
        "rate_limit" | "ha_leadership" => "warning",
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
    retry: RetryPolicy,
    tracker: Arc<Tracker>,
}

/// The triggers and resolves not finished on every channel yet, by (dedup key, resolve): what
/// the controller needs to record a delivery.
#[derive(Debug, Default)]
struct Tracker {
    state: Mutex<Deliveries>,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Deliveries {
    /// Alerts queued or in delivery, one per channel (a waiting trigger that absorbed an update
    /// counts once). An entry exists only while its count is above zero.
    pending: BTreeMap<(String, bool), usize>,
    /// Those whose last alert finished since [`Alerts::finished`] last took them.
    finished: BTreeSet<(String, bool)>,
}

impl Tracker {
    fn state(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queued(&self, alert: &Alert) {
        *self
            .state()
            .pending
            .entry((alert.incident.clone(), alert.resolved))
            .or_insert(0) += 1;
    }

    /// One channel is done with `alert` (delivered, given up on, or dropped).
    fn done(&self, alert: &Alert) {
        let id = (alert.incident.clone(), alert.resolved);
        let mut state = self.state();
        let Some(count) = state.pending.get_mut(&id) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            state.pending.remove(&id);
            state.finished.insert(id);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// A resent resolve went to no channel (none takes its event): finished at once, unless
    /// an earlier alert of the same incident and kind is still pending. (A first trigger or
    /// resolve no channel takes is settled where it is sent: nothing is recorded for it.)
    fn went_nowhere(&self, alert: &Alert) {
        let id = (alert.incident.clone(), alert.resolved);
        let mut state = self.state();
        if !state.pending.contains_key(&id) {
            state.finished.insert(id);
            drop(state);
            self.wake.notify_one();
        }
    }
}

/// The running channels. Sending never waits; dropping this stops the workers once their
/// queues are empty.
pub struct Alerts {
    lanes: Vec<Arc<Lane>>,
    incidents: Mutex<Incidents>,
    source: String,
    group: String,
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").field("channels", &self.lanes.len()).finish()
    }
}

impl Alerts {
    /// Starts one worker task per channel (call inside a tokio runtime). `source` names the
    /// sender in alerts; `group` the controllers that share incidents (every member of an HA
    /// group, or one controller across its restarts), in dedup keys.
    pub fn start(channels: Vec<Channel>, source: &str, group: &str) -> Alerts {
        Alerts::start_with(channels, source, group, RetryPolicy::default())
    }

    /// [`Alerts::start`] with other retry times (tests shorten them).
    pub fn start_with(channels: Vec<Channel>, source: &str, group: &str, retry: RetryPolicy) -> Alerts {
        let tracker = Arc::new(Tracker::default());
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
                    retry,
                    tracker: Arc::clone(&tracker),
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
            group: group.to_string(),
            tracker,
        }
    }

    /// Raises (or updates) the condition `key`; returns its incident's dedup key.
    pub fn raise(&self, key: &str, message: &str, generation: u64, at_ms: u64) -> String {
        let incident = self.incidents().raise(&self.group, key, at_ms, message);
        let taken = self.enqueue(Alert {
            key: key.to_string(),
            resolved: false,
            message: message.to_string(),
            generation,
            at_ms,
            incident: incident.clone(),
            source: self.source.clone(),
        });
        if !taken {
            // No channel takes its event: there is no delivery to wait for (nor to record).
            self.incidents().mark_delivered(&incident);
        }
        incident
    }

    /// Ends the condition `key`; nothing is sent when it is not open. Returns the incident's
    /// dedup key, if it was open.
    pub fn resolve(&self, key: &str, message: &str, generation: u64, at_ms: u64) -> Option<String> {
        let incident = self.incidents().resolve(key)?;
        let taken = self.enqueue(Alert {
            key: key.to_string(),
            resolved: true,
            message: message.to_string(),
            generation,
            at_ms,
            incident: incident.clone(),
            source: self.source.clone(),
        });
        if !taken {
            self.incidents().resolve_delivered(&incident);
        }
        Some(incident)
    }

    /// Marks the condition `key` open under `incident` without sending anything: an incident
    /// a previous run (or term) opened and did not resolve, read back from the audit log. A
    /// later raise updates it, a resolve closes it.
    /// `delivered` says whether the audit log recorded its trigger delivered.
    pub fn restore(&self, key: &str, incident: &str, opened_at_ms: u64, message: &str, delivered: bool) {
        self.incidents()
            .open_as(key, incident, opened_at_ms, message, delivered);
    }

    /// Sends the resolve of `incident` (condition `key`) again, without touching the open
    /// incidents: a resolve the audit log recorded and not its delivery (the controller died
    /// first), whose pager would otherwise stay open.
    pub fn resend_resolve(&self, key: &str, incident: &str, message: &str, generation: u64, at_ms: u64) {
        self.incidents().resolving_as(queue::OpenIncident {
            key: key.to_string(),
            incident: incident.to_string(),
            opened_at_ms: at_ms,
            message: message.to_string(),
            delivered: false,
        });
        let alert = Alert {
            key: key.to_string(),
            resolved: true,
            message: message.to_string(),
            generation,
            at_ms,
            incident: incident.to_string(),
            source: self.source.clone(),
        };
        if !self.enqueue(alert.clone()) {
            // Reported finished, so the controller records it and the log stops holding it.
            self.tracker.went_nowhere(&alert);
        }
    }

    /// Waits until triggers or resolves finished on every channel they went to (delivered,
    /// given up on after [`DELIVERY_GIVE_UP_MS`], or dropped from a full queue), and returns
    /// them as (dedup key, resolve), each once however many alerts it took. Check
    /// [`Alerts::settled`] before recording one: another alert of the incident may have been
    /// queued since.
    pub async fn finished(&self) -> Vec<(String, bool)> {
        loop {
            let taken = std::mem::take(&mut self.tracker.state().finished);
            if !taken.is_empty() {
                return taken.into_iter().collect();
            }
            self.tracker.wake.notified().await;
        }
    }

    /// Whether no trigger (or update; `resolve` false) or no resolve of `incident` is queued
    /// or in delivery on any channel.
    pub fn settled(&self, incident: &str, resolve: bool) -> bool {
        !self
            .tracker
            .state()
            .pending
            .contains_key(&(incident.to_string(), resolve))
    }

    /// Marks the open incident `incident` delivered; its condition key if it was open and not
    /// delivered yet (the controller then records the delivery).
    pub fn mark_delivered(&self, incident: &str) -> Option<String> {
        self.incidents().mark_delivered(incident)
    }

    /// The resolve of `incident` finished on every channel; whether it was pending.
    pub fn resolve_delivered(&self, incident: &str) -> bool {
        self.incidents().resolve_delivered(incident)
    }

    /// The resolves sent and not finished on every channel yet, oldest first (for the group's
    /// list: a leader that dies before delivering one leaves it to its successor).
    pub fn resolving(&self) -> Vec<queue::OpenIncident> {
        self.incidents().resolving()
    }

    /// Marks the condition `open.key` open under `open.incident` without raising it, replacing
    /// the dedup key of an incident open under another: an incident the group's previous
    /// leader opened, whose original dedup key is the one the pager knows (and whether its
    /// trigger was delivered, as the group's list says). The incident replaced (restored from
    /// this member's audit log under an older dedup key) is open on the pager too and nothing
    /// else would ever close it: a resolve is sent for it (at `generation`, `at_ms`). Returns
    /// its dedup key, if any.
    pub fn adopt(&self, open: &queue::OpenIncident, generation: u64, at_ms: u64) -> Option<String> {
        let (key, incident) = (&open.key, &open.incident);
        let replaced = self
            .incidents()
            .adopt(key, incident, open.opened_at_ms, &open.message, open.delivered)?;
        self.enqueue(Alert {
            key: key.to_string(),
            resolved: true,
            message: format!("superseded by incident {incident}, which stays open for this condition"),
            generation,
            at_ms,
            incident: replaced.clone(),
            source: self.source.clone(),
        });
        Some(replaced)
    }

    /// The dedup key of the condition `key`'s open incident.
    pub fn incident_of(&self, key: &str) -> Option<String> {
        self.incidents().incident(key)
    }

    /// The open incidents (what a later resolve needs), by key.
    pub fn open_incidents(&self) -> Vec<queue::OpenIncident> {
        self.incidents().open()
    }

    /// Whether the condition `key` has an open incident.
    pub fn is_open(&self, key: &str) -> bool {
        self.incidents().keys().iter().any(|k| k == key)
    }

    /// The conditions with an open incident.
    pub fn open_keys(&self) -> Vec<String> {
        self.incidents().keys()
    }

    fn incidents(&self) -> std::sync::MutexGuard<'_, Incidents> {
        self.incidents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `alert` on every channel that takes its event; returns whether any did.
    fn enqueue(&self, alert: Alert) -> bool {
        let mut taken = false;
        for lane in &self.lanes {
            if let Some(events) = &lane.channel.events
                && !events.iter().any(|e| e == alert.event())
            {
                continue;
            }
            taken = true;
            let mut absorbed = false;
            let dropped = {
                let mut queue = lane.queue.lock().unwrap_or_else(|p| p.into_inner());
                let dropped = queue.push_merging(alert.clone(), |waiting, new| {
                    let merge = coalesced(waiting, new);
                    absorbed = merge == queue::Merge::Absorbed;
                    merge
                });
                // Counted while the queue is locked: the worker cannot finish it first.
                if !absorbed {
                    self.tracker.queued(&alert);
                }
                dropped
            };
            if let Some(dropped) = dropped {
                tracing::warn!(channel = %lane.channel.name, key = %dropped.key, "alert queue full: dropped the oldest alert");
                self.tracker.done(&dropped);
            }
            lane.wake.notify_one();
        }
        taken
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

/// A trigger (or update) still waiting in a queue takes the content of a newer update of the
/// same incident: it is sent once, with the latest words, and updates never crowd a trigger or
/// a resolve out of a full queue. A waiting resolve of the incident ends the search (the new
/// trigger opens the incident again after it).
fn coalesced(waiting: &mut Alert, new: &Alert) -> queue::Merge {
    if waiting.incident != new.incident || waiting.key != new.key {
        return queue::Merge::Next;
    }
    if waiting.resolved || new.resolved {
        return queue::Merge::Stop;
    }
    waiting.message.clone_from(&new.message);
    waiting.generation = new.generation;
    waiting.at_ms = new.at_ms;
    queue::Merge::Absorbed
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
        match deliver_with_retries(&lane.channel, &alert, &lane.retry).await {
            Ok(()) => {
                lane.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(message) => {
                lane.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %lane.channel.name, key = %alert.key, error = %message, "alert not delivered");
            }
        }
        lane.tracker.done(&alert);
    }
}

/// Why one delivery attempt failed, and whether another could succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// A transient failure (network, timeout, 408, 5xx, SMTP 4xx).
    Retry(String),
    /// 429: the channel asks to slow down, for `retry_after_ms` when it said.
    Throttled {
        message: String,
        retry_after_ms: Option<u64>,
    },
    GiveUp(String),
}

/// How long a channel's worker keeps retrying one alert, and how it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub give_up_ms: u64,
    pub backoff_first_ms: u64,
    pub rate_limited_backoff_first_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_after_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            give_up_ms: DELIVERY_GIVE_UP_MS,
            backoff_first_ms: DELIVERY_BACKOFF_FIRST_MS,
            rate_limited_backoff_first_ms: RATE_LIMITED_BACKOFF_FIRST_MS,
            backoff_max_ms: DELIVERY_BACKOFF_MAX_MS,
            retry_after_max_ms: RETRY_AFTER_MAX_MS,
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after `failures` failed ones (1 after the first) ended
    /// in `failure`, and what it follows. `random` is any 64-bit value (jitter).
    pub fn wait_ms(&self, failures: u32, failure: &Undelivered, random: u64) -> (u64, &'static str) {
        let doubled = |first: u64| {
            first
                .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
                .min(self.backoff_max_ms)
        };
        let (base, why) = match failure {
            Undelivered::Throttled {
                retry_after_ms: Some(asked),
                ..
            } if *asked > self.retry_after_max_ms => (self.retry_after_max_ms, "Retry-After (capped)"),
            Undelivered::Throttled {
                retry_after_ms: Some(asked),
                ..
            } => (*asked, "Retry-After"),
            Undelivered::Throttled {
                retry_after_ms: None, ..
            } => (doubled(self.rate_limited_backoff_first_ms), "backoff after 429"),
            Undelivered::Retry(_) | Undelivered::GiveUp(_) => (doubled(self.backoff_first_ms), "backoff"),
        };
        // Up to a quarter more after a Retry-After (clients throttled together spread out),
        // up to half more for a backoff.
        let spread = if why.starts_with("Retry-After") {
            base / 4
        } else {
            base / 2
        };
        (base.saturating_add(random % (spread + 1)), why)
    }
}

async fn deliver_with_retries(channel: &Channel, alert: &Alert, policy: &RetryPolicy) -> Result<(), String> {
    let started = Instant::now();
    let mut failures: u32 = 0;
    loop {
        let failure = match deliver(&channel.sink, alert).await {
            Ok(()) => return Ok(()),
            Err(Undelivered::GiveUp(message)) => return Err(message),
            Err(failure) => failure,
        };
        failures = failures.saturating_add(1);
        let message = match &failure {
            Undelivered::Retry(m) | Undelivered::GiveUp(m) | Undelivered::Throttled { message: m, .. } => m.clone(),
        };
        let (wait, why) = policy.wait_ms(failures, &failure, rest::random_u64());
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if elapsed.saturating_add(wait) > policy.give_up_ms {
            return Err(format!(
                "{message} (gave up after {failures} attempts over {} s)",
                elapsed / 1000
            ));
        }
        tracing::info!(channel = %channel.name, key = %alert.key, error = %message, wait_ms = wait, after = why, "alert delivery failed; it stays queued and is retried");
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// The HTTP answer of a channel as a delivery result: 2xx delivered; 429 throttled; 408 and
/// 5xx worth another attempt; other statuses not.
fn judged(channel: &str, answer: Result<rest::Answer, rest::RestError>) -> Result<(), Undelivered> {
    let answer = answer.map_err(|e| Undelivered::Retry(e.to_string()))?;
    if answer.is_success() {
        return Ok(());
    }
    let message = format!("{channel} answered {}: {}", answer.status, answer.shown());
    match answer.status {
        429 => Err(Undelivered::Throttled {
            message,
            retry_after_ms: answer.retry_after_ms,
        }),
        408 | 500..=599 => Err(Undelivered::Retry(message)),
        _ => Err(Undelivered::GiveUp(message)),
    }
}

/// `judged` with every occurrence of the secret `url` in its message replaced by `shown`.
fn hidden(judged: Result<(), Undelivered>, url: &str, shown: &str) -> Result<(), Undelivered> {
    let hide = |m: String| m.replace(url, shown);
    judged.map_err(|undelivered| match undelivered {
        Undelivered::Retry(m) => Undelivered::Retry(hide(m)),
        Undelivered::GiveUp(m) => Undelivered::GiveUp(hide(m)),
        Undelivered::Throttled {
            message,
            retry_after_ms,
        } => Undelivered::Throttled {
            message: hide(message),
            retry_after_ms,
        },
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
            let answer = client
                .send_once_unretried(Method::POST, url, Some(&webhook_body(alert)))
                .await;
            let judged = judged("the webhook", answer);
            match secret {
                true => hidden(judged, url, "<the webhook URL>"),
                false => judged,
            }
        }
        Sink::Slack { url, client } => {
            let answer = client
                .send_once_unretried(Method::POST, url.expose(), Some(&slack_body(alert)))
                .await;
            // The webhook URL is the secret: keep it out of errors and logs.
            hidden(judged("Slack", answer), url.expose(), "<the Slack webhook URL>")
        }
        Sink::PagerDuty {
            url,
            routing_key,
            client,
        } => {
            let answer = client
                .send_once_unretried(Method::POST, url, Some(&pagerduty_body(alert, routing_key.expose())))
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
            let refused = mailer.send(&subject, &body, alert.at_ms).await.map_err(|e| match e {
                smtp::SmtpError::Transient(m) => Undelivered::Retry(m),
                smtp::SmtpError::Permanent(m) => Undelivered::GiveUp(m),
            })?;
            // Delivered to the accepted recipients; the refused ones are reported, not retried
            // (a retry would send the others a second copy).
            if !refused.is_empty() {
                tracing::warn!(key = %alert.key, refused = %refused.join("; "), "alert mail accepted for some recipients only");
            }
            Ok(())
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
        let alerts = Alerts::start(vec![webhook_channel(&url, None)], "ctl", "grp");
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
            "grp",
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
            left.iter().all(|a| a.key == "fenced" && a.incident == "grp/fenced"),
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
            matches!(judged("Slack", answer(429, "rate_limited")), Err(Undelivered::Throttled { message, .. }) if message.contains("rate_limited"))
        );
        assert!(matches!(judged("Slack", answer(503, "")), Err(Undelivered::Retry(_))));
        assert!(
            matches!(judged("Slack", answer(404, "no_service")), Err(Undelivered::GiveUp(m)) if m.contains("no_service"))
        );
    }

    /// A receiver answering each request with the next of `answers` (status, extra header
    /// lines) and the last one after them; records when each request came.
    async fn scripted_http(answers: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<Instant>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/services/T0/B0/SECRET",
            listener.local_addr().expect("address")
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut index = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by Content-Length.
                while let Ok(read) = socket.read(&mut chunk).await {
                    if read == 0 {
                        break;
                    }
                    request.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                times.lock().expect("times").push(Instant::now());
                let (status, headers) = answers[index.min(answers.len() - 1)];
                index += 1;
                let answer =
                    format!("HTTP/1.1 {status} X\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\nok");
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, seen)
    }

    fn slack_channel(url: &str) -> Channel {
        Channel {
            name: "slack #1".into(),
            sink: Sink::Slack {
                url: Secret::new(url),
                client: Rest::new("", None, 2_000).expect("client"),
            },
            events: None,
            per_minute_max: PER_MINUTE_MAX,
        }
    }

    /// Test-only retry times: a [`RETRY_AFTER_MAX_MS`] of 300 ms stands for the real 10 min.
    const SHORT: RetryPolicy = RetryPolicy {
        give_up_ms: 20_000,
        backoff_first_ms: 10,
        rate_limited_backoff_first_ms: 40,
        backoff_max_ms: 200,
        retry_after_max_ms: 300,
    };

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_long_retry_after_is_honoured_up_to_the_bound_and_the_alert_is_not_dropped() {
        // Slack throttles with Retry-After: 60 four times, then takes the post.
        let throttled = (429, "Retry-After: 60\r\n");
        let (url, seen) = scripted_http(vec![throttled, throttled, throttled, throttled, (200, "")]).await;
        let alerts = Alerts::start_with(vec![slack_channel(&url)], "ctl", "grp", SHORT);
        alerts.raise("all_down", "every region is down", 3, 0);
        until("the fifth request", || alerts.stats()[0].sent == 1).await;
        let times = seen.lock().expect("times").clone();
        assert_eq!(times.len(), 5, "one request per attempt (no inner retries): {times:?}");
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            // The capped Retry-After (300 ms, plus at most a quarter), never the 10 ms backoff.
            assert!(gap >= Duration::from_millis(300), "{gap:?}");
        }
        assert_eq!(alerts.stats()[0].failed, 0);
    }

    #[tokio::test]
    async fn a_429_without_retry_after_backs_off_exponentially_until_the_give_up_time() {
        let (url, seen) = scripted_http(vec![(429, "")]).await;
        let policy = RetryPolicy {
            give_up_ms: 1_500,
            ..SHORT
        };
        let alerts = Alerts::start_with(vec![slack_channel(&url)], "ctl", "grp", policy);
        alerts.raise("stuck", "automation is stuck", 3, 0);
        until("the give-up", || alerts.stats()[0].failed == 1).await;
        let times = seen.lock().expect("times").clone();
        let gaps: Vec<Duration> = times.windows(2).map(|p| p[1] - p[0]).collect();
        // 40, 80, 160, 200 (capped), 200... ms plus jitter: few requests, growing gaps.
        assert!((4..=12).contains(&times.len()), "{gaps:?}");
        assert!(
            gaps[0] >= Duration::from_millis(40) && gaps[2] >= Duration::from_millis(160),
            "{gaps:?}"
        );
        assert_eq!(alerts.stats()[0].sent, 0);
    }

    #[test]
    fn the_wait_follows_retry_after_up_to_its_bound_else_a_jittered_doubling_backoff() {
        let policy = RetryPolicy::default();
        let throttled = |retry_after_ms| Undelivered::Throttled {
            message: "429".into(),
            retry_after_ms,
        };
        assert_eq!(policy.wait_ms(1, &throttled(Some(60_000)), 0), (60_000, "Retry-After"));
        assert_eq!(
            policy.wait_ms(1, &throttled(Some(3_600_000)), 0),
            (RETRY_AFTER_MAX_MS, "Retry-After (capped)")
        );
        // PagerDuty's 429 has no Retry-After: a minute, then two, then the five-minute cap.
        assert_eq!(policy.wait_ms(1, &throttled(None), 0).0, 60_000);
        assert_eq!(policy.wait_ms(2, &throttled(None), 0).0, 120_000);
        assert_eq!(policy.wait_ms(9, &throttled(None), 0).0, DELIVERY_BACKOFF_MAX_MS);
        let network = Undelivered::Retry("refused".into());
        assert_eq!(policy.wait_ms(1, &network, 0).0, DELIVERY_BACKOFF_FIRST_MS);
        for random in [1, 999, u64::MAX] {
            let (wait, _) = policy.wait_ms(3, &network, random);
            assert!((8_000..=12_000).contains(&wait), "{wait}");
        }
        assert_eq!(policy.wait_ms(64, &network, 0).0, DELIVERY_BACKOFF_MAX_MS);
    }

    #[tokio::test]
    async fn updates_of_one_incident_merge_so_a_full_queue_keeps_every_trigger_and_resolve() {
        // A receiver that never answers: everything stays queued.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let alerts = Alerts::start(vec![webhook_channel(&url, None)], "ctl", "grp");
        alerts.raise("all_down", "first", 1, 0);
        alerts.raise("runbook", "step 'dns' failed", 1, 1);
        // A retry storm: hundreds of updates of one incident.
        for generation in 2..500 {
            alerts.raise(
                "runbook",
                &format!("step 'dns' failed, generation {generation}"),
                generation,
                2,
            );
        }
        alerts.resolve("all_down", "a region is back", 500, 3);
        alerts.raise("fenced", "stale", 500, 4);
        let stats = &alerts.stats()[0];
        assert_eq!(stats.dropped, 0, "{stats:?}");
        let mut queue = alerts.lanes[0].queue.lock().expect("queue");
        let mut left = Vec::new();
        while let Some(alert) = queue.pop() {
            left.push((alert.key, alert.resolved, alert.generation));
        }
        // (The worker may hold the first trigger already.)
        let expected = vec![
            ("all_down".to_string(), false, 1),
            ("runbook".to_string(), false, 499),
            ("all_down".to_string(), true, 500),
            ("fenced".to_string(), false, 500),
        ];
        assert!(left == expected || left == expected[1..], "{left:?}");
    }

    #[tokio::test]
    async fn an_incident_replaced_by_the_groups_dedup_key_is_resolved_under_its_own() {
        // A receiver that never answers: what is sent stays queued (but the first taken).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let alerts = Alerts::start(vec![webhook_channel(&url, None)], "member-b", "grp");
        alerts.raise("fenced", "stale", 1, 0);
        // Restored from this member's audit log under an older key, then adopted under the
        // group's: the older incident is open on the pager and must be closed.
        alerts.restore("all_down", "ctl/all_down/g1-1000", 1_000, "every region is down", true);
        let adopted = queue::OpenIncident {
            key: "all_down".into(),
            incident: "grp/all_down".into(),
            opened_at_ms: 900,
            message: "every region is down".into(),
            delivered: true,
        };
        let replaced = alerts.adopt(&adopted, 7, 2_000);
        assert_eq!(replaced.as_deref(), Some("ctl/all_down/g1-1000"));
        assert_eq!(alerts.incident_of("all_down").as_deref(), Some("grp/all_down"));
        // The same dedup key again: nothing replaced, nothing sent.
        assert_eq!(alerts.adopt(&adopted, 7, 2_000), None);
        let mut queue = alerts.lanes[0].queue.lock().expect("queue");
        let mut left = Vec::new();
        while let Some(alert) = queue.pop() {
            left.push((alert.key, alert.incident, alert.resolved, alert.generation));
        }
        let resolve = ("all_down".to_string(), "ctl/all_down/g1-1000".to_string(), true, 7);
        assert!(
            left == vec![
                ("fenced".to_string(), "grp/fenced".to_string(), false, 1),
                resolve.clone()
            ] || left == vec![resolve],
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn a_restored_incident_is_resolved_with_its_recorded_dedup_key() {
        let alerts = Alerts::start(
            vec![webhook_channel("http://127.0.0.1:1/x", Some(vec!["all_down".into()]))],
            "member-b",
            "grp",
        );
        assert_eq!(alerts.resolve("all_down", "never raised here", 1, 0), None);
        alerts.restore(
            "all_down",
            "ctl/all_down/g1-1796501222887",
            1_796_501_222_887,
            "every region is down",
            true,
        );
        assert!(alerts.is_open("all_down"));
        assert_eq!(
            alerts
                .resolve("all_down", "the condition no longer holds", 2, 0)
                .as_deref(),
            Some("ctl/all_down/g1-1796501222887")
        );
        assert!(alerts.open_keys().is_empty());
    }

    /// A trigger is reported finished once every channel it goes to is done with it: one
    /// channel delivered it after two failed attempts, the other (filtered) never took it.
    #[tokio::test]
    async fn a_trigger_is_reported_finished_once_every_channel_it_goes_to_is_done() {
        let (url, seen) = scripted_http(vec![(500, ""), (503, ""), (200, "")]).await;
        let alerts = Alerts::start_with(
            vec![
                webhook_channel(&url, None),
                webhook_channel("http://127.0.0.1:1/x", Some(vec!["fenced".into()])),
            ],
            "ctl",
            "grp",
            SHORT,
        );
        let incident = alerts.raise("all_down", "every region is down", 1, 0);
        assert!(!alerts.settled(&incident, false), "queued, not delivered yet");
        assert!(alerts.settled(&incident, true), "no resolve of it was sent");
        let finished = alerts.finished().await;
        assert_eq!(finished, vec![(incident.clone(), false)]);
        assert!(alerts.settled(&incident, false));
        assert_eq!(seen.lock().expect("seen").len(), 3, "delivered at the third attempt");
        assert!(!alerts.open_incidents()[0].delivered);
        assert_eq!(alerts.mark_delivered(&incident).as_deref(), Some("all_down"));
        assert_eq!(alerts.mark_delivered(&incident), None, "recorded once");
        assert!(alerts.open_incidents()[0].delivered);
        // A resolve no channel takes (the filtered one only takes `fenced`, the other is
        // gone): finished at once. Resent after a restart, it is tracked alike.
        let nowhere = Alerts::start(
            vec![webhook_channel("http://127.0.0.1:1/x", Some(vec!["fenced".into()]))],
            "ctl",
            "grp",
        );
        nowhere.resend_resolve("all_down", "grp/all_down", "ended", 2, 0);
        assert_eq!(nowhere.finished().await, vec![("grp/all_down".to_string(), true)]);
        // A trigger and a resolve no channel takes are settled where they are sent: the
        // incident reads delivered, no resolve waits, and nothing is reported to record.
        let first = nowhere.raise("all_down", "every region is down", 3, 0);
        assert!(nowhere.open_incidents()[0].delivered, "nothing to deliver");
        assert_eq!(
            nowhere.resolve("all_down", "ended", 3, 1).as_deref(),
            Some(first.as_str())
        );
        assert!(nowhere.resolving().is_empty(), "no resolve waits for a channel");
        assert!(nowhere.tracker.state().finished.is_empty(), "nothing to record");
    }

    struct Collecting {
        folder: PathBuf,
        regions: std::collections::BTreeSet<String>,
        errors: Vec<String>,
    }

    impl Checker for Collecting {
        fn error(&mut self, _span: std::ops::Range<usize>, message: String, _fix: String) {
            self.errors.push(message);
        }
        fn warn(&mut self, _span: std::ops::Range<usize>, _message: String, _fix: String) {}
        fn folder(&self) -> &std::path::Path {
            &self.folder
        }
        fn regions(&self) -> &std::collections::BTreeSet<String> {
            &self.regions
        }
    }

    #[test]
    fn a_secret_url_is_not_shown_in_configuration_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A webhook URL without its scheme; Slack's over plain http: both refused.
        std::fs::write(
            dir.path().join("hook.url"),
            "hooks.example.com/api/webhooks/123/TOKENPART\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("slack.url"),
            "http://hooks.slack.com/services/T0/B0/SLACKSECRET\n",
        )
        .expect("write");
        for (kind, file, secret) in [
            ("webhook", "hook.url", "TOKENPART"),
            ("slack", "slack.url", "SLACKSECRET"),
        ] {
            let text = format!("kind = \"{kind}\"\nurl_secret = {{ file = \"{file}\" }}\n");
            let section: AlertSection = toml::from_str(&text).expect("section");
            let mut checker = Collecting {
                folder: dir.path().to_path_buf(),
                regions: Default::default(),
                errors: Vec::new(),
            };
            assert!(section.check(0, &mut checker).is_none(), "{kind}");
            assert!(!checker.errors.is_empty(), "{kind}");
            for error in &checker.errors {
                assert!(!error.contains(secret), "{error}");
            }
        }
        // Written in the config file, the URL is no secret and is shown whole.
        let section: AlertSection =
            toml::from_str("kind = \"slack\"\nurl = \"http://hooks.example.com/services/T0/B0/OPEN\"\n")
                .expect("section");
        let mut checker = Collecting {
            folder: dir.path().to_path_buf(),
            regions: Default::default(),
            errors: Vec::new(),
        };
        assert!(section.check(0, &mut checker).is_none());
        assert!(
            checker.errors.iter().any(|e| e.contains("OPEN")),
            "{:?}",
            checker.errors
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
