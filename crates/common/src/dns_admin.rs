//! The DNS admin API's wire types: what the controller's runbook pushes to `switchyard dns` and
//! what the DNS server answers. One definition for both sides (the controller never depends on
//! the `dns` crate, so they live here).
//!
//! `PUT /v1/health` takes a [`HealthPush`] and answers [`HealthApplied`]; `PUT /v1/txt` takes a
//! [`TxtPush`] and answers [`TxtApplied`]; `GET /v1/health` answers [`View`]; a refusal is an
//! [`AdminError`] (409 `stale_generation`, 412 `generation_moved` and 400
//! `generation_too_far_ahead` carry the applied generation). A push with `if_generation` is
//! applied only while the view is still at that generation (a compare-and-set: the controller
//! read the view, found the state missing, and must not push over a push that landed since).
//! Bodies are JSON; fields are declared in alphabetical order so the bytes match
//! what the hand-built JSON of earlier versions sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The path of the health view: `PUT` pushes a [`HealthPush`], `GET` reads the [`View`].
pub const HEALTH_PATH: &str = "/v1/health";
/// The path a [`TxtPush`] goes to.
pub const TXT_PATH: &str = "/v1/txt";

/// What the controller says about one target (a region, a server, an endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// `PUT /v1/health`: the health of every target, under the controller's generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthPush {
    pub generation: u64,
    /// Apply only if the view's generation is still this one (else 412 `generation_moved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
    pub targets: BTreeMap<String, Health>,
}

/// `PUT /v1/txt`: one dynamic TXT record (the active region's name), under a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxtPush {
    pub generation: u64,
    /// Apply only if the view's generation is still this one (else 412 `generation_moved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
    pub name: String,
    /// `null` removes the record.
    pub value: Option<String>,
}

/// The answer to an applied [`HealthPush`]: the view's generation and targets after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthApplied {
    pub generation: u64,
    /// Whether the view was written to the state directory; `null` without one.
    pub persisted: Option<bool>,
    pub targets: BTreeMap<String, Health>,
}

/// The answer to an applied [`TxtPush`]: the record's name as stored (lower case, fully
/// qualified) and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxtApplied {
    pub generation: u64,
    pub name: String,
    /// Whether the view was written to the state directory; `null` without one.
    pub persisted: Option<bool>,
    pub value: Option<String>,
}

/// `GET /v1/health`: the whole view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub generation: u64,
    /// Health per target; a target never reported is healthy.
    pub targets: BTreeMap<String, Health>,
    /// Dynamic TXT records by lower-case fully qualified name (with the trailing dot).
    pub txt: BTreeMap<String, String>,
}

/// A refused request. `error` is a stable code (`unauthorized`, `invalid`, `stale_generation`,
/// `generation_moved`, `generation_too_far_ahead`), `message` says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    pub error: String,
    /// The applied generation, on `stale_generation`, `generation_moved` and
    /// `generation_too_far_ahead`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_the_documented_json() {
        let push = HealthPush {
            generation: 7,
            if_generation: None,
            targets: BTreeMap::from([("us-east-1".to_string(), Health::Unhealthy)]),
        };
        assert_eq!(
            serde_json::to_string(&push).expect("serializable"),
            r#"{"generation":7,"targets":{"us-east-1":"unhealthy"}}"#
        );
        let conditional = HealthPush {
            if_generation: Some(6),
            ..push
        };
        assert_eq!(
            serde_json::to_string(&conditional).expect("serializable"),
            r#"{"generation":7,"if_generation":6,"targets":{"us-east-1":"unhealthy"}}"#
        );
        let txt = TxtPush {
            generation: 7,
            if_generation: None,
            name: "_active-region.shop.example.".into(),
            value: Some("eu-west-1".into()),
        };
        assert_eq!(
            serde_json::to_string(&txt).expect("serializable"),
            r#"{"generation":7,"name":"_active-region.shop.example.","value":"eu-west-1"}"#
        );
        let refused = AdminError {
            error: "invalid".into(),
            generation: None,
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_string(&refused).expect("serializable"),
            r#"{"error":"invalid","message":"m"}"#
        );
        assert!(serde_json::from_str::<HealthPush>(r#"{"generation":1,"targets":{},"x":1}"#).is_err());
        assert!(
            serde_json::from_str::<TxtPush>(r#"{"generation":1,"name":"a."}"#)
                .expect("value may be absent")
                .value
                .is_none()
        );
    }
}
