//! `media_sync` with `mode = "s3"`: S3-compatible object replication (AWS S3, DigitalOcean
//! Spaces, MinIO), through the AWS SDK (credentials from its standard chain).
//!
//! Both buckets are listed under their prefixes with ListObjectsV2, page by page
//! (`ContinuationToken`, `list_page_keys` per page, at most `objects_listed_max` objects each). An object differs when
//! the receiver lacks its key, or holds another size, or another ETag. A different ETag is
//! looked at once more with HeadObject: a copy Switchyard made records the source's ETag in
//! `x-amz-meta-switchyard-source-etag` (multipart ETags are not content hashes, so a copy
//! of a multipart object has another ETag for the same bytes). An object the receiver wrote
//! itself after the source's version (newer `LastModified`, no such metadata) differs like any
//! other, in the lag and in a run's "still differ": as in rsync mode, `media sync` (from the
//! active region, whose copy is the truth) replaces it, and only the runbook step's copy into
//! the region taking over (`keep_newer`, rsync's `--update`) leaves it alone.
//!
//! A copy is GetObject then PutObject (the two buckets may be on different endpoints and
//! accounts, so no server-side CopyObject), keeping Content-Type, Cache-Control,
//! Content-Disposition, Content-Encoding and the user metadata; then HeadObject verifies the
//! size, the recorded source ETag and, for a single-part source into a bucket not encrypting
//! with SSE-KMS or SSE-C, the ETag (then the MD5 of the bytes). At most `concurrency` copies are in flight, `objects_per_run_max` and
//! `bytes_per_run_max` bound one run, and an object larger than `object_bytes_max` is not
//! copied (it is held in memory) and stays in the lag. With `delete`, only copies Switchyard
//! made (the recorded source ETag) are deleted when the source lacks them, never an object the
//! receiver wrote itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

use super::{Lag, Limits, Location, SyncReport, now_s};
use crate::Failure;
use crate::aws::failure;

/// The user metadata key (`x-amz-meta-...`) recording the source's ETag on a copy.
pub const SOURCE_ETAG_METADATA: &str = "switchyard-source-etag";
/// One attempt of a GetObject or PutObject of a whole object, in milliseconds.
pub const OBJECT_ATTEMPT_TIMEOUT_MS: u64 = 120_000;
/// Connect (and TLS handshake) to the S3 endpoint.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Attempts of one request (the first included).
pub const ATTEMPTS_MAX: u32 = 3;

/// An object as the listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub size: u64,
    /// Without the quotes.
    pub etag: String,
    pub modified_s: Option<u64>,
}

/// One bucket and prefix, ready to call.
#[derive(Clone)]
pub struct Bucket {
    pub client: Client,
    pub bucket: String,
    pub prefix: String,
}

/// Whether a key (relative to the prefix) is copied: not one with an empty, `.` or `..`
/// segment. Written under the receiver's prefix, such a key reads as a path out of it to
/// anything that normalises paths (an S3-compatible server, a CDN, the app serving the media),
/// so an upload named `../../index.php` in one region would land outside the media elsewhere.
pub fn key_is_plain(relative: &str) -> bool {
    relative
        .split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

impl Bucket {
    pub async fn open(location: &Location) -> Result<Bucket, Failure> {
        let Location::S3 {
            bucket,
            prefix,
            access,
            path_style,
        } = location
        else {
            return Err(Failure::Refused("not an S3 location".into()));
        };
        let sdk = access.sdk_config(None).await;
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .operation_attempt_timeout(Duration::from_millis(OBJECT_ATTEMPT_TIMEOUT_MS))
            .operation_timeout(Duration::from_millis(
                OBJECT_ATTEMPT_TIMEOUT_MS * u64::from(ATTEMPTS_MAX),
            ))
            .build();
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(*path_style)
            .timeout_config(timeouts)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(ATTEMPTS_MAX))
            .build();
        Ok(Bucket {
            client: Client::from_conf(config),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
        })
    }

    /// Every object under the prefix, by key relative to the prefix.
    pub async fn list(&self, objects_max: u64, page_keys: u32) -> Result<BTreeMap<String, Object>, Failure> {
        let mut objects = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .max_keys(i32::try_from(page_keys).unwrap_or(1000))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|error| failure(&format!("S3 ListObjectsV2 of bucket {}", self.bucket), &error))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(relative) = key.strip_prefix(&self.prefix) else {
                    continue;
                };
                // "Folder" markers (keys ending in /) hold no media.
                if relative.is_empty() || relative.ends_with('/') {
                    continue;
                }
                if !key_is_plain(relative) {
                    tracing::warn!(bucket = %self.bucket, key, "media_sync: a key with an empty, '.' or '..' segment is not copied");
                    continue;
                }
                objects.insert(
                    relative.to_string(),
                    Object {
                        size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                        etag: unquote(object.e_tag().unwrap_or_default()),
                        modified_s: object.last_modified().and_then(|t| u64::try_from(t.secs()).ok()),
                    },
                );
                if objects.len() as u64 > objects_max {
                    return Err(Failure::Retryable(format!(
                        "bucket {} holds more than {objects_max} objects under '{}' (objects_listed_max); raise objects_listed_max",
                        self.bucket, self.prefix
                    )));
                }
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) if !next.is_empty() => token = Some(next.to_string()),
                // More to list, and no way to ask for it: a partial listing would read as
                // objects deleted at the source (and feed deletions), so it is an error.
                (Some(true), _) => {
                    return Err(Failure::Retryable(format!(
                        "S3 ListObjectsV2 of bucket {} under '{}': a page says IsTruncated=true without a NextContinuationToken after {} objects; the listing is incomplete, so nothing is decided on it (an S3-compatible service that pages differently? set list_page_keys)",
                        self.bucket,
                        self.prefix,
                        objects.len()
                    )));
                }
                _ => return Ok(objects),
            }
        }
    }

    /// HeadObject: (size, ETag, the recorded source ETag, last modified); `None` when the
    /// object is gone (deleted since the listing: not an error of the run).
    async fn head(&self, key: &str) -> Result<Option<(u64, String, Option<String>, Option<u64>)>, Failure> {
        Ok(self.head_encrypted(key).await?.map(|(head, _)| head))
    }

    /// [`Self::head`], and whether the object is encrypted so that its ETag is not the MD5 of
    /// its bytes (SSE-KMS, DSSE-KMS, SSE-C: AWS documents those ETags as not MD5).
    async fn head_encrypted(
        &self,
        key: &str,
    ) -> Result<Option<((u64, String, Option<String>, Option<u64>), bool)>, Failure> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .send()
            .await
        {
            Ok(head) => head,
            Err(error) if crate::aws::error_code(&error) == Some("NotFound") => return Ok(None),
            Err(error) => {
                return Err(failure(
                    &format!("S3 HeadObject {}/{}{key}", self.bucket, self.prefix),
                    &error,
                ));
            }
        };
        let encrypted = head.sse_customer_algorithm().is_some()
            || head
                .server_side_encryption()
                .is_some_and(|sse| sse.as_str().starts_with("aws:kms"));
        Ok(Some((
            (
                u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0),
                unquote(head.e_tag().unwrap_or_default()),
                head.metadata()
                    .and_then(|m| m.get(SOURCE_ETAG_METADATA))
                    .map(|s| unquote(s)),
                head.last_modified().and_then(|t| u64::try_from(t.secs()).ok()),
            ),
            encrypted,
        )))
    }
}

/// Whether the receiver's object counts as the source's (by the listing alone: `None` means
/// "look closer with HeadObject").
pub fn same_by_listing(source: &Object, target: Option<&Object>) -> Option<bool> {
    let target = target?;
    if target.size != source.size {
        // A receiver's own newer object of another size is still left alone below.
        return None;
    }
    if target.etag == source.etag {
        return Some(true);
    }
    None
}

/// With HeadObject's answer: whether the receiver's object is the source's (a copy recording
/// the source's ETag, or the same size and ETag). A newer object the receiver wrote itself is
/// not: it differs ([`written_by_receiver_after`] tells which copy keeps it).
pub fn same_by_head(source: &Object, head: &(u64, String, Option<String>, Option<u64>)) -> bool {
    let (size, etag, recorded, _) = head;
    if let Some(recorded) = recorded {
        return *recorded == source.etag && *size == source.size;
    }
    *size == source.size && *etag == source.etag
}

/// With HeadObject's answer on an object that differs: whether the receiver wrote it itself
/// (no recorded source ETag: not a copy) after the source's version (a newer `LastModified`),
/// which the runbook step's copy into the region taking over keeps (rsync's `--update`).
pub fn written_by_receiver_after(source: &Object, head: &(u64, String, Option<String>, Option<u64>)) -> bool {
    let (_, _, recorded, modified) = head;
    recorded.is_none() && matches!((modified, source.modified_s), (Some(target), Some(source)) if *target > source)
}

/// What the receiver lacks or holds differently, from both listings.
struct Differences {
    /// The source's objects.
    objects: BTreeMap<String, Object>,
    /// The keys the receiver lacks or holds differently.
    differ: Vec<String>,
    /// Of those, the objects the receiver wrote itself after the source's version.
    newer_on_receiver: std::collections::HashSet<String>,
    /// The keys only the receiver holds.
    extra: Vec<String>,
    /// How many objects the receiver holds.
    receiver_count: u64,
}

/// Whether the copy HeadObject shows (`head`) is the `size` bytes written from a source with
/// ETag `source_etag`: the size and the recorded source ETag always; and, for a single-part
/// source, an ETag equal to the source's (both the MD5 of the bytes) — unless the receiver
/// encrypts with SSE-KMS or SSE-C (`encrypted`), whose ETags are not MD5s (nor is the source's
/// ETag one when it is encrypted that way: it then never matches).
pub fn copy_verified(
    size: u64,
    source_etag: &str,
    head: &(u64, String, Option<String>, Option<u64>),
    encrypted: bool,
) -> bool {
    let single_part = !source_etag.contains('-');
    head.0 == size && (encrypted || !single_part || head.1 == source_etag) && head.2.as_deref() == Some(source_etag)
}

/// The keys the receiver lacks or holds differently.
async fn differences(source: &Bucket, target: &Bucket, limits: &Limits) -> Result<Differences, Failure> {
    let (from, to) = tokio::join!(
        source.list(limits.objects_listed_max, limits.list_page_keys),
        target.list(limits.objects_listed_max, limits.list_page_keys)
    );
    let (from, to) = (from?, to?);
    let mut differ = Vec::new();
    let mut newer_on_receiver = std::collections::HashSet::new();
    let mut heads = 0u64;
    for (key, object) in &from {
        match same_by_listing(object, to.get(key)) {
            Some(true) => {}
            Some(false) => differ.push(key.clone()),
            None if !to.contains_key(key) => differ.push(key.clone()),
            None => {
                heads += 1;
                if heads > limits.objects_listed_max {
                    differ.push(key.clone());
                    continue;
                }
                // Gone since the listing: the receiver lacks it.
                match target.head(key).await? {
                    Some(head) if same_by_head(object, &head) => {}
                    Some(head) => {
                        if written_by_receiver_after(object, &head) {
                            newer_on_receiver.insert(key.clone());
                        }
                        differ.push(key.clone());
                    }
                    None => differ.push(key.clone()),
                }
            }
        }
    }
    let extra = to.keys().filter(|key| !from.contains_key(*key)).cloned().collect();
    Ok(Differences {
        receiver_count: to.len() as u64,
        objects: from,
        differ,
        newer_on_receiver,
        extra,
    })
}

pub async fn lag(source: &Location, target: &Location, limits: &Limits) -> Result<Lag, Failure> {
    let (source, target) = (Bucket::open(source).await?, Bucket::open(target).await?);
    let Differences { objects, differ, .. } = differences(&source, &target, limits).await?;
    let now = now_s();
    let mut lag = Lag::default();
    for key in &differ {
        if let Some(object) = objects.get(key) {
            lag.add(key, object.size, object.modified_s, now);
        }
    }
    Ok(lag)
}

/// Copies one object and verifies it; returns its size. The object is held in memory: the
/// GetObject asks for the version listed (`If-Match` its ETag: replaced since, by a larger one,
/// it is not read) and reads at most `bytes_max` (an endpoint that sends more than it listed is
/// cut off), so memory stays within `object_bytes_max` per copy in flight.
async fn copy(
    source: Arc<Bucket>,
    target: Arc<Bucket>,
    key: String,
    expected: Object,
    bytes_max: u64,
) -> Result<u64, Failure> {
    let from_key = format!("{}{key}", source.prefix);
    let to_key = format!("{}{key}", target.prefix);
    let too_big = |bytes: u64| {
        Failure::Retryable(format!(
            "S3 GetObject {}/{from_key}: {bytes} bytes or more, above object_bytes_max = {bytes_max} (the object changed since it was listed at {} bytes?); not copied",
            source.bucket, expected.size
        ))
    };
    let mut get = source.client.get_object().bucket(&source.bucket).key(&from_key);
    if !expected.etag.is_empty() {
        get = get.if_match(format!("\"{}\"", expected.etag));
    }
    let mut got = get
        .send()
        .await
        .map_err(|error| failure(&format!("S3 GetObject {}/{from_key}", source.bucket), &error))?;
    if let Some(declared) = got.content_length().and_then(|n| u64::try_from(n).ok())
        && declared > bytes_max
    {
        return Err(too_big(declared));
    }
    let source_etag = unquote(got.e_tag().unwrap_or(expected.etag.as_str()));
    let mut metadata: HashMap<String, String> = got.metadata().cloned().unwrap_or_default();
    metadata.insert(SOURCE_ETAG_METADATA.into(), source_etag.clone());
    let (content_type, cache_control, disposition, encoding) = (
        got.content_type().map(String::from),
        got.cache_control().map(String::from),
        got.content_disposition().map(String::from),
        got.content_encoding().map(String::from),
    );
    let mut bytes = Vec::with_capacity(usize::try_from(expected.size.min(bytes_max)).unwrap_or(0));
    while let Some(chunk) = got.body.next().await {
        let chunk = chunk.map_err(|error| {
            Failure::Retryable(format!(
                "S3 GetObject {}/{from_key}: reading the body: {error}",
                source.bucket
            ))
        })?;
        let total = (bytes.len() as u64).saturating_add(chunk.len() as u64);
        if total > bytes_max {
            return Err(too_big(total));
        }
        bytes.extend_from_slice(&chunk);
    }
    let size = bytes.len() as u64;
    target
        .client
        .put_object()
        .bucket(&target.bucket)
        .key(&to_key)
        .body(ByteStream::from(bytes))
        .set_content_type(content_type)
        .set_cache_control(cache_control)
        .set_content_disposition(disposition)
        .set_content_encoding(encoding)
        .set_metadata(Some(metadata))
        .send()
        .await
        .map_err(|error| failure(&format!("S3 PutObject {}/{to_key}", target.bucket), &error))?;
    let (head, encrypted) = target.head_encrypted(&key).await?.ok_or_else(|| {
        Failure::Retryable(format!(
            "S3 copy of {key} not verified: {}/{to_key} is missing right after PutObject",
            target.bucket
        ))
    })?;
    let verified = copy_verified(size, &source_etag, &head, encrypted);
    if !verified {
        return Err(Failure::Retryable(format!(
            "S3 copy of {key} not verified: {}/{to_key} holds {} bytes, ETag {}, recorded source ETag {:?}; expected {size} bytes and ETag {source_etag}",
            target.bucket, head.0, head.1, head.2
        )));
    }
    Ok(size)
}

/// Copies what `target` lacks of `source`. `delete`: `None`, or `Some(delete_fraction_max)`
/// (see [`super::deletions_refused`]): deletions that bound refuses fail the run after the
/// copies, and nothing is deleted. `keep_newer`: an object the receiver wrote itself after the
/// source's version is not replaced (and stays in the "still differ" count).
pub async fn sync(
    source: &Location,
    target: &Location,
    delete: Option<f64>,
    keep_newer: bool,
    limits: &Limits,
) -> Result<SyncReport, Failure> {
    let (source, target) = (
        Arc::new(Bucket::open(source).await?),
        Arc::new(Bucket::open(target).await?),
    );
    let Differences {
        objects,
        differ,
        newer_on_receiver,
        extra,
        receiver_count,
    } = differences(&source, &target, limits).await?;
    let mut report = SyncReport::default();
    let mut queue = Vec::new();
    let mut bytes = 0u64;
    let mut too_big = Vec::new();
    let mut kept_newer = 0u64;
    for key in differ {
        let Some(object) = objects.get(&key) else { continue };
        if keep_newer && newer_on_receiver.contains(&key) {
            kept_newer += 1;
            continue;
        }
        if object.size > limits.object_bytes_max {
            too_big.push(format!("{key} ({} bytes)", object.size));
            continue;
        }
        if queue.len() as u64 >= limits.objects_per_run_max {
            report.limited = Some(format!("objects_per_run_max = {}", limits.objects_per_run_max));
            break;
        }
        if bytes.saturating_add(object.size) > limits.bytes_per_run_max {
            report.limited = Some(format!("bytes_per_run_max = {}", limits.bytes_per_run_max));
            break;
        }
        bytes += object.size;
        queue.push((key, object.clone()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut first_error = None;
    let mut pending = queue.into_iter();
    loop {
        while tasks.len() < limits.concurrency as usize {
            let Some((key, object)) = pending.next() else { break };
            tasks.spawn(copy(
                Arc::clone(&source),
                Arc::clone(&target),
                key,
                object,
                limits.object_bytes_max,
            ));
        }
        let Some(done) = tasks.join_next().await else { break };
        match done {
            Ok(Ok(size)) => {
                report.copied_objects += 1;
                report.copied_bytes += size;
            }
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(Failure::Retryable(format!("an S3 copy task failed: {error}")));
            }
        }
    }
    // Deleting what only the receiver holds: after every copy worked, never in a run a limit
    // cut short, and within the same objects_per_run_max as the copies. Only copies Switchyard
    // made (they carry the source's ETag in their metadata) go: the source lacking one means it
    // was deleted there. An object the receiver's app wrote itself (an upload made there while
    // it was active, during an outage, not yet brought back) is not a deletion to propagate:
    // after a failover or failback the copy direction flips, and deleting it would lose it.
    let mut kept_own = 0u64;
    let mut refused = None;
    if let Some(fraction_max) = delete.filter(|_| report.limited.is_none() && first_error.is_none()) {
        // First the copies that may go (HeadObject each: only copies carry the recorded
        // source ETag), then the safety bound on all of them together, then the deletions.
        let mut to_delete = Vec::new();
        let mut heads = 0u64;
        for key in extra {
            heads += 1;
            if heads > limits.objects_listed_max {
                report.limited = Some(format!("objects_listed_max = {}", limits.objects_listed_max));
                break;
            }
            let Some((_, _, recorded, _)) = target.head(&key).await? else {
                continue; // gone already
            };
            if recorded.is_none() {
                kept_own += 1;
                continue;
            }
            to_delete.push(key);
        }
        refused = super::deletions_refused(
            objects.keys().map(String::as_str),
            receiver_count,
            &to_delete,
            fraction_max,
        );
        let budget = limits.objects_per_run_max.saturating_sub(report.copied_objects);
        for key in to_delete.into_iter().filter(|_| refused.is_none()) {
            if report.deleted_objects >= budget {
                report.limited = Some(format!("objects_per_run_max = {}", limits.objects_per_run_max));
                break;
            }
            let full = format!("{}{key}", target.prefix);
            target
                .client
                .delete_object()
                .bucket(&target.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|error| failure(&format!("S3 DeleteObject {}/{full}", target.bucket), &error))?;
            report.deleted_objects += 1;
        }
    }
    if let Some(error) = first_error {
        return Err(match error {
            Failure::Retryable(m) => Failure::Retryable(format!("copied {} objects, then: {m}", report.copied_objects)),
            other => other,
        });
    }
    let mut notes = Vec::new();
    if !too_big.is_empty() {
        notes.push(format!(
            "not copied, larger than object_bytes_max = {}: {}",
            limits.object_bytes_max,
            too_big.join(", ")
        ));
    }
    if kept_newer > 0 {
        notes.push(format!(
            "kept {kept_newer} objects the receiver wrote itself after the source's version (newer; counted as still differing): a copy from the active region (media sync) replaces them"
        ));
    }
    if kept_own > 0 {
        notes.push(format!(
            "kept {kept_own} objects the receiver wrote itself (not copies Switchyard made): delete removes only copies"
        ));
    }
    if !notes.is_empty() {
        report.note = Some(notes.join("; "));
    }
    let Differences { objects, differ, .. } = differences(&source, &target, limits).await?;
    let now = now_s();
    for key in &differ {
        if let Some(object) = objects.get(key) {
            report.remaining.add(key, object.size, object.modified_s, now);
        }
    }
    if let Some(why) = refused {
        return Err(Failure::Refused(format!(
            "copied {} objects ({} bytes), {} still differ; {why}",
            report.copied_objects, report.copied_bytes, report.remaining.objects
        )));
    }
    Ok(report)
}
