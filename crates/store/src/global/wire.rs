//! The wire between regions: request and answer types, the HMAC signature over region, path,
//! signing time and body, the signed POST (`post`, here so that shipping, marks and repair
//! share it without a module cycle) and the receiving side's authentication.

use super::*;

#[derive(Serialize, Deserialize)]
pub(super) struct MarkRequest {
    pub(super) clock: u64,
    pub(super) received: u64,
    pub(super) head: u64,
    /// The sender's database identity (`Engine::store_id`, 16 hex digits); absent from builds
    /// before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) store: Option<String>,
}

/// The answer to a mark. Empty from builds before `replicas_missing_here`, and whenever the
/// receiver lacks nothing here.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct MarkAnswer {
    /// The sender's database is new since the receiver last saw the old one, and these global
    /// tables listing the sender were not created again there since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) replicas_missing_here: Option<MissingHere>,
    /// The answerer's signature of `replicas_missing_here` (its JSON: `null` when nothing is
    /// missing, so "nothing missing" is signed too), made as a request's
    /// (`sign`) from the answerer to the asker, over [`MARK_ANSWER_PATH`] and the *mark's*
    /// signing time: only the key's holders can make it, and it is valid for that one mark (an
    /// answer captured and replayed to a later mark does not verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) signature: Option<String>,
}

/// Largest answer read from a peer, in bytes: above the largest a peer makes (a digest answer
/// listing `REPAIR_HASHES_PER_RESPONSE_MAX` keys of the longest kind, about 70 MiB), so a
/// peer URL that leads elsewhere cannot make this store buffer without bound.
pub const ANSWER_BYTES_MAX: usize = 128 * 1024 * 1024;

/// What a mark answer's signature is made over in place of a request path (never a path a
/// request is sent to, so a signed answer is no signed request).
pub(super) const MARK_ANSWER_PATH: &str = "answer:/replication/v1/mark";

#[derive(Serialize, Deserialize)]
pub(super) struct BatchRequest {
    pub(super) batch: u64,
    pub(super) from_seq: u64,
    pub(super) to_seq: u64,
    /// Encoded changes (see `replication_log`), base64.
    pub(super) changes: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct BatchResponse {
    pub(super) through: Option<u64>,
    pub(super) expected_from: Option<u64>,
    pub(super) applied: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RepairRequest {
    pub(super) records: Vec<String>,
    /// Set on the last request of a repair: the source's log head when the repair began.
    pub(super) complete_through: Option<u64>,
    /// Set on every request of a repair that backfills replicas the receiver joined: the
    /// receiver's join barrier it backfills (the source's pending backfill setting, read
    /// before the tables; the source had received every write up to it). Records at or below
    /// a replica's join barrier apply for an absent key only from such a repair, and the last
    /// request ends the waits for the replicas joined at or below it.
    #[serde(default)]
    pub(super) backfill_barrier: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct DigestRequest {
    pub(super) table: String,
    /// `(depth, index)` of each range (see `replication::digest::Range`).
    pub(super) ranges: Vec<(u8, u32)>,
    /// Also answer each range's per-record hashes (`DigestResponse::hashes`), so the repairing
    /// side pushes only the records that differ. A peer of an earlier version ignores it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) hashes: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct DigestResponse {
    /// `(count, hash as hex)` per requested range, in order.
    pub(super) digests: Vec<(u64, String)>,
    /// With `DigestRequest::hashes`: per range, `(stored key as base64, record hash as hex)` of
    /// each record, or `null` for a range too big to list (`REPAIR_HASHES_PER_RANGE_MAX`, or the
    /// answer's `REPAIR_HASHES_PER_RESPONSE_MAX`), which is pushed whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hashes: Option<Vec<Option<Vec<(String, String)>>>>,
}

#[derive(Serialize, Deserialize)]
pub struct TableRequest {
    pub table: TableMeta,
    /// Delete this region's replica instead of creating or updating it.
    pub delete: bool,
    /// The sender's replica-definition sequence: strictly increasing per sender, durable on
    /// both sides, so a replayed request is refused after any number of restarts.
    #[serde(default)]
    pub sequence: u64,
    /// The sender adds the receiver as a replica and will backfill it. A receiver that holds
    /// the replica already, still awaiting its backfill (an `UpdateTable` retried after a
    /// failure), hands the wait over to the sender and answers with its join barrier.
    #[serde(default)]
    pub joining: bool,
}

/// A peer's answer to a [`TableRequest`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DefinitionAnswer {
    /// The receiver created its replica just now, with this join barrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_below: Option<u64>,
    /// The TTL the receiver's replica holds after the request (`Some(None)`: none). Absent
    /// (`None`) from a build before TTL followed global tables, which keeps its own.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Option<crate::catalog::TtlSpec>>,
    /// The version of every versioned global index change the receiver's replica holds after
    /// the request (`TableMeta::index_versions`). Absent (`None`) from a build before indexes
    /// followed global tables, which keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_versions: Option<BTreeMap<String, crate::catalog::SettingVersion>>,
    /// The version of the capacity (billing mode and write capacity) the receiver's replica
    /// holds after the request (`TableMeta::capacity_version`; `Some(None)`: unversioned).
    /// Absent (`None`) from a build before capacity followed global tables, which keeps its own.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Option<crate::catalog::SettingVersion>>,
}

/// A field that is present deserialises as `Some`, also when it is `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// The signature a peer sends with a replication request (`SIGNATURE_HEADER`): HMAC-SHA256,
/// with the shared replication key, over the sending region, the region it is for, the request
/// path, the signing time (`DATE_HEADER`, Unix ms) and the body.
pub fn sign(key: &[u8], from: &str, to: &str, path: &str, date_ms: u64, body: &[u8]) -> String {
    hex::encode(mac(key, from, to, path, date_ms, body).finalize().into_bytes())
}

pub(super) fn mac(key: &[u8], from: &str, to: &str, path: &str, date_ms: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("switchyard-replication-v3\n{from}\n{to}\n{path}\n{date_ms}\n").as_bytes());
    mac.update(body);
    mac
}

pub(super) fn verify(
    key: &[u8],
    (from, to): (&str, &str),
    path: &str,
    date_ms: u64,
    body: &[u8],
    signature: &str,
) -> bool {
    let Ok(signature) = hex::decode(signature) else {
        return false;
    };
    mac(key, from, to, path, date_ms, body).verify_slice(&signature).is_ok()
}

/// What an answer's `ANSWER_SIGNATURE_HEADER` is made over in place of a request path (never a
/// path a request is sent to, nor an in-body answer signature's).
pub(super) fn answer_body_path(path: &str) -> String {
    format!("answer-body:{path}")
}

/// What an answer's `ANSWER_SIGNATURE_HEADER` covers: the SHA-256 of the request's body (so an
/// answer cannot be swapped between two requests signed in the same millisecond), then the
/// answer's bytes.
pub(super) fn answer_body_payload(request_sha256: &[u8], answer: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(request_sha256.len() + answer.len());
    payload.extend_from_slice(request_sha256);
    payload.extend_from_slice(answer);
    payload
}

pub(super) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::AccessDenied, message)
}

impl Replication {
    pub(super) async fn post(&self, peer: &Peer, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        self.post_dated(peer, path, body, self.engine.now_unix_ms()).await
    }

    /// [`Replication::post`] signed at `date_ms`.
    pub(super) async fn post_dated(
        &self,
        peer: &Peer,
        path: &str,
        body: Vec<u8>,
        date_ms: u64,
    ) -> Result<(u16, Bytes), String> {
        let signature = sign(&self.config.key, &self.region, &peer.region, path, date_ms, &body);
        let request_sha256 = <Sha256 as sha2::Digest>::digest(&body);
        let request = hyper::Request::post(format!("{}{path}", peer.url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .header(REGION_HEADER, &self.region)
            .header(TO_REGION_HEADER, &peer.region)
            .header(DATE_HEADER, date_ms.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request to {}: {e}", peer.url))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{}: {}", peer.url, common::error::chain(&e)))?;
            let status = response.status().as_u16();
            let answer_signature = response
                .headers()
                .get(ANSWER_SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| {
                    format!(
                        "{}: reading the answer (at most {ANSWER_BYTES_MAX} bytes): {e}",
                        peer.url
                    )
                })?
                .to_bytes();
            // A 200 answer is taken only as the peer signed it for this request.
            let signed = |signature: &str| {
                verify(
                    &self.config.key,
                    (&peer.region, &self.region),
                    &answer_body_path(path),
                    date_ms,
                    &answer_body_payload(&request_sha256, &body),
                    signature,
                )
            };
            if status == 200 && !answer_signature.as_deref().is_some_and(signed) {
                let refused = self
                    .status
                    .get(&peer.region)
                    .map_or(1, |s| s.answers_refused.fetch_add(1, Ordering::Relaxed) + 1);
                // The first, then every hundredth: marks alone ask every second.
                if refused == 1 || refused.is_multiple_of(100) {
                    tracing::warn!(peer = %peer.region, %path, refused, "an answer from a peer has no valid signature for its request; not taken (forged or changed on the way, the replication keys differ, or the peer runs an earlier build)");
                }
                return Err(format!(
                    "{}: the answer to {path} is not signed by {} with the replication key: forged or changed on the way, or that store runs an earlier build that does not sign its answers (upgrade it)",
                    peer.url, peer.region
                ));
            }
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| format!("{}: no answer within {REQUEST_TIMEOUT_MS} ms", peer.url))?
    }

    /// POSTs a replication request and decodes its 200 answer; anything else is an error that
    /// names the peer and the path.
    pub(super) async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        peer: &Peer,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, String> {
        let (status, body) = self.post(peer, path, body).await?;
        if status != 200 {
            return Err(format!(
                "{} answered HTTP {status} to {path}: {}",
                peer.url,
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{}: bad answer to {path}: {e}", peer.url))
    }

    /// The signature of an answer with `payload` to the authenticated request of `headers` from
    /// `asker`: made as a request's from this region to the asker, over `answer_path` (never a
    /// path a request is sent to) and the request's signing time, so it is valid for that one
    /// request only.
    pub(super) fn sign_answer(
        &self,
        headers: &axum::http::HeaderMap,
        asker: &str,
        answer_path: &str,
        payload: &[u8],
    ) -> String {
        // The request authenticated, so its date header parses.
        let date_ms = headers
            .get(DATE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_default();
        sign(&self.config.key, &self.region, asker, answer_path, date_ms, payload)
    }

    /// The `ANSWER_SIGNATURE_HEADER` of `answer` to the authenticated request to `path` with
    /// `headers` and `request` body; `None` when the request names no region (it did not
    /// authenticate, and gets no 200 answer).
    pub fn sign_answer_body(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
        request: &[u8],
        answer: &[u8],
    ) -> Option<String> {
        let asker = headers.get(REGION_HEADER)?.to_str().ok()?;
        let request_sha256 = <Sha256 as sha2::Digest>::digest(request);
        Some(self.sign_answer(
            headers,
            asker,
            &answer_body_path(path),
            &answer_body_payload(&request_sha256, answer),
        ))
    }

    pub(super) fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        path: &str,
        body: &[u8],
    ) -> Result<String, ApiError> {
        self.authenticate_fresh(headers, path, body).map(|(region, _)| region)
    }

    /// [`Replication::authenticate`], and whether the request was signed later than every
    /// earlier one from its region (false for a replay or a reordering within the signing
    /// window, which the HMAC alone does not tell from the original).
    pub(super) fn authenticate_fresh(
        &self,
        headers: &axum::http::HeaderMap,
        path: &str,
        body: &[u8],
    ) -> Result<(String, bool), ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let region = header(REGION_HEADER).to_string();
        let signature = header(SIGNATURE_HEADER);
        if self.peer(&region).is_none() {
            tracing::warn!(%region, "replication request from a region that is not a peer refused");
            return Err(unauthorized(format!(
                "region '{region}' is not a peer of {}",
                self.region
            )));
        }
        let Ok(date_ms) = header(DATE_HEADER).parse::<u64>() else {
            tracing::warn!(%region, "replication request without a signing date refused: is the peer an older build?");
            return Err(unauthorized(format!(
                "replication request without {DATE_HEADER}: the peer must run a build that signs its requests with a date"
            )));
        };
        let to = header(TO_REGION_HEADER);
        if to.is_empty() {
            tracing::warn!(%region, "replication request without the region it is for refused: is the peer an older build?");
            return Err(unauthorized(format!(
                "replication request without {TO_REGION_HEADER}: the peer runs an older build, which does not sign the region a request is for (such a request could be replayed to another region); upgrade it"
            )));
        }
        if to != self.region {
            tracing::warn!(%region, to, "replication request for another region refused (replayed here, or a peer URL points at the wrong region)");
            return Err(unauthorized(format!(
                "replication request for region '{to}', and this store is {}: a request for another region replayed here, or {region}'s peer URL for {to} points at this store",
                self.region
            )));
        }
        if !verify(&self.config.key, (&region, to), path, date_ms, body, signature) {
            tracing::warn!(%region, "replication request with a bad signature refused: check that both stores use the same replication key");
            return Err(unauthorized(
                "bad replication signature: the stores' replication keys differ",
            ));
        }
        // The signing time is authentic now: a sample of the peer's clock (a replay carries an
        // older time than the peer's last request and is no sample), also when it is refused.
        let now = self.engine.now_unix_ms();
        let fresh = {
            // Set under the lock, so concurrent requests store their holds in order.
            let mut clocks = self.clocks.lock().expect("clock lock is never poisoned");
            let fresh = clocks.on_request(&region, date_ms, now).is_some();
            let hold_ms = clocks.furthest_behind_ms(now, crate::engine::SWEEP_HOLD_MEMORY_MS);
            self.engine.hold_sweeps_back(hold_ms, now);
            fresh
        };
        let skew = now.abs_diff(date_ms);
        if skew > REQUEST_SKEW_MS_MAX {
            tracing::warn!(%region, skew_ms = skew, "replication request signed too far from this store's clock refused (replayed, or a clock is wrong)");
            return Err(unauthorized(format!(
                "replication request signed {skew} ms away from this store's clock (at most {REQUEST_SKEW_MS_MAX}): an old request replayed, or a region's clock is wrong; check NTP in both regions"
            )));
        }
        Ok((region, fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TtlSpec;

    #[test]
    fn a_definition_answer_tells_a_previous_build_from_one_without_ttl() {
        // A previous build answers `{}` or only the join barrier: it keeps its replica's TTL.
        let old: DefinitionAnswer = serde_json::from_str(r#"{"joined_below":7}"#).expect("valid");
        assert_eq!((old.joined_below, old.ttl), (Some(7), None));
        let old: DefinitionAnswer = serde_json::from_str("{}").expect("valid");
        assert!(old.ttl.is_none());
        // This build always says what its replica holds, also when that is nothing.
        let none: DefinitionAnswer = serde_json::from_str(r#"{"ttl":null}"#).expect("valid");
        assert_eq!(none.ttl, Some(None));
        let answer = DefinitionAnswer {
            joined_below: None,
            ttl: Some(Some(TtlSpec {
                attribute: "exp".into(),
                enabled: true,
                version: Some((42, "eu-west-1".into())),
            })),
            index_versions: None,
            capacity: None,
        };
        let text = serde_json::to_string(&answer).expect("valid");
        assert_eq!(
            text,
            r#"{"ttl":{"attribute":"exp","enabled":true,"version":[42,"eu-west-1"]}}"#
        );
        let back: DefinitionAnswer = serde_json::from_str(&text).expect("valid");
        assert_eq!(back.ttl, answer.ttl);
        assert_eq!(
            serde_json::to_string(&DefinitionAnswer {
                joined_below: None,
                ttl: Some(None),
                index_versions: None,
                capacity: None,
            })
            .expect("valid"),
            r#"{"ttl":null}"#
        );
    }

    #[test]
    fn a_definition_answer_tells_a_build_keeping_its_own_indexes_from_one_without_any() {
        // The TTL build before this one, and those before it, answer no index versions.
        let old: DefinitionAnswer = serde_json::from_str(r#"{"ttl":null}"#).expect("valid");
        assert!(old.index_versions.is_none());
        assert_eq!(Followed::Index("by_day").held_by(&old), None);
        assert_eq!(Followed::Ttl.held_by(&old), Some(None));
        // This build always answers them, also when there are none.
        let none = DefinitionAnswer {
            joined_below: None,
            ttl: Some(None),
            index_versions: Some(BTreeMap::new()),
            capacity: None,
        };
        let text = serde_json::to_string(&none).expect("valid");
        assert_eq!(text, r#"{"ttl":null,"index_versions":{}}"#);
        let back: DefinitionAnswer = serde_json::from_str(&text).expect("valid");
        assert_eq!(Followed::Index("by_day").held_by(&back), Some(None));
        let held: DefinitionAnswer =
            serde_json::from_str(r#"{"ttl":null,"index_versions":{"by_day":[42,"eu-west-1"]}}"#).expect("valid");
        assert_eq!(
            Followed::Index("by_day").held_by(&held),
            Some(Some(replication::Version::new(replication::Hlc(42), "eu-west-1")))
        );
        assert_eq!(Followed::Index("other").held_by(&held), Some(None));
    }

    #[test]
    fn a_definition_answer_tells_a_build_keeping_its_own_capacity_from_one_without_a_version() {
        // The builds before capacity followed global tables answer no capacity: they keep
        // their own, and the change is not confirmed by them.
        let old: DefinitionAnswer = serde_json::from_str(r#"{"ttl":null,"index_versions":{}}"#).expect("valid");
        assert_eq!(Followed::Capacity.held_by(&old), None);
        // This build always answers it, also when its capacity was never versioned.
        let none = DefinitionAnswer {
            capacity: Some(None),
            ..DefinitionAnswer::default()
        };
        let text = serde_json::to_string(&none).expect("valid");
        assert_eq!(text, r#"{"capacity":null}"#);
        let back: DefinitionAnswer = serde_json::from_str(&text).expect("valid");
        assert_eq!(Followed::Capacity.held_by(&back), Some(None));
        let held: DefinitionAnswer = serde_json::from_str(r#"{"capacity":[42,"eu-west-1"]}"#).expect("valid");
        assert_eq!(
            Followed::Capacity.held_by(&held),
            Some(Some(replication::Version::new(replication::Hlc(42), "eu-west-1")))
        );
    }

    #[test]
    fn a_previous_builds_ttl_carries_no_version_and_changes_no_existing_replica() {
        // What a previous build's definition holds for its TTL (`null`, or its own, unversioned).
        for (ttl, expected) in [
            ("null", None),
            (
                r#"{"attribute":"exp","enabled":false}"#,
                Some(TtlSpec {
                    attribute: "exp".into(),
                    enabled: false,
                    version: None,
                }),
            ),
        ] {
            let parsed: Option<TtlSpec> = serde_json::from_str(ttl).expect("valid");
            assert_eq!(parsed, expected);
            let incoming = TtlSpec::version_of(parsed.as_ref());
            assert!(incoming.is_none());
            let held = TtlSpec::version_of(Some(&TtlSpec {
                attribute: "exp".into(),
                enabled: true,
                version: Some((1, "us-east-1".into())),
            }));
            assert!(!rules::setting_applies(incoming.as_ref(), held.as_ref(), false));
            assert!(!rules::setting_applies(incoming.as_ref(), None, false));
            // A replica it creates takes it, as the previous build's own receiver did not.
            assert!(rules::setting_applies(incoming.as_ref(), None, true));
        }
        // And an unversioned TTL is stored as before versions existed.
        let plain = TtlSpec {
            attribute: "exp".into(),
            enabled: true,
            version: None,
        };
        assert_eq!(
            serde_json::to_string(&plain).expect("valid"),
            r#"{"attribute":"exp","enabled":true}"#
        );
    }
}
