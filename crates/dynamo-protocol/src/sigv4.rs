//! AWS Signature Version 4 verification, as the DynamoDB front end does it.
//!
//! The verifier rebuilds the canonical request from what arrived on the wire, derives the
//! signing key from the secret of the access key named in the credential scope, and compares
//! signatures in constant time. It accepts the `Authorization` header form only (what every SDK
//! sends to DynamoDB; query-string auth is refused, see [`verify`]). `Host` and, when present,
//! `X-Amz-Target` must be signed, so a signed GetItem cannot become a DeleteItem; the scope's
//! service must be `dynamodb` and, with [`verify_in`], its region the server's. Requests older
//! or newer than [`CLOCK_SKEW_MAX_SECS`] are refused, as AWS refuses them, so a captured
//! request cannot be replayed later; replays inside that window are the caller's to bound
//! (the store keeps recent signatures of requests that change data). [`verify_head`] checks
//! what the head alone can prove, so a server can refuse before it reads a body.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's `X-Amz-Date` may be from the server's clock (AWS: 5 minutes).
pub const CLOCK_SKEW_MAX_SECS: i64 = 5 * 60;

/// Most access keys one credentials file may hold.
pub const CREDENTIALS_MAX: usize = 10_000;

/// The service name a credential scope must carry.
pub const SERVICE: &str = "dynamodb";

/// Access key id → secret access key.
#[derive(Clone, Default)]
pub struct Credentials {
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Credentials")
            .field("access_keys", &self.secrets.len())
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("line {line}: expected `ACCESS_KEY_ID SECRET_ACCESS_KEY`, found {fields} field(s)")]
    Shape { line: usize, fields: usize },
    #[error("line {line}: access key id `{id}` appears twice (first on line {first}); remove one")]
    Duplicate { line: usize, id: String, first: usize },
    #[error("line {line}: more than {CREDENTIALS_MAX} access keys; split the deployment or rotate old keys out")]
    TooMany { line: usize },
}

impl Credentials {
    pub fn new() -> Credentials {
        Credentials::default()
    }

    pub fn insert(&mut self, access_key_id: impl Into<String>, secret: impl Into<String>) {
        self.secrets.insert(access_key_id.into(), secret.into());
    }

    /// Parses lines of `ACCESS_KEY_ID SECRET_ACCESS_KEY`; blank lines and `#` comments are skipped.
    pub fn parse_file(text: &str) -> Result<Credentials, CredentialsError> {
        let mut credentials = Credentials::new();
        let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [id, secret] = fields.as_slice() else {
                return Err(CredentialsError::Shape {
                    line,
                    fields: fields.len(),
                });
            };
            if let Some(&first) = first_seen.get(*id) {
                return Err(CredentialsError::Duplicate {
                    line,
                    id: id.to_string(),
                    first,
                });
            }
            if credentials.secrets.len() >= CREDENTIALS_MAX {
                return Err(CredentialsError::TooMany { line });
            }
            first_seen.insert(id.to_string(), line);
            credentials.insert(*id, *secret);
        }
        Ok(credentials)
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    fn secret(&self, access_key_id: &str) -> Option<&str> {
        self.secrets.get(access_key_id).map(String::as_str)
    }
}

/// The parts of an HTTP request a signature covers, as they arrived.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The raw (still percent-encoded) path.
    pub path: &'a str,
    /// The raw query string without `?`.
    pub query: &'a str,
    /// Header names (any case) and values; a name may repeat.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

impl<'a> RequestParts<'a> {
    /// A POST of `body` to `/` with no query string, as DynamoDB's JSON protocol sends every
    /// request.
    pub fn post(headers: &'a [(&'a str, &'a [u8])], body: &'a [u8]) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body,
        }
    }
}

/// The credential scope: `AKID/20150830/us-east-1/dynamodb/aws4_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Scope {
    fn parse(credential: &str) -> Result<Scope, ApiError> {
        let parts: Vec<&str> = credential.split('/').collect();
        let [id, date, region, service, terminator] = parts.as_slice() else {
            return Err(incomplete(format!(
                "Credential should have 5 parts separated by '/' (ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request), got '{credential}'"
            )));
        };
        if *terminator != "aws4_request" {
            return Err(incomplete(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(incomplete(format!("Credential date '{date}' must be YYYYMMDD.")));
        }
        Ok(Scope {
            access_key_id: id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        })
    }

    fn text(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

/// What a request claims: scope, signed headers, signature and time.
#[derive(Clone, Debug)]
struct Claim {
    scope: Scope,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
}

/// A claim as the Authorization header states it, its credential scope not parsed yet (the
/// signing time is checked first).
#[derive(Clone, Debug)]
struct UncheckedClaim {
    credential: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
}

/// A verified request's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
    /// The hex signature: unique to this request's content and signing time (the replay key).
    pub signature: String,
    /// When the client signed it (Unix seconds).
    pub signed_at_secs: i64,
    /// The signature covers [`CALL_ID_HEADER`]: the client gave this call an id of its own, so
    /// a second request with the same signature is the same call sent again, never a new one.
    pub call_id_signed: bool,
}

/// The header AWS SDKs set to a new UUID for every call. The JavaScript SDK v3, Go, Java and
/// Rust SDKs sign it; botocore (boto3, the AWS CLI) adds it after signing and the PHP SDK and
/// async-aws leave it out of the signature, so two identical calls they sign in the same
/// second carry one signature.
pub const CALL_ID_HEADER: &str = "amz-sdk-invocation-id";

/// What [`verify_head`] could tell before the body arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadCheck {
    /// The signature is valid for the body hash in `x-amz-content-sha256`; the body must then
    /// hash to it ([`check_payload`]).
    Verified { verified: Verified, payload_sha256: String },
    /// Everything but the signature holds (known key, scope, time, signed headers); the
    /// signature needs the body ([`verify_in`]).
    NeedsBody,
}

/// Verifies the request's signature against `credentials` at `now_secs` (Unix seconds), for
/// any region in the credential scope.
pub fn verify(credentials: &Credentials, parts: &RequestParts<'_>, now_secs: i64) -> Result<Verified, ApiError> {
    verify_in(credentials, parts, None, now_secs)
}

/// Verifies the request's signature; with `region`, the credential scope must name it.
pub fn verify_in(
    credentials: &Credentials,
    parts: &RequestParts<'_>,
    region: Option<&str>,
    now_secs: i64,
) -> Result<Verified, ApiError> {
    let (claim, secret, signed_at_secs) = checked_claim(credentials, parts, region, now_secs)?;
    let payload = hex::encode(Sha256::digest(parts.body));
    if let Some(declared) = header_text(parts, "x-amz-content-sha256") {
        check_declared(&declared, &payload)?;
    }
    check_signature(secret, parts, claim, &payload, signed_at_secs)
}

/// Checks everything a request's head can prove, before its body is read (the body in `parts`
/// is ignored). With a hex body hash in `x-amz-content-sha256` that is the whole signature.
pub fn verify_head(
    credentials: &Credentials,
    parts: &RequestParts<'_>,
    region: Option<&str>,
    now_secs: i64,
) -> Result<HeadCheck, ApiError> {
    let (claim, secret, signed_at_secs) = checked_claim(credentials, parts, region, now_secs)?;
    let Some(declared) = header_text(parts, "x-amz-content-sha256") else {
        return Ok(HeadCheck::NeedsBody);
    };
    if !is_sha256_hex(&declared) {
        return Err(payload_mismatch());
    }
    let verified = check_signature(secret, parts, claim, &declared, signed_at_secs)?;
    Ok(HeadCheck::Verified {
        verified,
        payload_sha256: declared,
    })
}

/// After [`HeadCheck::Verified`]: the body that arrived must be the one signed.
pub fn check_payload(payload_sha256: &str, body: &[u8]) -> Result<(), ApiError> {
    check_declared(payload_sha256, &hex::encode(Sha256::digest(body)))
}

fn check_declared(declared: &str, computed: &str) -> Result<(), ApiError> {
    if constant_time_eq(declared.as_bytes(), computed.as_bytes()) {
        Ok(())
    } else {
        Err(payload_mismatch())
    }
}

fn payload_mismatch() -> ApiError {
    ApiError::new(
        ErrorKind::InvalidSignature,
        "The provided 'x-amz-content-sha256' header does not match what was computed. It must be the \
         lower-case hex SHA-256 of the body; UNSIGNED-PAYLOAD is not accepted, so a signature always covers its body.",
    )
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The claim with every rule checked except the signature itself, and the key's secret.
fn checked_claim<'c>(
    credentials: &'c Credentials,
    parts: &RequestParts<'_>,
    region: Option<&str>,
    now_secs: i64,
) -> Result<(Claim, &'c str, i64), ApiError> {
    let unchecked = claim(parts)?;
    // As DynamoDB does, a request signed too far from now is refused for its time before its
    // credential scope is looked at (a stale request names the problem the client can fix).
    let request_secs = parse_amz_date(&unchecked.amz_date).ok_or_else(|| {
        incomplete(format!(
            "X-Amz-Date '{}' must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'.",
            unchecked.amz_date
        ))
    })?;
    check_time(&unchecked.amz_date, request_secs, now_secs)?;
    let claim = Claim {
        scope: Scope::parse(&unchecked.credential)?,
        signed_headers: unchecked.signed_headers,
        signature: unchecked.signature,
        amz_date: unchecked.amz_date,
    };
    if claim.scope.service != SERVICE {
        return Err(incomplete(format!(
            "Credential should be scoped to correct service: '{SERVICE}', not '{}'.",
            claim.scope.service
        )));
    }
    if let Some(region) = region
        && claim.scope.region != region
    {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            format!(
                "Credential should be scoped to a valid region, not '{}': this store serves '{region}'; sign for region '{region}' (the client's region setting)",
                claim.scope.region
            ),
        ));
    }
    for required in ["host", "x-amz-target"] {
        if header_values(parts, required).next().is_some() && !claim.signed_headers.iter().any(|n| n == required) {
            let shown = if required == "host" { "Host" } else { "X-Amz-Target" };
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                format!("'{shown}' must be a 'SignedHeader' in the AWS Authorization."),
            ));
        }
    }
    if !claim.amz_date.starts_with(&claim.scope.date) {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                claim.scope.date,
                &claim.amz_date[..8]
            ),
        ));
    }
    let secret = credentials.secret(&claim.scope.access_key_id).ok_or_else(|| {
        ApiError::new(
            ErrorKind::UnrecognizedClient,
            "The security token included in the request is invalid.",
        )
    })?;
    Ok((claim, secret, request_secs))
}

fn check_signature(
    secret: &str,
    parts: &RequestParts<'_>,
    claim: Claim,
    payload_sha256: &str,
    signed_at_secs: i64,
) -> Result<Verified, ApiError> {
    let expected = signature(secret, parts, &claim, payload_sha256)?;
    let call_id_signed = claim.signed_headers.iter().any(|name| name == CALL_ID_HEADER);
    if !constant_time_eq(expected.as_bytes(), claim.signature.as_bytes()) {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(Verified {
        access_key_id: claim.scope.access_key_id,
        region: claim.scope.region,
        signature: claim.signature,
        signed_at_secs,
        call_id_signed,
    })
}

/// Refuses a request signed more than [`CLOCK_SKEW_MAX_SECS`] before or after `now_secs`, with
/// AWS's messages ("Signature expired" for the past, "Signature not yet current" for the
/// future).
fn check_time(amz_date: &str, request_secs: i64, now_secs: i64) -> Result<(), ApiError> {
    let now = format_amz_date(now_secs);
    if request_secs < now_secs - CLOCK_SKEW_MAX_SECS {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            format!(
                "Signature expired: {amz_date} is now earlier than {} ({now} - 5 min.)",
                format_amz_date(now_secs - CLOCK_SKEW_MAX_SECS),
            ),
        ));
    }
    if request_secs > now_secs + CLOCK_SKEW_MAX_SECS {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            format!(
                "Signature not yet current: {amz_date} is still later than {} ({now} + 5 min.)",
                format_amz_date(now_secs + CLOCK_SKEW_MAX_SECS),
            ),
        ));
    }
    Ok(())
}

/// Computes the hex signature the request should carry if signed with `secret`.
fn signature(secret: &str, parts: &RequestParts<'_>, claim: &Claim, payload_sha256: &str) -> Result<String, ApiError> {
    let canonical = canonical_request(parts, &claim.signed_headers, payload_sha256)?;
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        claim.amz_date,
        claim.scope.text(),
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret, &claim.scope.date, &claim.scope.region, &claim.scope.service);
    Ok(hex::encode(hmac(&key, string_to_sign.as_bytes())))
}

/// Most signatures a [`ReplayGuard`] remembers (about 40 bytes each, twice indexed): enough for
/// 330 requests that change data per second over the whole 5-minute window; beyond that the
/// window shrinks instead of letting a replay through.
pub const REPLAY_SIGNATURES_MAX: usize = 100_000;

/// Bounds replays of signed requests inside the [`CLOCK_SKEW_MAX_SECS`] window: a signature that
/// covers a call id ([`CALL_ID_HEADER`]) is accepted once; one that does not is not remembered,
/// since two calls can then share it. Signatures older than the window are forgotten (the clock check refuses
/// them); when full, the oldest is forgotten and every request signed at or before it is
/// refused from then on, so forgetting never lets a replay through. Pure: the caller passes the
/// time.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    seen: std::collections::HashSet<u128>,
    by_time: std::collections::BTreeSet<(i64, u128)>,
    /// Requests signed at or before this second may have been forgotten.
    horizon_secs: Option<i64>,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            capacity: capacity.max(1),
            seen: std::collections::HashSet::new(),
            by_time: std::collections::BTreeSet::new(),
            horizon_secs: None,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Admits a verified request once: refuses its signature if seen before (a replay), or
    /// if it was signed at or before the horizon of forgotten signatures.
    pub fn admit(&mut self, verified: &Verified, now_secs: i64) -> Result<(), ApiError> {
        if !verified.call_id_signed {
            // Without a signed call id two different calls can carry one signature (boto3 and
            // the PHP SDK sign the same UpdateItem twice in one second alike), so a repeat may be a new
            // call: it is served, as DynamoDB serves it, and HTTPS is what stops a capture.
            return Ok(());
        }
        while let Some(&(signed_at, key)) = self.by_time.first() {
            if signed_at.saturating_add(CLOCK_SKEW_MAX_SECS) >= now_secs {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&key);
        }
        let key = replay_key(&verified.signature);
        if self.seen.contains(&key) {
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                "This signature was already used by a request that changes data; a signed request is accepted once. \
                 Sign every request anew (AWS SDKs do, retries included).",
            ));
        }
        if self.seen.len() >= self.capacity
            && let Some((signed_at, oldest)) = self.by_time.pop_first()
        {
            self.seen.remove(&oldest);
            self.horizon_secs = Some(self.horizon_secs.map_or(signed_at, |h| h.max(signed_at)));
        }
        if let Some(horizon) = self.horizon_secs
            && verified.signed_at_secs <= horizon
        {
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                format!(
                    "Signature from {} is too old to be checked against replays under the current load (signatures from {} on are remembered); sign the request again and retry",
                    format_amz_date(verified.signed_at_secs),
                    format_amz_date(horizon + 1)
                ),
            ));
        }
        self.seen.insert(key);
        self.by_time.insert((verified.signed_at_secs, key));
        Ok(())
    }
}

impl ReplayGuard {
    /// Forgets an admitted signature whose request was not applied and that clients retry
    /// (a server fault, throttling): SDKs re-send a retry within the same second with the same
    /// signature, since the attempt number they add is not signed.
    pub fn forget(&mut self, verified: &Verified) {
        let key = replay_key(&verified.signature);
        if self.seen.remove(&key) {
            self.by_time.remove(&(verified.signed_at_secs, key));
        }
    }
}

/// The first 128 bits of a signature (an HMAC-SHA256: already unpredictable).
fn replay_key(signature: &str) -> u128 {
    match hex::decode(signature.get(..32).unwrap_or(signature)) {
        Ok(bytes) if bytes.len() == 16 => {
            let mut key = [0u8; 16];
            key.copy_from_slice(&bytes);
            u128::from_be_bytes(key)
        }
        // Not hex (it would not have verified): any stable digest will do.
        _ => {
            let digest = Sha256::digest(signature.as_bytes());
            let mut key = [0u8; 16];
            key.copy_from_slice(&digest[..16]);
            u128::from_be_bytes(key)
        }
    }
}

/// Signs a request for DynamoDB the way the AWS SDKs do, for Switchyard's own clients (the
/// demo shop, health probes): every header in `parts` is signed, and the `Authorization`
/// header value is returned. `amz_date` is `YYYYMMDD'T'HHMMSS'Z'` and must also be one of
/// the headers (`x-amz-date`).
pub fn authorization_header(
    access_key_id: &str,
    secret: &str,
    region: &str,
    amz_date: &str,
    parts: &RequestParts<'_>,
) -> Result<String, ApiError> {
    let mut signed_headers: Vec<String> = parts
        .headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    signed_headers.sort();
    signed_headers.dedup();
    let date = amz_date
        .get(..8)
        .ok_or_else(|| incomplete(format!("X-Amz-Date '{amz_date}' is too short")))?;
    let claim = Claim {
        scope: Scope {
            access_key_id: access_key_id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: SERVICE.to_string(),
        },
        signed_headers,
        signature: String::new(),
        amz_date: amz_date.to_string(),
    };
    let signature = signature(secret, parts, &claim, &hex::encode(Sha256::digest(parts.body)))?;
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={}, Signature={signature}",
        claim.scope.text(),
        claim.signed_headers.join(";")
    ))
}

/// The content type of DynamoDB's JSON API.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// The `Authorization` header of a DynamoDB call as Switchyard's clients (the demo shop, health
/// probes) send it: a POST to `/` whose signed headers are `content-type`
/// ([`JSON_CONTENT_TYPE`]), `host`, `x-amz-date` (`amz_date`) and `x-amz-target` (`target`,
/// like `DynamoDB_20120810.PutItem`), each of which the request must carry with these values.
pub fn sign_request(
    access_key_id: &str,
    secret: &str,
    region: &str,
    host: &str,
    amz_date: &str,
    target: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    let headers: [(&str, &[u8]); 4] = [
        ("content-type", JSON_CONTENT_TYPE.as_bytes()),
        ("host", host.as_bytes()),
        ("x-amz-date", amz_date.as_bytes()),
        ("x-amz-target", target.as_bytes()),
    ];
    authorization_header(
        access_key_id,
        secret,
        region,
        amz_date,
        &RequestParts::post(&headers, body),
    )
}

/// The SigV4 signing key: HMAC chain over date, region, service and the terminator.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time equality of two signatures. Not `common::secret::same_secret`: this crate
/// stays free of the HTTP stack (it is fuzzed on its own), and both sides here are signatures
/// of one known length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn incomplete(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::IncompleteSignature, message)
}

fn header_values<'a>(parts: &'a RequestParts<'_>, name: &str) -> impl Iterator<Item = &'a [u8]> {
    let name = name.to_ascii_lowercase();
    parts
        .headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, v)| *v)
}

fn header_text(parts: &RequestParts<'_>, name: &str) -> Option<String> {
    header_values(parts, name)
        .next()
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
}

/// Query parameters that carry SigV4 query-string (presigned) authentication.
const QUERY_AUTH_PARAMETERS: [&str; 5] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-SignedHeaders",
    "X-Amz-Date",
];

/// Reads scope, signed headers, signature and date from the `Authorization` header.
///
/// Query-string (presigned) authentication is refused: DynamoDB documents only the header
/// form for its JSON API, and a presigned URL signs no body (`UNSIGNED-PAYLOAD`), so anyone
/// holding one could send any operation's body under it until it expires.
fn claim(parts: &RequestParts<'_>) -> Result<UncheckedClaim, ApiError> {
    let query = parse_query(parts.query);
    if let Some((name, _)) = query
        .iter()
        .find(|(k, _)| QUERY_AUTH_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(k)))
    {
        return Err(incomplete(format!(
            "Query-string authentication ('{name}' in the URL, a presigned URL) is not accepted: DynamoDB's JSON API \
             takes the signature in the Authorization header only, as every AWS SDK sends it. Sign the request's headers instead."
        )));
    }
    if let Some(authorization) = header_text(parts, "authorization") {
        return claim_from_header(parts, &authorization);
    }
    Err(ApiError::new(
        ErrorKind::MissingAuthenticationToken,
        "Request is missing Authentication Token",
    ))
}

fn claim_from_header(parts: &RequestParts<'_>, authorization: &str) -> Result<UncheckedClaim, ApiError> {
    let Some(rest) = authorization.strip_prefix(ALGORITHM) else {
        return Err(incomplete(format!(
            "Authorization header must start with '{ALGORITHM} ' (only Signature Version 4 is supported)"
        )));
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    // Components are separated by commas (SDKs add a space after each); DynamoDB also takes
    // white space alone between them.
    for field in rest.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
        let field = field.trim();
        if let Some((name, value)) = field.split_once('=') {
            match name.trim() {
                "Credential" => credential = Some(value.trim().to_string()),
                "SignedHeaders" => signed_headers = Some(value.trim().to_string()),
                "Signature" => signature = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut missing = Vec::new();
    for (name, value) in [
        ("Credential", &credential),
        ("Signature", &signature),
        ("SignedHeaders", &signed_headers),
    ] {
        if value.is_none() {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    let amz_date = header_text(parts, "x-amz-date");
    if amz_date.is_none() {
        missing.push("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into());
    }
    if !missing.is_empty() {
        return Err(incomplete(format!(
            "{} Authorization={authorization}",
            missing.join(" ")
        )));
    }
    let (Some(credential), Some(signed_headers), Some(signature), Some(amz_date)) =
        (credential, signed_headers, signature, amz_date)
    else {
        unreachable!("each is checked above")
    };
    let signed_headers = split_signed_headers(&signed_headers)?;
    Ok(UncheckedClaim {
        credential,
        signed_headers,
        signature,
        amz_date,
    })
}

fn split_signed_headers(text: &str) -> Result<Vec<String>, ApiError> {
    let names: Vec<String> = text.split(';').map(|s| s.trim().to_ascii_lowercase()).collect();
    if names.iter().any(String::is_empty) {
        return Err(incomplete(format!("SignedHeaders '{text}' has an empty header name")));
    }
    if !names.iter().any(|n| n == "host") {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    Ok(names)
}

/// The canonical request of SigV4 (for services other than S3: the path is normalised and
/// URI-encoded once more, as botocore and the AWS SDKs sign it).
pub fn canonical_request(
    parts: &RequestParts<'_>,
    signed_headers: &[String],
    payload_sha256: &str,
) -> Result<String, ApiError> {
    let mut out = String::with_capacity(512);
    out.push_str(parts.method);
    out.push('\n');
    out.push_str(&canonical_path(parts.path));
    out.push('\n');
    let query = parse_query(parts.query);
    let mut encoded: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    encoded.sort();
    let query_text: Vec<String> = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&query_text.join("&"));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = header_values(parts, name)
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v)))
            .collect();
        if values.is_empty() {
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                format!("Header '{name}' is listed in SignedHeaders but absent from the request"),
            ));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_sha256);
    Ok(out)
}

fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Removes `.` and `..` segments and repeated slashes, keeps a trailing slash, then encodes
/// each byte outside the unreserved set (the already-encoded `%` becomes `%25`).
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalised = format!("/{}", segments.join("/"));
    if path.ends_with('/') && normalised.len() > 1 {
        normalised.push('/');
    }
    uri_encode(&normalised, false)
}

/// SigV4's URI encoding: unreserved characters stay, everything else becomes `%XX`
/// (upper-case hex); `/` stays unless `encode_slash`.
pub fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Splits and percent-decodes a query string (`+` is a literal plus, as in SigV4).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = bytes.get(index + 1..index + 3)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(text, 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `20150830T123600Z` into Unix seconds.
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = text.get(range)?;
        if !slice.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        slice.parse().ok()
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Formats Unix seconds as `20150830T123600Z`.
pub fn format_amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn sign(secret: &str, scope: &Scope, amz_date: &str, parts: &RequestParts<'_>, signed: &[&str]) -> String {
        let claim = Claim {
            scope: scope.clone(),
            signed_headers: signed.iter().map(|s| s.to_string()).collect(),
            signature: String::new(),
            amz_date: amz_date.into(),
        };
        signature(secret, parts, &claim, &hex::encode(Sha256::digest(parts.body))).expect("signable")
    }

    fn scope(service: &str, region: &str) -> Scope {
        Scope {
            access_key_id: "AKIDEXAMPLE".into(),
            date: "20150830".into(),
            region: region.into(),
            service: service.into(),
        }
    }

    /// The signature, with [`SECRET`], of a GET of `/` to `service` in us-east-1 at
    /// 2015-08-30T12:36:00Z, as the examples of AWS's documentation and test suite sign it.
    fn sign_aws_example(service: &str, headers: &[(&str, &[u8])], query: &str, signed: &[&str]) -> String {
        let parts = RequestParts {
            method: "GET",
            ..parts_of(headers, query, b"")
        };
        sign(SECRET, &scope(service, "us-east-1"), "20150830T123600Z", &parts, signed)
    }

    /// `get-vanilla` from the AWS SigV4 test suite.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let headers: [(&str, &[u8]); 2] = [("Host", b"example.amazonaws.com"), ("X-Amz-Date", b"20150830T123600Z")];
        assert_eq!(
            sign_aws_example("service", &headers, "", &["host", "x-amz-date"]),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The IAM `ListUsers` example of the AWS General Reference.
    #[test]
    fn aws_documentation_list_users() {
        let headers: [(&str, &[u8]); 3] = [
            ("Host", b"iam.amazonaws.com"),
            ("Content-Type", b"application/x-www-form-urlencoded; charset=utf-8"),
            ("X-Amz-Date", b"20150830T123600Z"),
        ];
        let query = "Action=ListUsers&Version=2010-05-08";
        assert_eq!(
            sign_aws_example("iam", &headers, query, &["content-type", "host", "x-amz-date"]),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    fn dynamodb_request(secret: &str, body: &'static [u8]) -> (Vec<(&'static str, Vec<u8>)>, i64) {
        let amz_date = "20260101T000000Z";
        let now = parse_amz_date(amz_date).expect("valid date");
        let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
            ("host", b"127.0.0.1:8000".to_vec()),
            ("x-amz-date", amz_date.as_bytes().to_vec()),
            ("x-amz-target", b"DynamoDB_20120810.ListTables".to_vec()),
        ];
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let parts = parts_of(&borrowed, "", body);
        let scope = Scope {
            access_key_id: "local".into(),
            date: "20260101".into(),
            region: "us-east-1".into(),
            service: "dynamodb".into(),
        };
        let signature = sign(
            secret,
            &scope,
            amz_date,
            &parts,
            &["host", "x-amz-date", "x-amz-target"],
        );
        headers.push((
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature={signature}"
            )
            .into_bytes(),
        ));
        (headers, now)
    }

    fn check(
        credentials: &Credentials,
        headers: &[(&'static str, Vec<u8>)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, ApiError> {
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let parts = parts_of(&borrowed, "", body);
        verify(credentials, &parts, now)
    }

    /// A request signed too long ago or too far ahead is refused for its time first, with AWS's
    /// messages, even when its credential scope is malformed (DynamoDB answers so too).
    #[test]
    fn a_stale_or_future_signature_is_refused_for_its_time_before_its_scope() {
        let credentials = local();
        let now = parse_amz_date("20260101T000000Z").expect("valid date");
        let request = |amz_date: &str| -> Vec<(&'static str, Vec<u8>)> {
            vec![
                ("host", b"127.0.0.1:8000".to_vec()),
                ("x-amz-date", amz_date.as_bytes().to_vec()),
                ("x-amz-target", b"DynamoDB_20120810.DescribeEndpoints".to_vec()),
                (
                    "authorization",
                    b"AWS4-HMAC-SHA256 Credential=local/2/3/4/aws4_request SignedHeaders=x-amz-date;host Signature=123"
                        .to_vec(),
                ),
            ]
        };
        let expired = check(&credentials, &request("20170101T010101Z"), b"{}", now).expect_err("expired");
        assert_eq!(expired.kind, ErrorKind::InvalidSignature);
        assert_eq!(
            expired.message,
            "Signature expired: 20170101T010101Z is now earlier than 20251231T235500Z (20260101T000000Z - 5 min.)"
        );
        let future = check(&credentials, &request("30200101T010101Z"), b"{}", now).expect_err("future");
        assert_eq!(future.kind, ErrorKind::InvalidSignature);
        assert_eq!(
            future.message,
            "Signature not yet current: 30200101T010101Z is still later than 20260101T000500Z (20260101T000000Z + 5 min.)"
        );
        // Within the window, the malformed scope is what is wrong.
        let current = check(&credentials, &request("20260101T000100Z"), b"{}", now).expect_err("bad scope");
        assert_eq!(current.kind, ErrorKind::IncompleteSignature);
        assert!(
            current.message.contains("Credential date '2' must be YYYYMMDD."),
            "{}",
            current.message
        );
    }

    #[test]
    fn authorization_components_may_be_separated_by_white_space_alone() {
        let credentials = local();
        let (mut headers, now) = dynamodb_request("s3cret", b"{}");
        for (name, value) in headers.iter_mut() {
            if *name == "authorization" {
                let text = String::from_utf8(value.clone()).expect("ascii");
                *value = text.replace(", ", " ").replace(' ', "  ").into_bytes();
            }
        }
        let verified = check(&credentials, &headers, b"{}", now).expect("valid signature");
        assert_eq!(verified.access_key_id, "local");
    }

    #[test]
    fn verifies_and_rejects() {
        let credentials = local();
        let body: &[u8] = b"{}";
        let (headers, now) = dynamodb_request("s3cret", b"{}");
        let verified = check(&credentials, &headers, body, now).expect("valid signature");
        assert_eq!(verified.access_key_id, "local");

        let tampered = check(&credentials, &headers, b"{\"Limit\":1}", now).expect_err("body changed");
        assert_eq!(tampered.kind, ErrorKind::InvalidSignature);

        let late = check(&credentials, &headers, body, now + CLOCK_SKEW_MAX_SECS + 1).expect_err("too late");
        assert!(late.message.contains("Signature expired"), "{}", late.message);

        let (wrong_secret, _) = dynamodb_request("other", b"{}");
        assert_eq!(
            check(&credentials, &wrong_secret, body, now)
                .expect_err("wrong secret")
                .kind,
            ErrorKind::InvalidSignature
        );

        let stranger = Credentials::parse_file("someone else\n").expect("valid file");
        assert_eq!(
            check(&stranger, &headers, body, now).expect_err("unknown key").kind,
            ErrorKind::UnrecognizedClient
        );

        let unsigned: Vec<_> = headers.iter().filter(|(n, _)| *n != "authorization").cloned().collect();
        assert_eq!(
            check(&credentials, &unsigned, body, now).expect_err("unsigned").kind,
            ErrorKind::MissingAuthenticationToken
        );
    }

    #[test]
    fn authorization_header_verifies() {
        let amz_date = "20260101T000000Z";
        let headers: [(&str, &[u8]); 4] = [
            ("Host", b"127.0.0.1:8000"),
            ("Content-Type", b"application/x-amz-json-1.0"),
            ("X-Amz-Date", amz_date.as_bytes()),
            ("X-Amz-Target", b"DynamoDB_20120810.GetItem"),
        ];
        let unsigned = parts_of(&headers, "", b"{}");
        let authorization =
            authorization_header("local", "s3cret", "eu-west-1", amz_date, &unsigned).expect("signable request");
        let mut signed_headers = headers.to_vec();
        signed_headers.push(("Authorization", authorization.as_bytes()));
        let parts = RequestParts {
            headers: &signed_headers,
            ..unsigned
        };
        let credentials = local();
        let now = parse_amz_date(amz_date).expect("valid date");
        let verified = verify(&credentials, &parts, now).expect("our own signature verifies");
        assert_eq!(verified.region, "eu-west-1");
        let tampered = RequestParts {
            body: b"{\"x\":1}",
            ..parts
        };
        assert_eq!(
            verify(&credentials, &tampered, now).expect_err("tampered").kind,
            ErrorKind::InvalidSignature
        );
    }

    /// Headers signed by `authorization_header` (all of them), then changed by `tamper`.
    fn signed(
        headers: &[(&'static str, &'static [u8])],
        region: &str,
        body: &'static [u8],
        query: &'static str,
    ) -> (Vec<(String, Vec<u8>)>, i64) {
        let amz_date = "20260101T000000Z";
        let mut all: Vec<(&str, &[u8])> = vec![("host", b"127.0.0.1:8000"), ("x-amz-date", amz_date.as_bytes())];
        all.extend_from_slice(headers);
        let parts = parts_of(&all, query, body);
        let authorization = authorization_header("local", "s3cret", region, amz_date, &parts).expect("signable");
        let mut owned: Vec<(String, Vec<u8>)> = all.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        owned.push(("authorization".into(), authorization.into_bytes()));
        (owned, parse_amz_date(amz_date).expect("valid date"))
    }

    fn parts_of<'a>(headers: &'a [(&'a str, &'a [u8])], query: &'a str, body: &'a [u8]) -> RequestParts<'a> {
        RequestParts {
            query,
            ..RequestParts::post(headers, body)
        }
    }

    fn local() -> Credentials {
        let mut credentials = Credentials::new();
        credentials.insert("local", "s3cret");
        credentials
    }

    #[test]
    fn target_must_be_signed_when_present() {
        // Signed without X-Amz-Target, which is then added: a GetItem turned into a DeleteItem.
        let (mut headers, now) = signed(&[], "us-east-1", b"{}", "");
        headers.push(("x-amz-target".into(), b"DynamoDB_20120810.DeleteItem".to_vec()));
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let error = verify(&local(), &parts_of(&borrowed, "", b"{}"), now).expect_err("target unsigned");
        assert_eq!(error.kind, ErrorKind::InvalidSignature);
        assert!(error.message.contains("X-Amz-Target"), "{}", error.message);
    }

    #[test]
    fn region_must_be_the_servers() {
        let (headers, now) = signed(
            &[("x-amz-target", b"DynamoDB_20120810.ListTables")],
            "eu-west-1",
            b"{}",
            "",
        );
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let parts = parts_of(&borrowed, "", b"{}");
        verify_in(&local(), &parts, Some("eu-west-1"), now).expect("signed for this region");
        let error = verify_in(&local(), &parts, Some("us-east-1"), now).expect_err("other region");
        assert_eq!(error.kind, ErrorKind::InvalidSignature);
        assert!(
            error.message.contains("'eu-west-1'") && error.message.contains("'us-east-1'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn query_string_authentication_is_refused() {
        let query =
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=local%2F20260101%2Fus-east-1%2Fdynamodb%2Faws4_request";
        let (headers, now) = signed(
            &[("x-amz-target", b"DynamoDB_20120810.ListTables")],
            "us-east-1",
            b"{}",
            query,
        );
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let error = verify(&local(), &parts_of(&borrowed, query, b"{}"), now).expect_err("query auth");
        assert_eq!(error.kind, ErrorKind::IncompleteSignature);
        assert!(error.message.contains("Authorization header"), "{}", error.message);
    }

    #[test]
    fn head_check_with_a_body_hash_verifies_before_the_body() {
        let body: &'static [u8] = b"{\"TableName\":\"t\"}";
        let hash: &'static str = Box::leak(hex::encode(Sha256::digest(body)).into_boxed_str());
        let (headers, now) = signed(
            &[
                ("x-amz-target", b"DynamoDB_20120810.DeleteTable"),
                ("x-amz-content-sha256", hash.as_bytes()),
            ],
            "us-east-1",
            body,
            "",
        );
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let head = verify_head(&local(), &parts_of(&borrowed, "", b""), Some("us-east-1"), now).expect("valid head");
        let HeadCheck::Verified { payload_sha256, .. } = head else {
            panic!("a body hash lets the head be verified: {head:?}")
        };
        check_payload(&payload_sha256, body).expect("the signed body");
        assert_eq!(
            check_payload(&payload_sha256, b"{\"TableName\":\"other\"}")
                .expect_err("another body")
                .kind,
            ErrorKind::InvalidSignature
        );
        // Without the hash the head is only plausible; a wrong key is refused before the body.
        let (plain, now) = signed(
            &[("x-amz-target", b"DynamoDB_20120810.ListTables")],
            "us-east-1",
            b"{}",
            "",
        );
        let borrowed: Vec<(&str, &[u8])> = plain.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        assert_eq!(
            verify_head(&local(), &parts_of(&borrowed, "", b""), None, now).expect("plausible"),
            HeadCheck::NeedsBody
        );
        let stranger = Credentials::parse_file("someone else\n").expect("valid file");
        assert_eq!(
            verify_head(&stranger, &parts_of(&borrowed, "", b""), None, now)
                .expect_err("unknown key")
                .kind,
            ErrorKind::UnrecognizedClient
        );
    }

    #[test]
    fn unsigned_payload_is_refused() {
        let (headers, now) = signed(
            &[
                ("x-amz-target", b"DynamoDB_20120810.PutItem"),
                ("x-amz-content-sha256", b"UNSIGNED-PAYLOAD"),
            ],
            "us-east-1",
            b"{}",
            "",
        );
        let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let parts = parts_of(&borrowed, "", b"{}");
        assert_eq!(
            verify(&local(), &parts, now).expect_err("unsigned payload").kind,
            ErrorKind::InvalidSignature
        );
        assert_eq!(
            verify_head(&local(), &parts, None, now)
                .expect_err("unsigned payload")
                .kind,
            ErrorKind::InvalidSignature
        );
    }

    fn verified(signature: &str, signed_at_secs: i64) -> Verified {
        Verified {
            access_key_id: "local".into(),
            region: "us-east-1".into(),
            signature: signature.into(),
            signed_at_secs,
            call_id_signed: true,
        }
    }

    #[test]
    fn replay_guard_admits_a_signature_once_within_the_window() {
        let mut guard = ReplayGuard::new(10);
        let first = verified(&"ab".repeat(32), 1_000);
        guard.admit(&first, 1_000).expect("first use");
        assert_eq!(
            guard.admit(&first, 1_100).expect_err("replay").kind,
            ErrorKind::InvalidSignature
        );
        guard
            .admit(&verified(&"cd".repeat(32), 1_000), 1_100)
            .expect("another signature");
        // Past the window the entry is forgotten (the clock check refuses the request anyway).
        guard.admit(&verified(&"ef".repeat(32), 1_400), 1_400).expect("later");
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn a_signature_without_a_call_id_is_not_remembered() {
        // Two identical UpdateItem calls signed by the PHP SDK in one second share a signature;
        // both are calls of their own and both are served.
        let mut guard = ReplayGuard::new(10);
        let repeated = Verified {
            call_id_signed: false,
            ..verified(&"ab".repeat(32), 1_000)
        };
        guard.admit(&repeated, 1_000).expect("first call");
        guard.admit(&repeated, 1_000).expect("second call, same signature");
        // The same signature with a signed call id is the same call: once.
        guard.admit(&verified(&"ab".repeat(32), 1_000), 1_000).expect("first");
        assert!(guard.admit(&verified(&"ab".repeat(32), 1_000), 1_001).is_err());
    }

    #[test]
    fn the_call_id_is_seen_among_the_signed_headers() {
        let mut known = Credentials::new();
        known.insert("AKIDEXAMPLE", "secret");
        let now = 1_700_000_000;
        let amz_date = format_amz_date(now);
        for (extra, signed) in [
            (
                Some(("amz-sdk-invocation-id", "5d3f1c9e-0000-4000-8000-000000000001")),
                true,
            ),
            (None, false),
        ] {
            let mut headers: Vec<(&str, &[u8])> = vec![
                ("host", b"127.0.0.1:8000"),
                ("x-amz-date", amz_date.as_bytes()),
                ("x-amz-target", b"DynamoDB_20120810.PutItem"),
            ];
            if let Some((name, value)) = extra {
                headers.push((name, value.as_bytes()));
            }
            let parts = |headers| RequestParts::post(headers, b"{}");
            let authorization =
                authorization_header("AKIDEXAMPLE", "secret", "us-east-1", &amz_date, &parts(&headers)).expect("signs");
            let mut with_authorization = headers.clone();
            with_authorization.push(("authorization", authorization.as_bytes()));
            let parts = parts(&with_authorization);
            let verified = verify(&known, &parts, now).expect("valid");
            assert_eq!(verified.call_id_signed, signed, "{extra:?}");
        }
    }

    #[test]
    fn a_full_replay_guard_shrinks_its_window_instead_of_forgetting_silently() {
        let mut guard = ReplayGuard::new(2);
        guard.admit(&verified(&"01".repeat(32), 100), 100).expect("1");
        guard.admit(&verified(&"02".repeat(32), 101), 101).expect("2");
        guard.admit(&verified(&"03".repeat(32), 102), 102).expect("3 evicts 1");
        assert_eq!(guard.len(), 2);
        // The forgotten signature cannot come back, nor anything signed as early.
        assert!(guard.admit(&verified(&"01".repeat(32), 100), 102).is_err());
        assert!(guard.admit(&verified(&"04".repeat(32), 100), 102).is_err());
        guard
            .admit(&verified(&"05".repeat(32), 103), 103)
            .expect("fresh requests still pass");
    }

    #[test]
    fn a_forgotten_signature_is_admitted_again() {
        let mut guard = ReplayGuard::new(10);
        let attempt = verified(&"0a".repeat(32), 100);
        guard.admit(&attempt, 100).expect("first attempt");
        guard.forget(&attempt);
        assert!(guard.is_empty());
        guard
            .admit(&attempt, 101)
            .expect("the retry of an attempt that was not applied");
        assert!(guard.admit(&attempt, 101).is_err());
    }

    #[test]
    fn credentials_file_errors_name_the_line() {
        let parsed = Credentials::parse_file("# keys\nAKID secret\n\nB two # comment\n").expect("valid");
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            Credentials::parse_file("a b\nonly-one\n").expect_err("shape"),
            CredentialsError::Shape { line: 2, fields: 1 }
        );
        assert!(matches!(
            Credentials::parse_file("a b\na c\n"),
            Err(CredentialsError::Duplicate { line: 2, first: 1, .. })
        ));
    }

    #[test]
    fn dates_round_trip() {
        for secs in [0, 1_440_938_160, 1_767_225_600, 4_102_444_799] {
            assert_eq!(parse_amz_date(&format_amz_date(secs)), Some(secs));
        }
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
    }

    #[test]
    fn path_is_normalised_and_encoded() {
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(canonical_path("/a%20b"), "/a%2520b");
    }
}

#[cfg(test)]
mod fuzz {
    //! Arbitrary Authorization headers, dates, query strings and bodies: the verifier never
    //! panics and refuses with one of the authentication errors DynamoDB uses.

    use super::*;
    use proptest::prelude::*;

    /// One of the `fixed` texts or a string matching one of the `patterns`, all equally likely.
    fn piece(fixed: &[&'static str], patterns: &[&'static str]) -> BoxedStrategy<String> {
        let arms: Vec<BoxedStrategy<String>> = fixed
            .iter()
            .map(|text| Just(text.to_string()).boxed())
            .chain(patterns.iter().map(|&pattern| pattern.boxed()))
            .collect();
        proptest::strategy::Union::new(arms).boxed()
    }

    fn authorization() -> impl Strategy<Value = String> {
        let part = piece(
            &[
                "AWS4-HMAC-SHA256",
                " Credential=AKIDEXAMPLE/20231114/us-east-1/dynamodb/aws4_request",
                " SignedHeaders=host;x-amz-date",
                " Signature=00ff",
                ",",
                "=",
                "/",
                ";",
            ],
            &["[A-Za-z0-9=/;, -]{0,12}", "\\PC{0,8}"],
        );
        proptest::collection::vec(part, 0..10).prop_map(|parts| parts.concat())
    }

    fn amz_date() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("20231114T221320Z".to_string()),
            "[0-9]{8}T[0-9]{6}Z",
            "[0-9TZ]{0,20}",
            "\\PC{0,20}",
        ]
    }

    fn query() -> impl Strategy<Value = String> {
        let part = piece(
            &[
                "X-Amz-Algorithm=AWS4-HMAC-SHA256",
                "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Fus-east-1%2Fdynamodb%2Faws4_request",
                "X-Amz-SignedHeaders=host",
                "X-Amz-Signature=00",
                "X-Amz-Date=20231114T221320Z",
            ],
            &["X-Amz-Expires=-?[0-9]{0,20}", "[A-Za-z0-9=%&-]{0,12}"],
        );
        proptest::collection::vec(part, 0..7).prop_map(|parts| parts.join("&"))
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            authorization in proptest::option::of(authorization()),
            date in amz_date(),
            query in query(),
            body in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut credentials = Credentials::new();
            credentials.insert("AKIDEXAMPLE", "secret");
            let mut headers: Vec<(&str, &[u8])> = vec![("host", b"localhost"), ("X-Amz-Date", date.as_bytes())];
            if let Some(authorization) = &authorization {
                headers.push(("Authorization", authorization.as_bytes()));
            }
            let parts = RequestParts { query: &query, ..RequestParts::post(&headers, &body) };
            let error = verify(&credentials, &parts, 1_700_000_000).expect_err("random input never carries a valid signature");
            prop_assert!(
                matches!(
                    error.kind,
                    ErrorKind::IncompleteSignature
                        | ErrorKind::InvalidSignature
                        | ErrorKind::UnrecognizedClient
                        | ErrorKind::MissingAuthenticationToken
                        | ErrorKind::AccessDenied
                ),
                "{}", error
            );
        }

        #[test]
        fn credentials_file_never_panics(text in "[A-Za-z0-9 #=\\t\\n]{0,80}") {
            let _ = Credentials::parse_file(&text);
        }
    }
}
