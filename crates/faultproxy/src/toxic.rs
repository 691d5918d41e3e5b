//! Toxics: what a proxy does to the bytes of one direction, in Toxiproxy's vocabulary.
//!
//! A toxic arrives as `{"name", "type", "stream", "toxicity", "attributes": {...}}` (JSON on the
//! control API, the same keys in TOML) and is validated once, here, into a [`ToxicKind`] with
//! units in the field names. Everything downstream works on validated values only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest delay any toxic may add: an hour, far beyond any drill.
pub const DELAY_MS_MAX: u64 = 3_600_000;
/// Slicer delays are in microseconds, as in Toxiproxy.
pub const SLICER_DELAY_US_MAX: u64 = 10_000_000;
/// Largest slice: beyond this slicing changes nothing the read buffer would not.
pub const SLICE_BYTES_MAX: u64 = 1 << 20;
/// Fastest bandwidth limit, in KB/s (1 KB = 1000 bytes, as Toxiproxy counts).
pub const RATE_KBPS_MAX: u64 = 10_000_000;
/// Longest toxic or proxy name.
pub const NAME_BYTES_MAX: usize = 128;

/// Direction of the bytes a toxic applies to, as Toxiproxy names them: `upstream` is client →
/// server, `downstream` is server → client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// A validated toxic behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToxicKind {
    /// Delay every chunk by `latency_ms` ± a uniform draw in `[-jitter_ms, jitter_ms]`.
    Latency { latency_ms: u64, jitter_ms: u64 },
    /// Let at most `rate_kbps` × 1000 bytes through per second.
    Bandwidth { rate_kbps: u64 },
    /// Stop forwarding (a blackhole: the peer sees silence, not a close); if `timeout_ms` > 0,
    /// close the connection that long after the toxic took effect.
    Timeout { timeout_ms: u64 },
    /// Reset the connection (RST, via `SO_LINGER` 0) `timeout_ms` after the toxic took effect.
    ResetPeer { timeout_ms: u64 },
    /// Cut data into slices of `average_size` ± `size_variation` bytes, `delay_us` apart.
    Slicer {
        average_size: u64,
        size_variation: u64,
        delay_us: u64,
    },
    /// Close the connection once `bytes` bytes went through in this direction.
    LimitData { bytes: u64 },
    /// Delay the close (end of stream) by `delay_ms`.
    SlowClose { delay_ms: u64 },
}

/// The toxic types this proxy knows, as the `type` field spells them.
pub const TOXIC_TYPES: &[&str] = &[
    "latency",
    "bandwidth",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
    "slow_close",
];

impl ToxicKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
            ToxicKind::SlowClose { .. } => "slow_close",
        }
    }

    /// The attributes in Toxiproxy's names and units.
    pub fn attributes(&self) -> BTreeMap<String, u64> {
        let pairs: Vec<(&str, u64)> = match *self {
            ToxicKind::Latency { latency_ms, jitter_ms } => vec![("latency", latency_ms), ("jitter", jitter_ms)],
            ToxicKind::Bandwidth { rate_kbps } => vec![("rate", rate_kbps)],
            ToxicKind::Timeout { timeout_ms } | ToxicKind::ResetPeer { timeout_ms } => vec![("timeout", timeout_ms)],
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay_us,
            } => vec![
                ("average_size", average_size),
                ("size_variation", size_variation),
                ("delay", delay_us),
            ],
            ToxicKind::LimitData { bytes } => vec![("bytes", bytes)],
            ToxicKind::SlowClose { delay_ms } => vec![("delay", delay_ms)],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Builds a toxic from its type and attributes; attributes not given are 0, as in Toxiproxy.
    pub fn from_parts(type_name: &str, attributes: &BTreeMap<String, f64>) -> Result<ToxicKind, ToxicError> {
        let known: &[&str] = match type_name {
            "latency" => &["latency", "jitter"],
            "bandwidth" => &["rate"],
            "timeout" | "reset_peer" => &["timeout"],
            "slicer" => &["average_size", "size_variation", "delay"],
            "limit_data" => &["bytes"],
            "slow_close" => &["delay"],
            other => {
                return Err(ToxicError::UnknownType {
                    type_name: other.to_string(),
                });
            }
        };
        if let Some(name) = attributes.keys().find(|name| !known.contains(&name.as_str())) {
            return Err(ToxicError::UnknownAttribute {
                type_name: type_name.to_string(),
                attribute: name.clone(),
                known: known.join(", "),
            });
        }
        let get = |name: &'static str, max: u64| -> Result<u64, ToxicError> {
            let Some(&value) = attributes.get(name) else {
                return Ok(0);
            };
            if !value.is_finite() || value < 0.0 || value.fract() != 0.0 || value > max as f64 {
                return Err(ToxicError::BadAttribute {
                    type_name: type_name.to_string(),
                    attribute: name,
                    value,
                    max,
                });
            }
            Ok(value as u64)
        };
        let kind = match type_name {
            "latency" => ToxicKind::Latency {
                latency_ms: get("latency", DELAY_MS_MAX)?,
                jitter_ms: get("jitter", DELAY_MS_MAX)?,
            },
            "bandwidth" => {
                let rate_kbps = get("rate", RATE_KBPS_MAX)?;
                if rate_kbps == 0 {
                    return Err(ToxicError::Invalid(
                        "bandwidth needs a rate above 0 KB/s; to stop all data use a timeout toxic".to_string(),
                    ));
                }
                ToxicKind::Bandwidth { rate_kbps }
            }
            "timeout" => ToxicKind::Timeout {
                timeout_ms: get("timeout", DELAY_MS_MAX)?,
            },
            "reset_peer" => ToxicKind::ResetPeer {
                timeout_ms: get("timeout", DELAY_MS_MAX)?,
            },
            "slicer" => {
                let average_size = get("average_size", SLICE_BYTES_MAX)?;
                let size_variation = get("size_variation", SLICE_BYTES_MAX)?;
                if average_size == 0 {
                    return Err(ToxicError::Invalid(
                        "slicer needs an average_size of at least 1 byte".to_string(),
                    ));
                }
                if size_variation >= average_size {
                    return Err(ToxicError::Invalid(format!(
                        "slicer size_variation {size_variation} must be smaller than average_size {average_size}"
                    )));
                }
                ToxicKind::Slicer {
                    average_size,
                    size_variation,
                    delay_us: get("delay", SLICER_DELAY_US_MAX)?,
                }
            }
            "limit_data" => ToxicKind::LimitData {
                bytes: get("bytes", u64::MAX >> 12)?,
            },
            _ => ToxicKind::SlowClose {
                delay_ms: get("delay", DELAY_MS_MAX)?,
            },
        };
        Ok(kind)
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ToxicError {
    #[error(
        "unknown toxic type '{type_name}'; use one of: latency, bandwidth, timeout, reset_peer, slicer, limit_data, slow_close"
    )]
    UnknownType { type_name: String },
    #[error("toxic type '{type_name}' has no attribute '{attribute}'; it takes: {known}")]
    UnknownAttribute {
        type_name: String,
        attribute: String,
        known: String,
    },
    #[error("{type_name} attribute '{attribute}' is {value}; it must be a whole number from 0 to {max}")]
    BadAttribute {
        type_name: String,
        attribute: &'static str,
        value: f64,
        max: u64,
    },
    #[error("toxicity {0} is outside 0.0..=1.0 (the probability that a connection gets the toxic)")]
    Toxicity(f64),
    #[error("{0}")]
    Invalid(String),
}

/// A named toxic on one stream of a proxy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "ToxicWire")]
pub struct Toxic {
    pub name: String,
    pub stream: Stream,
    /// Probability that a connection is affected, drawn once per connection.
    pub toxicity: f64,
    pub kind: ToxicKind,
}

/// The wire shape of a toxic, shared by JSON and TOML.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToxicWire {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub stream: Option<Stream>,
    #[serde(default)]
    pub toxicity: Option<f64>,
    #[serde(default)]
    pub attributes: BTreeMap<String, f64>,
}

impl TryFrom<ToxicWire> for Toxic {
    type Error = ToxicError;

    fn try_from(wire: ToxicWire) -> Result<Toxic, ToxicError> {
        let kind = ToxicKind::from_parts(&wire.type_name, &wire.attributes)?;
        let stream = wire.stream.unwrap_or(Stream::Downstream);
        let toxicity = check_toxicity(wire.toxicity.unwrap_or(1.0))?;
        let name = match wire.name {
            Some(name) if !name.is_empty() => {
                check_name(&name).map_err(ToxicError::Invalid)?;
                name
            }
            _ => format!("{}_{}", wire.type_name, stream.as_str()),
        };
        Ok(Toxic {
            name,
            stream,
            toxicity,
            kind,
        })
    }
}

impl Serialize for Toxic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            name: &'a str,
            #[serde(rename = "type")]
            type_name: &'static str,
            stream: Stream,
            toxicity: f64,
            attributes: BTreeMap<String, u64>,
        }
        Out {
            name: &self.name,
            type_name: self.kind.type_name(),
            stream: self.stream,
            toxicity: self.toxicity,
            attributes: self.kind.attributes(),
        }
        .serialize(serializer)
    }
}

/// A change to an existing toxic: new attributes merge into the old ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToxicUpdate {
    #[serde(default)]
    pub toxicity: Option<f64>,
    #[serde(default)]
    pub attributes: BTreeMap<String, f64>,
    /// Accepted for Toxiproxy clients that send the whole toxic back; must match if given.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub type_name: Option<String>,
    #[serde(default)]
    pub stream: Option<Stream>,
}

impl Toxic {
    pub fn updated(&self, update: &ToxicUpdate) -> Result<Toxic, ToxicError> {
        if let Some(type_name) = &update.type_name
            && type_name != self.kind.type_name()
        {
            return Err(ToxicError::Invalid(format!(
                "toxic '{}' is a {}; its type cannot change to {type_name} (delete it and add a new one)",
                self.name,
                self.kind.type_name()
            )));
        }
        if let Some(stream) = update.stream
            && stream != self.stream
        {
            return Err(ToxicError::Invalid(format!(
                "toxic '{}' is on the {} stream; its stream cannot change (delete it and add a new one)",
                self.name,
                self.stream.as_str()
            )));
        }
        let mut attributes: BTreeMap<String, f64> =
            self.kind.attributes().into_iter().map(|(k, v)| (k, v as f64)).collect();
        attributes.extend(update.attributes.iter().map(|(k, v)| (k.clone(), *v)));
        Ok(Toxic {
            name: self.name.clone(),
            stream: self.stream,
            toxicity: check_toxicity(update.toxicity.unwrap_or(self.toxicity))?,
            kind: ToxicKind::from_parts(self.kind.type_name(), &attributes)?,
        })
    }
}

fn check_toxicity(toxicity: f64) -> Result<f64, ToxicError> {
    if (0.0..=1.0).contains(&toxicity) {
        Ok(toxicity)
    } else {
        Err(ToxicError::Toxicity(toxicity))
    }
}

/// Names of proxies and toxics appear in URLs: keep them to a safe alphabet.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("name '{name}' must have 1 to {NAME_BYTES_MAX} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("name '{name}' may only hold letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Toxic, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_toxiproxy() {
        let toxic = parse(json!({"type": "latency", "attributes": {"latency": 100}})).expect("valid");
        assert_eq!(toxic.name, "latency_downstream");
        assert_eq!(toxic.stream, Stream::Downstream);
        assert_eq!(toxic.toxicity, 1.0);
        assert_eq!(
            toxic.kind,
            ToxicKind::Latency {
                latency_ms: 100,
                jitter_ms: 0
            }
        );
        let back = serde_json::to_value(&toxic).expect("serialize");
        assert_eq!(
            back,
            json!({"name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1.0,
                   "attributes": {"latency": 100, "jitter": 0}})
        );
    }

    #[test]
    fn bad_toxics_name_the_problem() {
        let error = parse(json!({"type": "latenccy"})).expect_err("unknown type");
        assert!(error.contains("latenccy") && error.contains("reset_peer"), "{error}");
        let error = parse(json!({"type": "latency", "attributes": {"delay": 1}})).expect_err("bad attribute");
        assert!(
            error.contains("'delay'") && error.contains("latency, jitter"),
            "{error}"
        );
        let error = parse(json!({"type": "latency", "attributes": {"latency": -5}})).expect_err("negative");
        assert!(error.contains("-5"), "{error}");
        let error = parse(json!({"type": "bandwidth", "attributes": {"rate": 0}})).expect_err("zero rate");
        assert!(error.contains("rate"), "{error}");
        let error = parse(json!({"type": "slicer", "attributes": {"average_size": 4, "size_variation": 4}}))
            .expect_err("variation too large");
        assert!(error.contains("size_variation"), "{error}");
        let error = parse(json!({"type": "timeout", "toxicity": 1.5})).expect_err("toxicity");
        assert!(error.contains("1.5"), "{error}");
        let error = parse(json!({"type": "timeout", "name": "a/b"})).expect_err("name");
        assert!(error.contains("a/b"), "{error}");
    }

    #[test]
    fn update_merges_attributes() {
        let toxic =
            parse(json!({"type": "latency", "name": "slow", "attributes": {"latency": 100, "jitter": 5}})).expect("ok");
        let update: ToxicUpdate = serde_json::from_value(json!({"attributes": {"jitter": 20}})).expect("update");
        let updated = toxic.updated(&update).expect("valid update");
        assert_eq!(
            updated.kind,
            ToxicKind::Latency {
                latency_ms: 100,
                jitter_ms: 20
            }
        );
        let update: ToxicUpdate = serde_json::from_value(json!({"type": "timeout"})).expect("update");
        assert!(toxic.updated(&update).is_err());
    }
}
