use super::rsync::{
    Endpoint, Item, Listing, MAX_DELETE_NOTE, Options, Transport, exit_failure, parse_time, ssh_command, ssh_safe_path,
    within_limits,
};
use super::*;

#[test]
fn rsync_locations() {
    let local = Endpoint::parse("/srv/media").expect("local");
    assert_eq!(local.text, "/srv/media/");
    assert_eq!(local.transport, Transport::Local);
    assert_eq!(
        Endpoint::parse("deploy@web-eu:/var/www/pub/media/").map(|e| e.transport),
        Ok(Transport::Ssh)
    );
    assert_eq!(
        Endpoint::parse("rsync://10.0.0.5:8730/media/catalog").map(|e| e.transport),
        Ok(Transport::Daemon)
    );
    assert_eq!(
        Endpoint::parse("host::media/x").map(|e| e.transport),
        Ok(Transport::Daemon)
    );
    for bad in ["media/", "-e sh", "rsync://host", "rsync:///module", ":/srv"] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn rsync_times_are_utc_unix_seconds() {
    assert_eq!(parse_time("1970/01/01-00:00:00"), Some(0));
    assert_eq!(parse_time("2000/03/01-00:00:01"), Some(951_868_801));
    assert_eq!(parse_time("2026/12/02-20:40:00"), Some(1_796_244_000));
    assert_eq!(parse_time("2026/13/02-20:40:00"), None);
    assert_eq!(parse_time("garbage"), None);
}

#[test]
fn the_listing_counts_files_to_send_and_their_bytes() {
    let mut listing = Listing::default();
    for line in [
        "cd+++++++++|4096|2026/12/02-20:00:00|catalog/",
        ">f+++++++++|1000|2026/12/02-20:00:00|catalog/a.jpg",
        "<f.st......|2,500|2026/12/02-19:00:00|catalog/b|c.jpg",
        ".f...p.....|10|2026/12/02-19:00:00|catalog/attrs-only.jpg",
        "*deleting  |0|1970/01/01-00:00:00|old.jpg",
        "",
        "Number of files: 5 (reg: 4, dir: 1)",
        "Total transferred file size: 3,500 bytes",
    ] {
        listing.line(line);
    }
    assert_eq!(listing.files.len(), 2);
    assert_eq!(listing.files[1].path, "catalog/b|c.jpg");
    assert_eq!(listing.files[1].bytes, 2500);
    assert_eq!(listing.deletions, 1);
    let lag = listing.lag(parse_time("2026/12/02-20:00:00").expect("time"));
    assert_eq!(lag.objects, 2);
    assert_eq!(lag.bytes, 3500);
    assert_eq!(lag.oldest_age_seconds, Some(3600));
    assert_eq!(lag.sample, vec!["catalog/a.jpg", "catalog/b|c.jpg"]);
}

fn limits(objects: u64, bytes: u64) -> Limits {
    Limits {
        run_timeout_ms: 1_000,
        objects_per_run_max: objects,
        bytes_per_run_max: bytes,
        object_bytes_max: bytes,
        concurrency: 1,
        objects_listed_max: 100,
        list_page_keys: 1000,
    }
}

#[test]
fn one_run_stays_within_its_limits() {
    let files: Vec<Item> = (0..5)
        .map(|i| Item {
            path: format!("f{i}"),
            bytes: 100,
            modified_s: None,
        })
        .collect();
    let (chosen, limited) = within_limits(&files, &limits(10, 1_000));
    assert_eq!((chosen.len(), limited), (5, None));
    let (chosen, limited) = within_limits(&files, &limits(2, 1_000));
    assert_eq!(chosen.len(), 2);
    assert_eq!(limited.as_deref(), Some("objects_per_run_max = 2"));
    let (chosen, limited) = within_limits(&files, &limits(10, 250));
    assert_eq!(chosen.len(), 2);
    assert_eq!(limited.as_deref(), Some("bytes_per_run_max = 250"));
}

#[test]
fn rsync_exit_codes() {
    assert_eq!(exit_failure(Some(0), ""), Ok(None));
    assert!(matches!(exit_failure(Some(24), ""), Ok(Some(_))));
    assert_eq!(exit_failure(Some(25), ""), Ok(Some(MAX_DELETE_NOTE.to_string())));
    assert!(matches!(exit_failure(Some(3), "x"), Err(Failure::Refused(m)) if m.contains("rsync exit 3")));
    assert!(matches!(
        exit_failure(Some(10), "@ERROR: connection refused"),
        Err(Failure::Retryable(m)) if m.contains("socket I/O") && m.contains("connection refused")
    ));
    assert!(matches!(exit_failure(Some(255), ""), Err(Failure::Retryable(m)) if m.contains("SSH")));
    assert!(matches!(exit_failure(None, ""), Err(Failure::Retryable(m)) if m.contains("signal")));
}

#[test]
fn s3_urls() {
    assert_eq!(
        parse_s3_url("s3://shop-media"),
        Some(("shop-media".into(), String::new()))
    );
    assert_eq!(
        parse_s3_url("s3://shop-media/pub/media"),
        Some(("shop-media".into(), "pub/media/".into()))
    );
    for bad in ["shop-media", "s3://Shop", "s3://ab", "s3://x-/a", "s3://bucket//a"] {
        assert_eq!(parse_s3_url(bad), None, "{bad}");
    }
}

#[test]
fn lag_keeps_the_oldest_age_and_a_short_sample() {
    let mut lag = Lag::default();
    for i in 0..8 {
        lag.add(&format!("f{i}"), 10, Some(1_000 - i * 10), 1_000);
    }
    assert_eq!(lag.objects, 8);
    assert_eq!(lag.bytes, 80);
    assert_eq!(lag.oldest_age_seconds, Some(70));
    assert_eq!(lag.sample.len(), MISSING_SAMPLE_MAX);
}

#[cfg(feature = "aws")]
#[test]
fn s3_objects_compare_by_size_etag_and_the_recorded_source() {
    use super::s3::{Object, same_by_head, same_by_listing, written_by_receiver_after};
    let source = Object {
        size: 10,
        etag: "abc".into(),
        modified_s: Some(100),
    };
    assert_eq!(same_by_listing(&source, None), None);
    assert_eq!(same_by_listing(&source, Some(&source)), Some(true));
    // A copy of a multipart source: another ETag, the source's recorded.
    assert!(same_by_head(
        &source,
        &(10, "zzz-2".into(), Some("abc".into()), Some(50))
    ));
    // An older copy of another version: copy again.
    assert!(!same_by_head(
        &source,
        &(10, "old".into(), Some("old".into()), Some(200))
    ));
    // The receiver's own newer object differs (counted); only the runbook step keeps it.
    let own_newer = (7, "own".into(), None, Some(200));
    assert!(!same_by_head(&source, &own_newer));
    assert!(written_by_receiver_after(&source, &own_newer));
    // The receiver's own older object: the source's is newer.
    let own_older = (7, "own".into(), None, Some(50));
    assert!(!same_by_head(&source, &own_older));
    assert!(!written_by_receiver_after(&source, &own_older));
    // A copy Switchyard made, of an older version, is never "the receiver's own".
    assert!(!written_by_receiver_after(
        &source,
        &(7, "old".into(), Some("old".into()), Some(200))
    ));
}

#[test]
fn the_ssh_command_carries_the_port_key_and_known_hosts() {
    assert_eq!(
        ssh_command(&Options::default()),
        "ssh -o BatchMode=yes -o ConnectTimeout=10"
    );
    let options = Options {
        ssh_identity_file: Some("/etc/switchyard/media key".into()),
        ssh_port: Some(2222),
        ssh_known_hosts_file: Some("/etc/switchyard/known_hosts".into()),
        password_file: None,
        bwlimit_kib: None,
        keep_newer: false,
    };
    assert_eq!(
        ssh_command(&options),
        "ssh -o BatchMode=yes -o ConnectTimeout=10 -p 2222 -i '/etc/switchyard/media key' -o IdentitiesOnly=yes \
         -o 'UserKnownHostsFile=/etc/switchyard/known_hosts' -o StrictHostKeyChecking=yes"
    );
    assert!(ssh_safe_path(std::path::Path::new("/etc/switchyard/media key")));
    assert!(!ssh_safe_path(std::path::Path::new("/tmp/it's")));
    assert!(!ssh_safe_path(std::path::Path::new("/tmp/a\nb")));
}

fn step(on_failover: OnFailover) -> MediaSync {
    let missing = std::env::temp_dir().join(format!("switchyard-no-such-media-{}", std::process::id()));
    MediaSync {
        name: "media".into(),
        locations: [
            (
                "us".to_string(),
                Location::Rsync(Endpoint::parse(&missing.display().to_string()).expect("local")),
            ),
            (
                "eu".to_string(),
                Location::Rsync(Endpoint::parse("rsync://127.0.0.1:1/eu/").expect("daemon")),
            ),
        ]
        .into_iter()
        .collect(),
        delete: false,
        delete_fraction_max: DELETE_FRACTION_MAX_DEFAULT,
        on_failover,
        lag_interval_ms: LAG_INTERVAL_MS_DEFAULT,
        limits: limits(10, 1_000),
        rsync: Options::default(),
    }
}

fn media_order(kind: &str) -> Order {
    Order {
        generation: 7,
        kind: kind.into(),
        from: Some("us".into()),
        to: "eu".into(),
        serving: vec!["eu".into()],
        reason: "test".into(),
        force_data_loss: false,
    }
}

#[tokio::test]
async fn on_failover_covers_retries_and_roll_forwards_but_never_planned_moves() {
    // The copy always fails here (no source folder, nothing listening on port 1).
    for kind in ["failover", "retry", "roll_forward"] {
        let outcome = step(OnFailover::BestEffort).run(&media_order(kind)).await;
        assert!(
            outcome
                .as_ref()
                .is_ok_and(|text| text.starts_with("NOT copied us -> eu")),
            "{kind}: {outcome:?}"
        );
        let outcome = step(OnFailover::Skip).run(&media_order(kind)).await;
        assert!(
            outcome
                .as_ref()
                .is_ok_and(|text| text.contains("on_failover = \"skip\"")),
            "{kind}: {outcome:?}"
        );
        assert!(
            step(OnFailover::Required).run(&media_order(kind)).await.is_err(),
            "{kind}"
        );
    }
    for kind in ["switchover", "failback"] {
        for on_failover in [OnFailover::BestEffort, OnFailover::Skip, OnFailover::Required] {
            assert!(
                step(on_failover).run(&media_order(kind)).await.is_err(),
                "{kind} with {on_failover:?} must copy strictly"
            );
        }
    }
}

#[test]
fn the_listing_knows_when_the_sender_listed_folders_only() {
    let parse = |lines: &[&str]| {
        let mut listing = Listing::default();
        for line in lines {
            listing.line(line);
        }
        listing
    };
    let empty = parse(&[
        "*deleting   x",
        "Number of files: 1 (dir: 1)",
        "Number of deleted files: 1 (reg: 1)",
    ]);
    assert_eq!(empty.source_entries, Some((1, 1)));
    assert!(empty.source_is_empty(), "an empty (unmounted) folder");
    let folders = parse(&["Number of files: 3 (dir: 3)"]);
    assert!(folders.source_is_empty(), "folders, no file");
    let full = parse(&["Number of files: 1,204 (reg: 1,100, dir: 104)"]);
    assert_eq!(full.source_entries, Some((1204, 104)));
    assert!(!full.source_is_empty());
    let links = parse(&["Number of files: 2 (link: 1, dir: 1)"]);
    assert!(!links.source_is_empty());
    assert!(
        !Listing::default().source_is_empty(),
        "no --stats: not known to be empty"
    );
}

#[cfg(feature = "aws")]
/// Serves `app` as an S3 stand-in; returns the folder holding its credentials file (keep it)
/// and the location of a bucket there (path style, prefix `p/`).
async fn serve_s3(app: axum::Router) -> (tempfile::TempDir, impl Fn(&str) -> Location) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("credentials");
    let location = move |bucket: &str| Location::S3 {
        bucket: bucket.into(),
        prefix: "p/".into(),
        access: crate::aws::Access {
            region: "us-east-1".into(),
            profile: None,
            endpoint_url: Some(url.clone()),
            credentials_file: Some(credentials.clone()),
        },
        path_style: true,
    };
    (dir, location)
}

/// An S3 endpoint whose source object is far larger than its listing says (replaced after the
/// listing, or a lying endpoint): the copy must not read it into memory, nor write it.
#[cfg(feature = "aws")]
#[tokio::test]
async fn an_s3_object_larger_than_listed_is_neither_read_whole_nor_copied() {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    #[derive(Default)]
    struct Seen {
        if_match: Vec<String>,
        puts: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let seen = Arc::clone(&state);
        async move {
            let path = uri.path().trim_end_matches('/').to_string();
            let listing = |bucket: &str, contents: &str| {
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"#
                )
            };
            match (method.as_str(), path.as_str()) {
                ("GET", "/src") => (
                    StatusCode::OK,
                    listing(
                        "src",
                        r#"<Contents><Key>p/a.jpg</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"abc"</ETag><Size>10</Size></Contents>"#,
                    ),
                )
                    .into_response(),
                ("GET", "/dst") => (StatusCode::OK, listing("dst", "")).into_response(),
                ("GET", "/src/p/a.jpg") => {
                    if let Some(value) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
                        seen.lock().expect("lock").if_match.push(value.to_string());
                    }
                    (StatusCode::OK, [("etag", "\"abc\"")], vec![b'x'; 2 * 1024 * 1024]).into_response()
                }
                ("PUT", _) => {
                    seen.lock().expect("lock").puts += 1;
                    (StatusCode::OK, [("etag", "\"def\"")]).into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let (_dir, location) = serve_s3(app).await;
    let mut limits = limits(10, 1_000_000);
    limits.object_bytes_max = 1_000;
    let error = match super::s3::sync(&location("src"), &location("dst"), None, false, &limits).await {
        Ok(report) => panic!("copied an object above object_bytes_max: {report:?}"),
        Err(Failure::Retryable(error)) => error,
        Err(other) => panic!("expected a retryable failure, got {other:?}"),
    };
    assert!(error.contains("above object_bytes_max = 1000"), "{error}");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.puts, 0, "nothing written");
    assert_eq!(seen.if_match, vec!["\"abc\"".to_string()], "the listed version only");
}

#[cfg(feature = "aws")]
#[test]
fn s3_keys_that_climb_out_of_the_prefix_are_not_copied() {
    use super::s3::key_is_plain;
    for plain in [
        "a.jpg",
        "catalog/product/a/b/ab-shoe.jpg",
        "2026/12/upload with space.pdf",
        "a..b/.c",
    ] {
        assert!(key_is_plain(plain), "{plain}");
    }
    for climbing in [
        "../../index.php",
        "catalog/../../../x",
        "./a",
        "a//b",
        "/etc/passwd",
        "a/.",
        "a/..",
    ] {
        assert!(!key_is_plain(climbing), "{climbing}");
    }
}

#[test]
fn a_listing_counts_every_file_but_keeps_only_what_a_run_may_copy() {
    // The lag of a tree of a million files needs no list of them; a run needs one file more
    // than it may copy (to know that it stops at the limit).
    let mut listing = Listing {
        keep_max: Some(2),
        ..Listing::default()
    };
    for i in 0..1000u64 {
        listing.line(&format!(">f+++++++++|10|2026/12/02-{:02}:00:00|f{i}.jpg", 10 + i % 10));
    }
    assert_eq!(listing.files.len(), 2, "only what was asked is kept");
    let lag = listing.lag(parse_time("2026/12/02-20:00:00").expect("time"));
    assert_eq!((lag.objects, lag.bytes), (1000, 10_000));
    assert_eq!(lag.oldest_age_seconds, Some(10 * 3600));
    assert_eq!(lag.sample, vec!["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg", "f4.jpg"]);
    let (chosen, limited) = within_limits(&listing.files, &limits(1, 1_000));
    assert_eq!(chosen.len(), 1);
    assert_eq!(limited.as_deref(), Some("objects_per_run_max = 1"));
    let nothing_kept = Listing {
        keep_max: Some(0),
        ..Listing::default()
    };
    assert!(nothing_kept.files.is_empty());
}

/// An object the receiver listed but deleted before its HeadObject (an app deleting an upload
/// meanwhile) is one the receiver lacks, not a failed measurement.
#[cfg(feature = "aws")]
#[tokio::test]
async fn an_s3_object_gone_between_listing_and_head_counts_as_missing() {
    use axum::http::{Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    let app = axum::Router::new().fallback(|method: Method, uri: Uri| async move {
        let path = uri.path().trim_end_matches('/').to_string();
        let listing = |bucket: &str, etag: &str| {
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>p/a.jpg</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"{etag}"</ETag><Size>10</Size></Contents></ListBucketResult>"#
            )
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/src") => (StatusCode::OK, listing("src", "abc")).into_response(),
            ("GET", "/dst") => (StatusCode::OK, listing("dst", "old")).into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    });
    let (_dir, location) = serve_s3(app).await;
    let lag = super::s3::lag(&location("src"), &location("dst"), &limits(10, 1_000_000))
        .await
        .expect("a lag, not a failed HeadObject");
    assert_eq!((lag.objects, lag.bytes), (1, 10));
    assert_eq!(lag.sample, vec!["a.jpg"]);
}

#[test]
fn only_entries_both_sides_held_are_deleted_and_the_rest_protected_with_their_folders() {
    let synced: std::collections::HashSet<String> = ["gone.jpg", "old/", "old/h.jpg", "keep/"]
        .into_iter()
        .map(String::from)
        .collect();
    // rsync lists a folder's entries before the folder.
    let deleting: Vec<String> = ["old/h.jpg", "old/upload.jpg", "old/", "gone.jpg", "mine.jpg"]
        .into_iter()
        .map(String::from)
        .collect();
    let (delete, rules) = rsync::split_deletions(&deleting, &synced);
    assert_eq!(delete, ["old/h.jpg", "gone.jpg"], "old/ holds a kept upload: it stays");
    // Only what may go is named (risk); everything else is protected, so an entry that
    // appears on the receiver after the dry run is protected too.
    assert_eq!(rules, [b"R /old/h.jpg" as &[u8], b"R /gone.jpg", b"P *"]);
    let (delete, rules) = rsync::split_deletions(&deleting, &Default::default());
    assert!(
        delete.is_empty() && rules.is_empty(),
        "nothing recorded: nothing deleted"
    );
    // A name rsync printed escaped is named by its own bytes; one too long for any rule is
    // kept (and the folder holding it), not a reason to delete nothing else.
    let long = format!("d/{}", "x".repeat(rsync::RULE_PATTERN_BYTES_MAX));
    let escaped: Vec<String> = vec![
        "nl\\#012x".to_string(),
        "e/\\#303\\#251.jpg".to_string(),
        "e/".to_string(),
        long,
        "d/".to_string(),
    ];
    let synced: std::collections::HashSet<String> = escaped.iter().cloned().collect();
    assert_eq!(
        rsync::split_deletions(&escaped, &synced),
        (
            vec![
                "nl\\#012x".to_string(),
                "e/\\#303\\#251.jpg".to_string(),
                "e/".to_string()
            ],
            vec![
                b"R /nl\nx".to_vec(),
                "R /e/\u{e9}.jpg".as_bytes().to_vec(),
                b"R /e/".to_vec(),
                b"P *".to_vec()
            ]
        )
    );
}

/// The rules of a run with `delete = true` applied by the real rsync: what the dry run listed
/// as the receiver's own stays, and so does an upload that arrived after the dry run.
#[test]
fn an_upload_arriving_after_the_dry_run_is_not_deleted() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    for folder in [&source, &target, &target.join("old")] {
        std::fs::create_dir_all(folder).expect("folder");
    }
    std::fs::write(source.join("a.jpg"), "a").expect("write");
    for name in [
        "a.jpg",
        "gone.jpg",
        "mine.jpg",
        "old/h.jpg",
        "we ird*[1].jpg",
        "we irdX1.jpg",
        "caf\u{e9}*.jpg",
        "caf\u{e9}X.jpg",
    ] {
        std::fs::write(target.join(name), name).expect("write");
    }
    // rsync prints a non-ASCII byte escaped (`\#ooo`); the rule names the bytes themselves.
    let cafe = "caf\\#303\\#251*.jpg";
    let synced: std::collections::HashSet<String> = ["a.jpg", "gone.jpg", "old/", "old/h.jpg", "we ird*[1].jpg", cafe]
        .into_iter()
        .map(String::from)
        .collect();
    let deleting: Vec<String> = [
        "gone.jpg",
        "mine.jpg",
        "old/h.jpg",
        "old/",
        "we ird*[1].jpg",
        "we irdX1.jpg",
        cafe,
        "caf\\#303\\#251X.jpg",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let (delete, rules) = rsync::split_deletions(&deleting, &synced);
    assert_eq!(delete.len(), 5, "{delete:?}");
    // Uploaded on the receiver while the copy ran: not in the dry run's listing.
    std::fs::write(target.join("late.jpg"), "late").expect("write");
    std::fs::write(target.join("old/late.jpg"), "late").expect("write");
    let rules_file = root.path().join("rules");
    std::fs::write(&rules_file, rsync::rules_file(&rules)).expect("write");
    let status = std::process::Command::new("rsync")
        .arg("-rlptu")
        .arg("--delete")
        .arg("--from0")
        .arg(format!("--filter=merge {}", rules_file.display()))
        .arg(format!("{}/", source.display()))
        .arg(format!("{}/", target.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("rsync");
    assert!(status.success(), "{status}");
    let mut left: Vec<String> = walk(&target);
    left.sort();
    assert_eq!(
        left,
        [
            "a.jpg",
            "caf\u{e9}X.jpg",
            "late.jpg",
            "mine.jpg",
            "old/",
            "old/late.jpg",
            "we irdX1.jpg"
        ],
        "only the recorded entries the sender lacks are gone"
    );
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path.strip_prefix(root).expect("under root").display().to_string();
            if path.is_dir() {
                out.push(format!("{name}/"));
                stack.push(path);
            } else {
                out.push(name);
            }
        }
    }
    out
}

/// Each side's record kept in its `record_url` folder (outside the served one).
fn recorded(path: &std::path::Path, records: &std::path::Path) -> Endpoint {
    std::fs::create_dir_all(records).expect("record folder");
    Endpoint::parse(&path.display().to_string())
        .expect("endpoint")
        .with_record(&records.display().to_string(), "media")
        .expect("record_url")
}

/// A record that is no record (an upload of that name, a folder, a record cut short) deletes
/// nothing but stops no copy; the complete copy writes the record again.
#[tokio::test]
async fn a_planted_record_on_the_receiver_stops_no_copy() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    for folder in [&source, &target] {
        std::fs::create_dir_all(folder).expect("folder");
    }
    std::fs::write(source.join("new.jpg"), "new").expect("write");
    std::fs::write(target.join("mine.jpg"), "mine").expect("write");
    let (source_end, target_end) = (
        recorded(&source, &root.path().join("source-records")),
        recorded(&target, &root.path().join("target-records")),
    );
    let record = root.path().join("target-records/media.switchyard-media-synced");
    std::fs::write(&record, "uploaded by a user\n").expect("write");
    let report = rsync::sync(
        &source_end,
        &target_end,
        Some(DELETE_FRACTION_MAX_DEFAULT),
        &Options::default(),
        &limits(100, 1 << 20),
    )
    .await
    .expect("the copy runs");
    assert_eq!(report.copied_objects, 1, "{report:?}");
    assert!(target.join("new.jpg").exists() && target.join("mine.jpg").exists());
    assert!(
        report
            .note
            .as_deref()
            .is_some_and(|note| note.contains("nothing deleted")),
        "{report:?}"
    );
    let record = std::fs::read_to_string(&record).expect("record");
    assert!(
        record.starts_with("# switchyard media_sync v2") && record.contains("|new.jpg\n"),
        "{record}"
    );
    assert!(!target.join(rsync::SYNCED_LIST_NAME).exists() && !source.join(rsync::SYNCED_LIST_NAME).exists());
}

/// The record inside the served folder published every synced path (and WooCommerce's
/// random download names): the first run with record_url moves it out, keeping what it says,
/// so the deletions it allows still happen.
#[tokio::test]
async fn the_record_moves_out_of_the_served_folder_and_keeps_its_meaning() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    write_files(&source, &["a.jpg".to_string(), "gone.jpg".to_string()]);
    write_files(&target, &["mine.jpg".to_string()]);
    // As an older version left it: both sides synced, the record at the top of both folders.
    let status = std::process::Command::new("rsync")
        .args([
            "-rlpt",
            &format!("{}/", source.display()),
            &format!("{}/", target.display()),
        ])
        .status()
        .expect("rsync");
    assert!(status.success());
    let state = |name: &str| {
        let modified = std::fs::metadata(source.join(name))
            .expect("meta")
            .modified()
            .expect("mtime");
        let seconds = modified.duration_since(std::time::UNIX_EPOCH).expect("epoch").as_secs();
        let days = seconds / 86_400;
        // Civil date from days (Howard Hinnant's algorithm), as rsync prints %M in UTC.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let rest = seconds % 86_400;
        format!(
            "f:{}:{year}/{month:02}/{day:02}-{:02}:{:02}:{:02}",
            name.len(),
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        )
    };
    let old_record = format!(
        "# switchyard media_sync v2: entries both sides held after the last complete sync (STATE|PATH)\n{}|a.jpg\n{}|gone.jpg\n",
        state("a.jpg"),
        state("gone.jpg")
    );
    for side in [&source, &target] {
        std::fs::write(side.join(rsync::SYNCED_LIST_NAME), &old_record).expect("old record");
    }
    std::fs::remove_file(source.join("gone.jpg")).expect("deleted at the source");
    let (source_end, target_end) = (
        recorded(&source, &root.path().join("source-records")),
        recorded(&target, &root.path().join("target-records")),
    );
    let report = rsync::sync(
        &source_end,
        &target_end,
        Some(DELETE_FRACTION_MAX_DEFAULT),
        &Options::default(),
        &limits(100, 1 << 20),
    )
    .await
    .expect("the copy runs");
    assert_eq!(
        report.deleted_objects, 1,
        "the old record's entries still count: {report:?}"
    );
    assert!(!target.join("gone.jpg").exists() && target.join("mine.jpg").exists());
    for side in [&source, &target] {
        assert!(
            !side.join(rsync::SYNCED_LIST_NAME).exists(),
            "removed from {}",
            side.display()
        );
    }
    let moved = std::fs::read_to_string(root.path().join("target-records/media.switchyard-media-synced"))
        .expect("the record in record_url");
    assert!(moved.contains("|a.jpg\n") && !moved.contains("gone.jpg"), "{moved}");
}

#[test]
fn a_record_url_is_outside_the_served_folder_and_on_the_same_side() {
    let with = |url: &str, record: &str| Endpoint::parse(url).expect("url").with_record(record, "media files");
    assert_eq!(
        with("/var/www/pub/media/", "/var/lib/switchyard/media")
            .expect("ok")
            .record
            .as_deref(),
        Some("/var/lib/switchyard/media/media_files.switchyard-media-synced")
    );
    assert!(with("deploy@web-eu:/srv/media/", "deploy@web-eu:/var/lib/sy/").is_ok());
    assert!(with("rsync://10.0.0.5/media/", "rsync://10.0.0.5/state/").is_ok());
    for (url, record) in [
        ("/var/www/pub/media/", "/var/www/pub/media/.state/"),
        ("/var/www/pub/media/", "/var/www/pub/media"),
        ("/var/www/pub/media/", "deploy@web-eu:/var/lib/sy/"),
        ("deploy@web-eu:/srv/media/", "deploy@web-us:/var/lib/sy/"),
        ("rsync://10.0.0.5/media/", "rsync://10.0.0.6/state/"),
        ("rsync://10.0.0.5/media/", "rsync://10.0.0.5/media/state/"),
    ] {
        assert!(with(url, record).is_err(), "{url} {record}");
    }
}

#[test]
fn rule_patterns_match_exactly_one_path() {
    let pattern = |path: &str| rsync::exact_rule_pattern(path).map(|p| String::from_utf8_lossy(&p).into_owned());
    assert_eq!(pattern("a/b c.jpg").as_deref(), Some("/a/b c.jpg"));
    assert_eq!(pattern("dir/").as_deref(), Some("/dir/"));
    assert_eq!(pattern("we ird*[1]?.jpg").as_deref(), Some("/we ird\\*\\[1]\\?.jpg"));
    assert_eq!(pattern("back\\slash*.jpg").as_deref(), Some("/back\\\\slash\\*.jpg"));
    assert_eq!(pattern("back\\slash.jpg").as_deref(), Some("/back\\slash.jpg"));
    assert_eq!(pattern("**").as_deref(), Some("/\\*\\*"));
    // Whitespace at either end and a leading `- ` stay in the pattern (rules end at NULs).
    assert_eq!(pattern(" lead.jpg").as_deref(), Some("/ lead.jpg"));
    assert_eq!(pattern("trail.jpg ").as_deref(), Some("/trail.jpg "));
    assert_eq!(pattern("- dash").as_deref(), Some("/- dash"));
    // The bytes rsync printed escaped, back; a literal backslash before `#` too.
    assert_eq!(
        rsync::exact_rule_pattern("nl\\#012x\\#351"),
        Some(b"/nl\nx\xe9".to_vec())
    );
    assert_eq!(pattern("a\\#134#351").as_deref(), Some("/a\\#351"));
    let longest = "x".repeat(rsync::RULE_PATTERN_BYTES_MAX - 1);
    assert!(rsync::exact_rule_pattern(&longest).is_some());
    for unprotectable in [String::new(), format!("{longest}x"), format!("{}*", "x".repeat(4093))] {
        assert_eq!(rsync::exact_rule_pattern(&unprotectable), None, "{unprotectable:?}");
    }
}

#[test]
fn deletion_lines_are_named_and_a_full_listing_collects_every_entry() {
    let mut listing = rsync::Listing {
        collect_names: true,
        ..Default::default()
    };
    for line in [
        "*deleting  |0|1970/01/01-00:00:00|old/h",
        "*deleting  |0|1970/01/01-00:00:00|old/",
        ">f+++++++++|2|2026/12/05-11:54:31|f1",
        "cd+++++++++|4096|2026/12/05-11:54:31|sub/",
        "cd+++++++++|4096|2026/12/05-11:54:31|./",
    ] {
        listing.line(line);
    }
    assert_eq!(listing.deletions, 2);
    assert_eq!(listing.deleting, ["old/h", "old/"]);
    assert_eq!(
        listing.names,
        [
            ("f1".to_string(), "f:2:2026/12/05-11:54:31".to_string()),
            ("sub/".to_string(), "d".to_string())
        ]
    );
    assert_eq!(listing.counted, 1);
}

#[test]
fn only_entries_unchanged_since_the_recorded_copy_may_be_deleted() {
    let map = |entries: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        entries.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect()
    };
    let receiver = map(&[
        ("old.jpg", "f:10:2026/12/01-10:00:00"),
        ("reused.jpg", "f:10:2026/12/01-10:00:00"),
        ("dir/", "d"),
        ("only-here.jpg", "f:1:2026/12/01-10:00:00"),
    ]);
    let sender = map(&[
        ("old.jpg", "f:10:2026/12/01-10:00:00"),
        ("reused.jpg", "f:10:2026/12/01-10:00:00"),
        ("dir/", "d"),
    ]);
    // reused.jpg was uploaded again on the receiver under the same name since the copy.
    let now = map(&[
        ("old.jpg", "f:10:2026/12/01-10:00:00"),
        ("reused.jpg", "f:2048:2026/12/05-12:00:00"),
        ("dir/", "d"),
        ("only-here.jpg", "f:1:2026/12/01-10:00:00"),
    ]);
    let mut allowed: Vec<String> = rsync::deletable(&receiver, &sender, &now).into_iter().collect();
    allowed.sort();
    assert_eq!(allowed, ["dir/", "old.jpg"]);
    assert_eq!(
        rsync::entry_state(">f+++++++++", "1,234", "2026/12/02-20:40:00"),
        "f:1234:2026/12/02-20:40:00"
    );
    assert_eq!(rsync::entry_state("cd+++++++++", "4096", "2026/12/02-20:40:00"), "d");
}

#[test]
fn mass_deletions_are_refused_before_anything_is_deleted() {
    let paths = |prefix: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{prefix}{i}.jpg")).collect() };
    let source = paths("other/", 40);
    let sources = || source.iter().map(String::as_str);
    // An empty source deletes nothing, whatever the bound.
    let refused = deletions_refused(std::iter::empty(), 3, &paths("", 3), 1.0).expect("refused");
    assert!(
        refused.contains("lists no file at all") && refused.contains("all 3 files"),
        "{refused}"
    );
    // A few deletions always go (the floor), a quarter of a large folder too.
    assert_eq!(deletions_refused(sources(), 8, &paths("other/x", 4), 0.25), None);
    assert_eq!(deletions_refused(sources(), 100, &paths("other/x", 25), 0.25), None);
    let refused = deletions_refused(sources(), 100, &paths("other/x", 26), 0.25).expect("refused");
    assert!(
        refused.contains("delete 26 of the 100 files")
            && refused.contains("delete_fraction_max = 0.25 allows (25: that fraction")
            && refused.contains("like other/x0.jpg, other/x1.jpg, other/x2.jpg, other/x3.jpg, other/x4.jpg;")
            && refused.contains("raise delete_fraction_max"),
        "{refused}"
    );
    assert_eq!(deletions_refused(sources(), 100, &paths("other/x", 26), 1.0), None);
    // A small site: a few files go while at least half of the receiver's stay; most of its
    // media (3 of 4, 5 of 6: a source that lost them by mistake) does not, floor or not.
    assert_eq!(deletions_refused(sources(), 4, &paths("other/x", 2), 0.25), None);
    assert_eq!(deletions_refused(sources(), 10, &paths("other/x", 5), 0.25), None);
    for (synced, deleting) in [(4, 3), (6, 5), (1, 1), (3, 2)] {
        let refused = deletions_refused(sources(), synced, &paths("other/x", deleting), 0.25)
            .unwrap_or_else(|| panic!("{deleting} of {synced} must be refused"));
        assert!(
            refused.contains(&format!("delete {deleting} of the {synced} files"))
                && refused.contains("up to 5 files leaving at least half"),
            "{refused}"
        );
        assert_eq!(
            deletions_refused(sources(), synced, &paths("other/x", deleting), 1.0),
            None,
            "1 lifts the bound"
        );
    }
    // A whole folder the source no longer holds (an unmounted sub-mount), within the fraction.
    let refused = deletions_refused(sources(), 200, &paths("catalog/product/", 6), 0.25).expect("refused");
    assert!(
        refused.contains("holds nothing under catalog/ any more") && refused.contains("all 6 files"),
        "{refused}"
    );
    assert_eq!(
        deletions_refused(sources(), 200, &paths("catalog/product/", 5), 0.25),
        None
    );
    assert_eq!(
        deletions_refused(sources(), 200, &paths("catalog/product/", 6), 1.0),
        None
    );
    // The source still holds files there: ordinary deletions.
    let mut with_catalog = source.clone();
    with_catalog.push("catalog/product/kept.jpg".into());
    assert_eq!(
        deletions_refused(
            with_catalog.iter().map(String::as_str),
            200,
            &paths("catalog/product/", 6),
            0.25
        ),
        None
    );
}

fn write_files(folder: &std::path::Path, names: &[String]) {
    for name in names {
        let path = folder.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
        std::fs::write(&path, name.as_bytes()).expect("write");
    }
}

fn local(path: &std::path::Path) -> Endpoint {
    let records = path.with_extension("records");
    recorded(path, &records)
}

/// The sub-mount `catalog/` is not mounted on the sender (an empty folder): the receiver's
/// copy of it stays, the run fails and says why; the other files are still copied.
#[tokio::test]
async fn rsync_refuses_to_empty_a_folder_the_sender_lost() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    std::fs::create_dir_all(&target).expect("folder");
    let catalog: Vec<String> = (0..8).map(|i| format!("catalog/p/{i}.jpg")).collect();
    let other: Vec<String> = (0..40).map(|i| format!("wysiwyg/{i}.png")).collect();
    write_files(&source, &catalog);
    write_files(&source, &other);
    let limits = limits(1_000, 1 << 30);
    let first = rsync::sync(
        &local(&source),
        &local(&target),
        Some(0.25),
        &Options::default(),
        &limits,
    )
    .await
    .expect("first copy");
    assert_eq!(first.copied_objects, 48);
    std::fs::remove_dir_all(source.join("catalog")).expect("unmount");
    std::fs::create_dir(source.join("catalog")).expect("the empty mount point");
    write_files(&source, &["wysiwyg/new.png".to_string()]);
    let error = match rsync::sync(
        &local(&source),
        &local(&target),
        Some(0.25),
        &Options::default(),
        &limits,
    )
    .await
    {
        Err(Failure::Refused(error)) => error,
        other => panic!("expected refused deletions, got {other:?}"),
    };
    assert!(
        error.contains("holds nothing under catalog/") && error.contains("copied 1 objects"),
        "{error}"
    );
    assert!(catalog.iter().all(|name| target.join(name).exists()), "nothing deleted");
    assert!(target.join("wysiwyg/new.png").exists(), "the copy went ahead");
    // The whole source emptied: refused too.
    for folder in ["catalog", "wysiwyg"] {
        std::fs::remove_dir_all(source.join(folder)).expect("empty");
    }
    let error = match rsync::sync(
        &local(&source),
        &local(&target),
        Some(1.0),
        &Options::default(),
        &limits,
    )
    .await
    {
        Err(Failure::Refused(error)) => error,
        other => panic!("expected refused deletions, got {other:?}"),
    };
    assert!(error.contains("lists no file at all"), "{error}");
    assert!(catalog.iter().chain(&other).all(|name| target.join(name).exists()));
    // Intended: the bound raised, the folder's deletion goes.
    write_files(&source, &other);
    let report = rsync::sync(
        &local(&source),
        &local(&target),
        Some(1.0),
        &Options::default(),
        &limits,
    )
    .await
    .expect("intended deletion");
    assert!(report.deleted_objects >= 8, "{report:?}");
    assert!(!target.join("catalog/p/0.jpg").exists());
}

#[test]
fn names_rsync_escaped_get_their_bytes_back() {
    assert_eq!(rsync::unescape_name("caf\\#303\\#251.jpg"), "café.jpg".as_bytes());
    assert_eq!(rsync::unescape_name("new\\#012line.jpg"), b"new\nline.jpg");
    assert_eq!(rsync::unescape_name("back\\#134#123.jpg"), b"back\\#123.jpg");
    assert_eq!(rsync::unescape_name("-dash \\#9.jpg"), b"-dash \\#9.jpg");
    assert_eq!(rsync::unescape_name("\\#777"), b"\\#777", "not a byte: as printed");
}

/// A run capped by objects_per_run_max names its files on rsync's stdin: names with non-ASCII
/// bytes, a newline or a leading dash must reach rsync as they are (before, rsync's escaped
/// form was fed back and the run failed on the first of them).
#[tokio::test]
async fn a_capped_run_copies_names_with_non_ascii_newlines_and_dashes() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    std::fs::create_dir_all(&target).expect("folder");
    let names: Vec<String> = [
        "café.jpg",
        "new\nline.jpg",
        "-dash.jpg",
        "sub/ünï cödé.png",
        "back\\#134.jpg",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    write_files(&source, &names);
    let endpoint = |path: &std::path::Path| Endpoint::parse(&path.display().to_string()).expect("endpoint");
    let mut copied = 0;
    for _ in 0..5 {
        let report = rsync::sync(
            &endpoint(&source),
            &endpoint(&target),
            None,
            &Options::default(),
            &limits(2, 1 << 20),
        )
        .await
        .expect("a capped run");
        copied += report.copied_objects;
        if report.limited.is_none() {
            break;
        }
    }
    assert_eq!(copied, 5);
    for name in &names {
        assert_eq!(
            std::fs::read(target.join(name)).expect("copied"),
            name.as_bytes(),
            "{name:?}"
        );
    }
}

/// A file too big to copy within run_timeout_ms: each run is cut off, and the next resumes
/// from what the last left in the partial-dir (before, every run started it over, and the
/// files after it never came).
#[tokio::test]
async fn a_file_cut_off_by_run_timeout_is_resumed_by_the_next_run() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    std::fs::create_dir_all(source.join("video")).expect("folder");
    std::fs::create_dir_all(&target).expect("folder");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(source.join("video/big.mp4"), &big).expect("write");
    std::fs::write(source.join("zz-after.jpg"), "after").expect("write");
    let mut step = step(OnFailover::Required);
    step.locations = [
        ("us".to_string(), Location::Rsync(local(&source))),
        ("eu".to_string(), Location::Rsync(local(&target))),
    ]
    .into_iter()
    .collect();
    step.limits = limits(100, 1 << 30);
    step.limits.run_timeout_ms = 1_000;
    step.rsync.bwlimit_kib = Some(1_000);
    let mut cut_off = 0;
    for _ in 0..8 {
        match step.sync("us", "eu").await {
            Ok(report) => {
                assert_eq!(report.remaining.objects, 0, "{report:?}");
                break;
            }
            Err(Failure::Retryable(error)) => {
                assert!(error.contains("resumes it"), "{error}");
                cut_off += 1;
                // rsync's receiving side keeps the part when it sees the sender gone.
                let partial = target.join("video").join(rsync::PARTIAL_DIR).join("big.mp4");
                for _ in 0..50 {
                    if partial.exists() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                assert!(partial.exists(), "the part copied is kept in the partial-dir");
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(cut_off >= 1, "the copy must have been cut off at least once");
    assert_eq!(std::fs::read(target.join("video/big.mp4")).expect("copied"), big);
    assert!(target.join("zz-after.jpg").exists());
    assert!(
        !target.join("video").join(rsync::PARTIAL_DIR).exists(),
        "removed once complete"
    );
}

/// A partial file whose source was deleted after the copy was cut off stayed on the receiver
/// forever (the partial-dir is excluded from every copy and deletion). A run now removes it,
/// with its partial-dir when nothing else is in it, and leaves alone a partial whose source
/// file exists and every other file of the receiver.
#[tokio::test]
async fn a_partial_file_whose_source_is_gone_is_removed_and_no_other() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    let partial = rsync::PARTIAL_DIR;
    for (side, path, text) in [
        (&source, "video/keep.mp4", "keep"),
        (&target, "video/keep.mp4", "keep"),
        (&target, "mine.jpg", "an upload of the receiver's own"),
        (&target, &format!("video/{partial}/keep.mp4") as &str, "kee"),
        (&target, &format!("video/{partial}/gone.mp4"), "gon"),
        (&target, &format!("old/{partial}/x.bin"), "x"),
        (&target, &format!("{partial}/top bin [1].dat"), "t"),
    ] {
        let file = side.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("folder");
        std::fs::write(file, text).expect("write");
    }
    std::fs::create_dir_all(target.join("old")).expect("folder");
    let limits = limits(100, 1 << 30);
    // The cleanup alone: a copy of keep.mp4 would resume from (and then remove) its partial.
    let removed = rsync::remove_stale_partials(&local(&source), &local(&target), &Default::default(), &limits)
        .await
        .expect("cleanup");
    assert_eq!(removed, 3);
    assert_eq!(
        std::fs::read_to_string(target.join(format!("video/{partial}/keep.mp4"))).expect("kept"),
        "kee",
        "its source exists: the next copy of it resumes from it"
    );
    assert!(!target.join(format!("video/{partial}/gone.mp4")).exists());
    assert!(
        !target.join(format!("old/{partial}")).exists(),
        "an emptied partial-dir goes"
    );
    assert!(target.join("old").is_dir(), "the folder holding it stays");
    assert!(!target.join(partial).exists());
    assert_eq!(
        std::fs::read_to_string(target.join("mine.jpg")).expect("kept"),
        "an upload of the receiver's own"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("video/keep.mp4")).expect("kept"),
        "keep"
    );

    // Within a run: the source file deleted after its copy was cut off.
    std::fs::remove_file(source.join("video/keep.mp4")).expect("remove");
    let mut step = step(OnFailover::Required);
    step.locations = [
        ("us".to_string(), Location::Rsync(local(&source))),
        ("eu".to_string(), Location::Rsync(local(&target))),
    ]
    .into_iter()
    .collect();
    step.limits = limits;
    let report = step.sync("us", "eu").await.expect("sync");
    assert!(
        report
            .note
            .as_deref()
            .is_some_and(|n| n.contains("removed 1 partial files")),
        "{report:?}"
    );
    assert!(!target.join(format!("video/{partial}")).exists());
    assert!(
        target.join("video/keep.mp4").exists(),
        "no delete = true: the file itself stays"
    );
    let again = step.sync("us", "eu").await.expect("sync");
    assert!(
        !again.note.unwrap_or_default().contains("partial"),
        "nothing more to remove"
    );
}

/// The names in `folder`, as bytes, sorted.
fn names_in(folder: &std::path::Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(folder)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    names
}

/// The removal's rules are built from names on the receiver: a partial named `*`, `[ab]` or
/// `?` must not match (delete) another one, a newline or CR in a name must not split its
/// rule, a leading `- ` or `#` must not read as a prefix or a comment, and a name rsync prints
/// escaped (non-UTF-8, control bytes) is still removed. Against the real rsync: every hostile
/// partial whose source is gone goes, in a partial-dir that keeps others and in one it empties
/// (under a hostile folder name); every partial whose source exists, the names the hostile
/// ones would match as wildcards among them, and the receiver's own files of the same names,
/// stay.
#[tokio::test]
async fn hostile_partial_names_remove_exactly_themselves() {
    use std::os::unix::ffi::OsStrExt;
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    let partial = rsync::PARTIAL_DIR;
    let hostile: Vec<&[u8]> = vec![
        b"*",
        b"?",
        b"[ab]",
        b"\\",
        b"back\\slash*",
        b"**",
        b"nl\nx",
        b"cr\rx",
        b"- dash",
        b"+ plus",
        b" lead",
        b"trail ",
        b"#hash",
        b";semi",
        b"tab\tx",
        b"pi|pe",
        b"caf\xe9",
        "caf\u{e9} \u{1f3a5}.mp4".as_bytes(),
        b"lit\\#351",
        b"!",
    ];
    // Partials whose source exists: what the hostile names match as wildcards or prefixes, and
    // hostile names of their own.
    let kept: Vec<&[u8]> = vec![
        b"a",
        b"b",
        b"q",
        b"x",
        b"back\\slashZ",
        b"nl",
        b"dash",
        b"lead",
        b"trail",
        b"caf",
        b"k*[1]?\\ ",
        b"k\xe9\n",
    ];
    let hostile_folder = std::ffi::OsStr::from_bytes(b"[d]*\xe9 \n").to_owned();
    let write = |path: std::path::PathBuf, text: &[u8]| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
        std::fs::write(path, text).expect("write");
    };
    let os = |name: &[u8]| std::ffi::OsStr::from_bytes(name).to_owned();
    std::fs::create_dir_all(&source).expect("folder");
    for name in &kept {
        write(source.join(os(name)), b"source");
        write(target.join(partial).join(os(name)), b"kept part");
    }
    for name in &hostile {
        write(target.join(partial).join(os(name)), b"stale part");
        write(target.join(&hostile_folder).join(partial).join(os(name)), b"stale part");
        write(target.join(os(name)), b"the receiver's own");
        write(target.join(&hostile_folder).join(os(name)), b"the receiver's own");
    }
    let removed = rsync::remove_stale_partials(
        &local(&source),
        &local(&target),
        &Default::default(),
        &limits(1000, 1 << 30),
    )
    .await
    .expect("cleanup");
    assert_eq!(removed, 2 * hostile.len() as u64);
    let mut expected: Vec<Vec<u8>> = kept.iter().map(|n| n.to_vec()).collect();
    expected.sort();
    assert_eq!(names_in(&target.join(partial)), expected, "only the stale parts went");
    for name in &kept {
        assert_eq!(
            std::fs::read(target.join(partial).join(os(name))).expect("kept"),
            b"kept part"
        );
    }
    assert!(
        !target.join(&hostile_folder).join(partial).exists(),
        "a partial-dir of stale parts only goes"
    );
    for folder in [target.clone(), target.join(&hostile_folder)] {
        for name in &hostile {
            assert_eq!(
                std::fs::read(folder.join(os(name))).expect("the receiver's own file stays"),
                b"the receiver's own",
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
    let again = rsync::remove_stale_partials(
        &local(&source),
        &local(&target),
        &Default::default(),
        &limits(1000, 1 << 30),
    )
    .await
    .expect("cleanup");
    assert_eq!(again, 0, "nothing stale is left");
}

#[test]
fn stale_partials_are_named_exactly_and_everything_else_protected() {
    let partial = rsync::PARTIAL_DIR;
    assert_eq!(
        rsync::partial_source(&format!("a/b/{partial}/c.mp4")),
        Some(("a/b/".to_string(), "a/b/c.mp4".to_string()))
    );
    assert_eq!(
        rsync::partial_source(&format!("{partial}/c.mp4")),
        Some((String::new(), "c.mp4".to_string()))
    );
    for not_one in [
        "a/c.mp4".to_string(),
        format!("{partial}/"),
        format!("a/{partial}/sub/c.mp4"),
        format!("../{partial}/c.mp4"),
        format!("{partial}/{}", "x".repeat(rsync::RULE_PATTERN_BYTES_MAX)),
    ] {
        assert_eq!(rsync::partial_source(&not_one), None, "{not_one}");
    }
    // A name rsync printed escaped is one too (named by its bytes).
    assert_eq!(
        rsync::partial_source(&format!("a/{partial}/c\\#303\\#251.mp4")),
        Some(("a/".to_string(), "a/c\\#303\\#251.mp4".to_string()))
    );
    let partials = vec![
        format!("v/{partial}/keep.mp4"),
        format!("v/{partial}/gone.mp4"),
        format!("w/{partial}/gone.mp4"),
    ];
    let sources: std::collections::HashSet<String> = ["v/keep.mp4".to_string()].into_iter().collect();
    let (remove, folders, rules) = rsync::stale_partials(&partials, &sources);
    assert_eq!(
        remove,
        vec![format!("v/{partial}/gone.mp4"), format!("w/{partial}/gone.mp4")]
    );
    assert_eq!(folders, vec![format!("v/{partial}/"), "w/".to_string()]);
    assert_eq!(
        rules,
        vec![
            format!("R /v/{partial}/gone.mp4").into_bytes(),
            format!("R /w/{partial}/").into_bytes(),
            format!("R /w/{partial}/gone.mp4").into_bytes(),
            b"P *".to_vec()
        ]
    );
    let (remove, _, rules) = rsync::stale_partials(&partials[..1], &sources);
    assert!(remove.is_empty() && rules.is_empty(), "nothing stale, nothing to run");
}

#[test]
fn symlinks_left_out_by_safe_links_count_in_the_lag() {
    let mut listing = Listing::default();
    for line in [
        "ignoring unsafe symlink \"catalog\" -> \"/mnt/efs/catalog\"",
        "ignoring unsafe symlink \"a|b|c|d.jpg\" (in eu) -> \"../../x\"",
        ">f+++++++++|2|2026/12/05-20:27:54|a.jpg",
    ] {
        listing.line(line);
    }
    assert_eq!((listing.counted, listing.unsafe_links), (1, 2));
    assert!(listing.files.len() <= 1, "a symlink line is no file to copy");
    let lag = listing.lag(0);
    assert_eq!(lag.objects, 3);
    assert_eq!(
        lag.sample,
        [
            "a.jpg",
            "catalog -> /mnt/efs/catalog (symlink out of the folder, not copied)",
            "a|b|c|d.jpg -> ../../x (symlink out of the folder, not copied)"
        ]
    );
    assert!(listing.unsafe_links_warning().is_some_and(|w| w.contains("2 symlinks")));
}

/// A subfolder that is a symlink to another mount: before, it was skipped in silence and the
/// lag said 0 (the failback gate let the region take traffic without those images).
#[tokio::test]
async fn a_symlinked_subfolder_is_warned_about_and_counted() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target, outside) = (
        root.path().join("source"),
        root.path().join("target"),
        root.path().join("efs"),
    );
    write_files(&outside, &["p/1.jpg".to_string()]);
    write_files(&source, &["a.jpg".to_string()]);
    std::fs::create_dir_all(&target).expect("folder");
    std::os::unix::fs::symlink(&outside, source.join("catalog")).expect("symlink");
    let endpoint = |path: &std::path::Path| Endpoint::parse(&path.display().to_string()).expect("endpoint");
    let report = rsync::sync(
        &endpoint(&source),
        &endpoint(&target),
        None,
        &Options::default(),
        &limits(100, 1 << 20),
    )
    .await
    .expect("copied");
    assert_eq!(report.copied_objects, 1);
    assert_eq!(report.remaining.objects, 1, "{report:?}");
    assert!(
        report
            .note
            .as_deref()
            .is_some_and(|n| n.contains("WARNING: 1 symlinks") && n.contains("catalog -> ")),
        "{report:?}"
    );
    assert!(
        !target.join("catalog").exists(),
        "still not copied: it leaves the folder"
    );
}

/// A file on the receiver that is newer but different (a media restore there that kept old
/// times on the sender, an edit on the standby): before, `--update` skipped it in every copy
/// and the lag never counted it. The lag counts it; a copy from the active region replaces it;
/// the runbook step's copy into the region taking over keeps it (and still counts it).
#[tokio::test]
async fn a_newer_different_file_on_the_receiver_is_counted_and_replaced_from_the_active_region() {
    let root = tempfile::tempdir().expect("temp dir");
    let (source, target) = (root.path().join("source"), root.path().join("target"));
    write_files(&source, &["banner.webp".to_string()]);
    std::fs::create_dir_all(&target).expect("folder");
    std::fs::write(target.join("banner.webp"), "the standby's own, newer").expect("write");
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(target.join("banner.webp"))
        .and_then(|f| f.set_modified(future))
        .expect("mtime");
    let mut step = step(OnFailover::Required);
    step.locations = [
        ("us".to_string(), Location::Rsync(local(&source))),
        ("eu".to_string(), Location::Rsync(local(&target))),
    ]
    .into_iter()
    .collect();
    step.limits = limits(100, 1 << 30);
    let lag = step.lag("us", "eu").await.expect("lag");
    assert_eq!((lag.objects, lag.sample.clone()), (1, vec!["banner.webp".to_string()]));
    // The runbook step (a failback into eu, say): kept, and counted.
    let outcome = step.run(&media_order("failback")).await.expect("the step");
    assert!(outcome.contains("verified: 1 objects"), "{outcome}");
    assert_eq!(
        std::fs::read(target.join("banner.webp")).expect("read"),
        b"the standby's own, newer"
    );
    // `media sync` from the active region: replaced.
    let report = step.sync("us", "eu").await.expect("copied");
    assert_eq!((report.copied_objects, report.remaining.objects), (1, 0), "{report:?}");
    assert_eq!(std::fs::read(target.join("banner.webp")).expect("read"), b"banner.webp");
}

/// An object the receiver wrote itself after the source's version (newer, not a copy): before,
/// S3 mode took it as the source's, so the lag never counted it and no copy replaced it, while
/// rsync mode counts such a file. Now, as in rsync mode: the lag counts it, the runbook step's
/// copy into the region taking over keeps it (counted as still differing, with a note), and a
/// copy from the active region (`media sync`) replaces it.
#[cfg(feature = "aws")]
#[tokio::test]
async fn an_s3_object_the_receiver_wrote_after_the_source_is_counted_kept_by_the_step_and_replaced_by_sync() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    let puts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&puts);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let puts = Arc::clone(&seen);
        async move {
            let copied = puts.load(Ordering::SeqCst) > 0;
            let path = uri.path().trim_end_matches('/').to_string();
            let listing = |bucket: &str, modified: &str, etag: &str, size: usize| {
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>p/a.jpg</Key><LastModified>{modified}</LastModified><ETag>"{etag}"</ETag><Size>{size}</Size></Contents></ListBucketResult>"#
                )
            };
            match (method.as_str(), path.as_str()) {
                ("GET", "/src") => (StatusCode::OK, listing("src", "2026-01-01T00:00:00.000Z", "esrc", 3)).into_response(),
                ("GET", "/dst") if copied => {
                    (StatusCode::OK, listing("dst", "2026-07-01T00:00:00.000Z", "esrc", 3)).into_response()
                }
                ("GET", "/dst") => (StatusCode::OK, listing("dst", "2026-06-01T00:00:00.000Z", "eown", 5)).into_response(),
                ("GET", "/src/p/a.jpg") => (StatusCode::OK, [("etag", "\"esrc\"")], "src").into_response(),
                ("PUT", "/dst/p/a.jpg") => {
                    puts.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::OK, [("etag", "\"esrc\"")]).into_response()
                }
                ("HEAD", "/dst/p/a.jpg") if copied => (
                    StatusCode::OK,
                    [
                        ("etag", "\"esrc\""),
                        ("content-length", "3"),
                        ("last-modified", "Wed, 01 Jul 2026 00:00:00 GMT"),
                        ("x-amz-meta-switchyard-source-etag", "esrc"),
                    ],
                )
                    .into_response(),
                // The standby's own upload under that key, newer and of another size.
                ("HEAD", "/dst/p/a.jpg") => (
                    StatusCode::OK,
                    [
                        ("etag", "\"eown\""),
                        ("content-length", "5"),
                        ("last-modified", "Mon, 01 Jun 2026 00:00:00 GMT"),
                    ],
                )
                    .into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let (_dir, location) = serve_s3(app).await;
    let mut step = step(OnFailover::Required);
    step.locations = [("us".to_string(), location("src")), ("eu".to_string(), location("dst"))]
        .into_iter()
        .collect();
    step.limits = limits(100, 1 << 20);
    let lag = step.lag("us", "eu").await.expect("lag");
    assert_eq!((lag.objects, lag.sample.clone()), (1, vec!["a.jpg".to_string()]));
    // The runbook step (a failback into eu, say): kept, and counted.
    let outcome = step.run(&media_order("failback")).await.expect("the step");
    assert!(
        outcome.contains("copied 0 objects") && outcome.contains("verified: 1 objects (3 bytes) still differ"),
        "{outcome}"
    );
    assert!(
        outcome.contains("kept 1 objects the receiver wrote itself after the source's version"),
        "{outcome}"
    );
    assert_eq!(puts.load(Ordering::SeqCst), 0, "the step never replaces it");
    // `media sync` from the active region: replaced, and nothing differs any more.
    let report = step.sync("us", "eu").await.expect("copied");
    assert_eq!((report.copied_objects, report.remaining.objects), (1, 0), "{report:?}");
    assert_eq!(puts.load(Ordering::SeqCst), 1);
}

/// A page that says there is more (IsTruncated=true) without a NextContinuationToken: before,
/// taken as the end of the listing, and with delete = true every object of the later pages
/// read as deleted at the source.
#[cfg(feature = "aws")]
#[tokio::test]
async fn an_s3_listing_truncated_without_a_token_is_an_error() {
    use std::sync::{Arc, Mutex};

    use axum::http::{Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    let deletes = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&deletes);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let seen = Arc::clone(&seen);
        async move {
            let path = uri.path().trim_end_matches('/').to_string();
            let contents = |n: std::ops::Range<usize>| {
                n.map(|i| format!(r#"<Contents><Key>p/{i}.jpg</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"e{i}"</ETag><Size>1</Size></Contents>"#))
                    .collect::<String>()
            };
            let listing = |bucket: &str, truncated: bool, body: String| {
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>{truncated}</IsTruncated>{body}</ListBucketResult>"#
                )
            };
            match (method.as_str(), path.as_str()) {
                ("GET", "/src") => (StatusCode::OK, listing("src", true, contents(0..2))).into_response(),
                ("GET", "/dst") => (StatusCode::OK, listing("dst", false, contents(0..10))).into_response(),
                ("HEAD", _) => (StatusCode::OK, [("x-amz-meta-switchyard-source-etag", "e")]).into_response(),
                ("DELETE", _) => {
                    *seen.lock().expect("lock") += 1;
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let (_dir, location) = serve_s3(app).await;
    let error = match super::s3::sync(
        &location("src"),
        &location("dst"),
        Some(1.0),
        false,
        &limits(100, 1 << 20),
    )
    .await
    {
        Err(Failure::Retryable(error)) => error,
        other => panic!("expected an incomplete listing to fail, got {other:?}"),
    };
    assert!(
        error.contains("IsTruncated=true without a NextContinuationToken"),
        "{error}"
    );
    assert_eq!(*deletes.lock().expect("lock"), 0);
}

/// A receiver bucket encrypting with SSE-KMS answers HeadObject with an ETag that is not the
/// MD5 of the bytes: before, every copy failed its check. The size and the recorded source
/// ETag verify it.
#[cfg(feature = "aws")]
#[tokio::test]
async fn an_s3_copy_into_an_sse_kms_bucket_is_verified_by_size_and_the_recorded_etag() {
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    let app = axum::Router::new().fallback(|method: Method, uri: Uri, _headers: HeaderMap| async move {
        let path = uri.path().trim_end_matches('/').to_string();
        let listing = |bucket: &str, body: &str| {
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{body}</ListBucketResult>"#
            )
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/src") => (
                StatusCode::OK,
                listing(
                    "src",
                    r#"<Contents><Key>p/a.jpg</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"0cc175b9c0f1b6a831c399e269772661"</ETag><Size>1</Size></Contents>"#,
                ),
            )
                .into_response(),
            ("GET", "/dst") => (StatusCode::OK, listing("dst", "")).into_response(),
            ("GET", "/src/p/a.jpg") => (StatusCode::OK, [("etag", "\"0cc175b9c0f1b6a831c399e269772661\"")], "a").into_response(),
            ("PUT", _) => (StatusCode::OK, [("etag", "\"kms-not-an-md5\"")]).into_response(),
            ("HEAD", "/dst/p/a.jpg") => (
                StatusCode::OK,
                [
                    ("etag", "\"kms-not-an-md5\""),
                    ("content-length", "1"),
                    ("x-amz-server-side-encryption", "aws:kms"),
                    ("x-amz-meta-switchyard-source-etag", "0cc175b9c0f1b6a831c399e269772661"),
                ],
            )
                .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    });
    let (_dir, location) = serve_s3(app).await;
    // The verification after the copy lists the receiver again (empty here), so it still
    // counts a.jpg; what matters is that the copy itself verified.
    let report = super::s3::sync(&location("src"), &location("dst"), None, false, &limits(10, 1 << 20))
        .await
        .expect("the copy verifies");
    assert_eq!(report.copied_objects, 1, "{report:?}");
    let head = (1, "kms-not-an-md5".to_string(), Some("abc".to_string()), None);
    assert!(super::s3::copy_verified(1, "abc", &head, true));
    assert!(
        !super::s3::copy_verified(1, "abc", &head, false),
        "unencrypted: the ETag must be the MD5"
    );
    assert!(
        !super::s3::copy_verified(2, "abc", &head, true),
        "the size always counts"
    );
    let unrecorded = (1, "kms-not-an-md5".to_string(), None, None);
    assert!(
        !super::s3::copy_verified(1, "abc", &unrecorded, true),
        "the recorded source ETag always counts"
    );
}
