use super::*;
use crate::catalog::{KeyAttribute, KeyType};
use dynamo_protocol::AttributeValue;

fn schema() -> KeySchema {
    KeySchema {
        partition: KeyAttribute {
            name: "id".into(),
            value_type: KeyType::S,
        },
        sort: None,
        extra_partition: Vec::new(),
        extra_sort: Vec::new(),
    }
}

fn item(id: &str, value: &str) -> Item {
    let mut item = Item::new();
    item.insert("id".into(), AttributeValue::S(id.into()));
    item.insert("v".into(), AttributeValue::S(value.into()));
    item
}

fn change<'a>(key: &'a KeySchema, view_type: ViewType, old: Option<&'a Item>, new: Option<&'a Item>) -> Change<'a> {
    Change {
        store_id: 77,
        stream_id: 1,
        seq: 42,
        view_type,
        key,
        region: "us-east-1",
        old,
        new,
        ttl: false,
        now_ms: 1_700_000_000_123,
    }
}

/// A record as the writer stores it (`write_record`), as a JSON value (what a client parses).
fn shaped(change: &Change<'_>) -> Option<serde_json::Value> {
    let mut out = b"prefix".to_vec();
    if !write_record(change, None, &mut out) {
        assert_eq!(out, b"prefix", "no record, no bytes");
        return None;
    }
    Some(serde_json::from_slice(&out[6..]).expect("a record is JSON"))
}

/// A table keyed `pk` (HASH) and `a` (RANGE): the sort key's name sorts first.
fn schema_with_sort() -> KeySchema {
    let mut key = schema();
    key.partition.name = "pk".into();
    key.sort = Some(KeyAttribute {
        name: "a".into(),
        value_type: KeyType::N,
    });
    key
}

#[test]
fn records_are_written_with_their_fields_in_order() {
    // Stored records are spliced into GetRecords answers as written: their bytes must be what
    // serialising the same record through a `serde_json::Value` (sorted keys) gives, and what
    // the reference shape (`shape_record`) serialises to.
    let simple = schema();
    let with_sort = schema_with_sort();
    let mut a = item("k", "a\"quoted\" \u{e9}\n");
    let mut b = item("k", "b");
    for it in [&mut a, &mut b] {
        it.insert("pk".into(), AttributeValue::S("p/1".into()));
        it.insert(
            "a".into(),
            AttributeValue::N(dynamo_protocol::number::Number::parse("12.5").expect("a number")),
        );
        it.insert("m".into(), AttributeValue::M(item("x", "y")));
    }
    let views = [
        ViewType::KeysOnly,
        ViewType::NewImage,
        ViewType::OldImage,
        ViewType::NewAndOldImages,
    ];
    let mut checked = 0;
    for key in [&simple, &with_sort] {
        for view_type in views {
            for (old, new) in [(Some(&a), Some(&b)), (None, Some(&b)), (Some(&a), None)] {
                for ttl in [false, true] {
                    let mut c = change(key, view_type, old, new);
                    c.ttl = ttl;
                    c.seq = 1_234_567_890_123;
                    let reference = serde_json::to_vec(&shape_record(&c).expect("a change")).expect("serialises");
                    let value: serde_json::Value = serde_json::from_slice(&reference).expect("valid JSON");
                    assert_eq!(reference, serde_json::to_vec(&value).expect("serialises"));
                    let mut direct = Vec::new();
                    assert!(write_record(&c, None, &mut direct));
                    assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&reference));
                    // The new item's stored JSON, when given, is what its image is.
                    let stored = new.map(|n| serde_json::to_vec(n).expect("serialises"));
                    let mut reused = Vec::new();
                    assert!(write_record(&c, stored.as_deref(), &mut reused));
                    assert_eq!(reused, reference);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 4 * 3 * 2);
    let mut none = Vec::new();
    assert!(!write_record(
        &change(&simple, ViewType::NewAndOldImages, Some(&a), Some(&a)),
        None,
        &mut none
    ));
    let keyless = Item::new();
    assert!(!write_record(
        &change(&simple, ViewType::NewAndOldImages, None, Some(&keyless)),
        None,
        &mut none
    ));
    assert!(none.is_empty());
}

#[test]
fn records_are_shaped_as_dynamodb_shapes_them() {
    let key = schema();
    let (a, b) = (item("k", "a"), item("k", "b"));
    let record = shaped(&change(&key, ViewType::NewAndOldImages, Some(&a), Some(&b))).expect("a change");
    assert_eq!(record["eventName"], "MODIFY");
    assert_eq!(record["eventVersion"], "1.1");
    assert_eq!(record["eventSource"], "aws:dynamodb");
    assert_eq!(record["awsRegion"], "us-east-1");
    assert_eq!(record["eventID"].as_str().map(str::len), Some(32));
    let dynamodb = &record["dynamodb"];
    assert_eq!(dynamodb["Keys"], json!({"id": {"S": "k"}}));
    assert_eq!(dynamodb["NewImage"]["v"], json!({"S": "b"}));
    assert_eq!(dynamodb["OldImage"]["v"], json!({"S": "a"}));
    assert_eq!(dynamodb["ApproximateCreationDateTime"], 1_700_000_000);
    assert_eq!(dynamodb["SequenceNumber"], "000000000000000000042");
    assert_eq!(dynamodb["StreamViewType"], "NEW_AND_OLD_IMAGES");
    let size = item_size_bytes(&key.extract(&a).expect("keys")) + item_size_bytes(&a) + item_size_bytes(&b);
    assert_eq!(dynamodb["SizeBytes"], json!(size));
    assert!(record.get("userIdentity").is_none());
}

#[test]
fn each_view_type_carries_its_images_only() {
    let key = schema();
    let (a, b) = (item("k", "a"), item("k", "b"));
    let images = |view_type| {
        let record = shaped(&change(&key, view_type, Some(&a), Some(&b))).expect("a change");
        (
            record["dynamodb"].get("NewImage").is_some(),
            record["dynamodb"].get("OldImage").is_some(),
        )
    };
    assert_eq!(images(ViewType::KeysOnly), (false, false));
    assert_eq!(images(ViewType::NewImage), (true, false));
    assert_eq!(images(ViewType::OldImage), (false, true));
    assert_eq!(images(ViewType::NewAndOldImages), (true, true));
}

#[test]
fn insert_remove_ttl_and_no_change() {
    let key = schema();
    let a = item("k", "a");
    let insert = shaped(&change(&key, ViewType::NewAndOldImages, None, Some(&a))).expect("insert");
    assert_eq!(insert["eventName"], "INSERT");
    assert!(insert["dynamodb"].get("OldImage").is_none());
    let mut removal = change(&key, ViewType::NewAndOldImages, Some(&a), None);
    removal.ttl = true;
    let remove = shaped(&removal).expect("remove");
    assert_eq!(remove["eventName"], "REMOVE");
    assert_eq!(remove["dynamodb"]["Keys"], json!({"id": {"S": "k"}}));
    assert_eq!(
        remove["userIdentity"],
        json!({"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"})
    );
    assert!(shaped(&change(&key, ViewType::NewAndOldImages, Some(&a), Some(&a.clone()))).is_none());
    assert!(shaped(&change(&key, ViewType::NewAndOldImages, None, None)).is_none());
}

#[test]
fn specifications_are_validated_with_dynamodbs_messages() {
    let enable = parse_specification(&json!({"StreamEnabled": true, "StreamViewType": "NEW_IMAGE"}));
    assert_eq!(enable, Ok(Specification::Enable(ViewType::NewImage)));
    assert_eq!(
        parse_specification(&json!({"StreamEnabled": false})),
        Ok(Specification::Disable)
    );
    let missing = parse_specification(&json!({"StreamViewType": "NEW_IMAGE"})).expect_err("no StreamEnabled");
    assert!(
        missing.message.contains("streamSpecification.streamEnabled"),
        "{}",
        missing.message
    );
    let no_view = parse_specification(&json!({"StreamEnabled": true})).expect_err("no view type");
    assert!(
        no_view.message.contains("UpdateViewType is required"),
        "{}",
        no_view.message
    );
    let bad_view = parse_specification(&json!({"StreamEnabled": true, "StreamViewType": "ALL"})).expect_err("bad");
    assert!(bad_view.message.contains("enum value set"), "{}", bad_view.message);
    let disable_with_view =
        parse_specification(&json!({"StreamEnabled": false, "StreamViewType": "KEYS_ONLY"})).expect_err("view");
    assert_eq!(disable_with_view.kind, ErrorKind::Validation);
}

#[test]
fn stream_changes_follow_dynamodbs_rules() {
    let enabled = TableStream {
        enabled: true,
        view_type: ViewType::KeysOnly,
        label: "2026-01-01T00:00:00.000".into(),
    };
    let label = || "2026-01-02T00:00:00.000".to_string();
    let again = change_stream(
        "t",
        Some(&enabled),
        false,
        Specification::Enable(ViewType::NewImage),
        label,
    )
    .expect_err("enabled twice");
    assert_eq!(again.message, "Table already has an enabled stream: TableName: t");
    let disabled = change_stream("t", Some(&enabled), false, Specification::Disable, label).expect("disable");
    assert!(!disabled.enabled);
    assert_eq!(disabled.label, enabled.label, "the latest label stays after disabling");
    let twice = change_stream("t", Some(&disabled), false, Specification::Disable, label).expect_err("twice");
    assert_eq!(twice.message, "Table has no stream to disable: TableName: t");
    let none = change_stream("t", None, false, Specification::Disable, label).expect_err("none");
    assert_eq!(none.message, "Table has no stream to disable: TableName: t");
    let global = change_stream("t", Some(&enabled), true, Specification::Disable, label).expect_err("global");
    assert!(global.message.contains("not allowed") && global.message.contains("Global Table"));
    let reenabled = change_stream(
        "t",
        Some(&disabled),
        false,
        Specification::Enable(ViewType::OldImage),
        label,
    )
    .expect("re-enable");
    assert_eq!((reenabled.enabled, reenabled.view_type), (true, ViewType::OldImage));
    assert_eq!(reenabled.label, "2026-01-02T00:00:00.000", "a new stream, a new label");
}

#[test]
fn names_have_dynamodbs_formats() {
    assert_eq!(label_at(1_700_000_000_123), "2023-11-14T22:13:20.123");
    let arn = stream_arn("eu-west-1", "orders", "2023-11-14T22:13:20.123");
    assert_eq!(
        arn,
        "arn:aws:dynamodb:eu-west-1:000000000000:table/orders/stream/2023-11-14T22:13:20.123"
    );
    assert_eq!(
        parse_stream_arn(&arn, "eu-west-1"),
        Ok(("orders", "2023-11-14T22:13:20.123"))
    );
    assert_eq!(
        parse_stream_arn(&arn, "us-east-1").map_err(|e| e.kind),
        Err(ErrorKind::ResourceNotFound)
    );
    // Another account's stream is not this store's.
    assert_eq!(
        parse_stream_arn(&arn.replace(":000000000000:", ":123456789012:"), "eu-west-1").map_err(|e| e.kind),
        Err(ErrorKind::ResourceNotFound)
    );
    assert_eq!(
        parse_stream_arn("arn:aws:dynamodb:eu-west-1:000000000000:table/orders", "eu-west-1").map_err(|e| e.kind),
        Err(ErrorKind::Validation)
    );
    assert_eq!(format_sequence(7).len(), 21);
    assert_eq!(parse_sequence(&format_sequence(7)), Ok(7));
    assert_eq!(parse_sequence(&format_sequence(u64::MAX)), Ok(u64::MAX));
    assert!(parse_sequence("7").is_err());
    // A length outside the model's bounds is answered in DynamoDB's generated words, one bound.
    let message = |text: &str| parse_sequence(text).expect_err("refused").message;
    assert!(
        message("7").ends_with(
            "at 'sequenceNumber' failed to satisfy constraint: Member must have length greater than or equal to 21"
        ),
        "{}",
        message("7")
    );
    assert!(message(&"1".repeat(41)).ends_with("Member must have length less than or equal to 40"));
    assert!(
        message(&"x".repeat(21))
            .starts_with("Invalid SequenceNumber: 'xxxxxxxxxxxxxxxxxxxxx' is not a sequence number")
    );
    assert!(parse_sequence("00000000000000000000x").is_err());
    assert!(parse_sequence(&"9".repeat(40)).is_err());
    let shard = shard_id(1_700_000_000_123, 3, 9);
    assert!(shard.starts_with("shardId-00000001700000000123-"), "{shard}");
    assert!((28..=65).contains(&shard.len()));
}

#[test]
fn iterators_round_trip_expire_after_fifteen_minutes_and_cannot_be_forged() {
    let key = [7; ITERATOR_KEY_BYTES];
    let iterator = ShardIterator {
        arn: stream_arn("us-east-1", "t", "2026-01-01T00:00:00.000"),
        shard_id: shard_id(1, 1, 1),
        position: 17,
        issued_ms: 1_000_000,
    };
    let text = iterator.encode(&key);
    assert_eq!(ShardIterator::decode(&text, &key), Ok(iterator.clone()));
    assert!(iterator.check_fresh(1_000_000 + ITERATOR_LIFETIME_MS).is_ok());
    let expired = iterator
        .check_fresh(1_000_001 + ITERATOR_LIFETIME_MS)
        .expect_err("expired");
    assert_eq!(expired.kind, ErrorKind::ExpiredIterator);
    let kind = |text: &str, key: &[u8; ITERATOR_KEY_BYTES]| ShardIterator::decode(text, key).map_err(|e| e.kind);
    assert_eq!(kind("not an iterator", &key), Err(ErrorKind::Validation));
    assert_eq!(
        kind(&"A".repeat(SHARD_ITERATOR_LENGTH_MAX + 1), &key),
        Err(ErrorKind::Validation)
    );
    // Another store's key, or any field changed (a later issue time to dodge the expiry, another
    // position or shard): not an iterator this store issued.
    assert_eq!(kind(&text, &[8; ITERATOR_KEY_BYTES]), Err(ErrorKind::Validation));
    // Shaped as DynamoDB's: the stream's ARN, then `|`, one digit, `|`.
    let (arn, rest) = text.split_once('|').expect("ARN|");
    assert_eq!(arn, iterator.arn);
    assert!(rest.starts_with("3|"), "{text}");
    let (_, encoded) = rest.split_once('|').expect("version|");
    let plain = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .expect("base64"),
    )
    .expect("text");
    for (from, to) in [
        ("1000000|", "9999999999999|"),
        ("|17|", "|18|"),
        ("shardId-", "shardIdX"),
    ] {
        let forged = format!(
            "{arn}|3|{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plain.replacen(from, to, 1))
        );
        assert_eq!(kind(&forged, &key), Err(ErrorKind::Validation), "{from} -> {to}");
    }
    // Another stream's ARN in the clear: not what the MAC covers.
    let moved = text.replacen("table/t/", "table/u/", 1);
    assert_eq!(kind(&moved, &key), Err(ErrorKind::Validation));
    for malformed in [format!("{arn}|3"), format!("{arn}|9|{encoded}"), format!("{text}|x")] {
        assert_eq!(kind(&malformed, &key), Err(ErrorKind::Validation), "{malformed}");
    }
    // One the previous version issued (all of it base64, MAC over the same fields) still reads.
    let fields = format!("2|1000000|17|{}|{}", iterator.shard_id, iterator.arn);
    let previous = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{fields}|{}", hex::encode(iterator_mac(&key, &fields))));
    assert_eq!(ShardIterator::decode(&previous, &key), Ok(iterator.clone()));
    // One an earlier version issued (no MAC) has expired.
    let unsigned = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("1|1000000|17|{}|{}", iterator.shard_id, iterator.arn));
    assert_eq!(kind(&unsigned, &key), Err(ErrorKind::ExpiredIterator));
}

#[test]
fn limits_come_from_the_environment_or_fail_with_the_variable_named() {
    let none = StreamLimits::from_lookup(|_| None).expect("defaults");
    assert_eq!(none, StreamLimits::default());
    let small =
        StreamLimits::from_lookup(|name| (name == ENV_SHARD_RECORDS_MAX).then(|| "3".to_string())).expect("override");
    assert_eq!(small.shard_records_max, 3);
    let bad = StreamLimits::from_lookup(|name| (name == ENV_RETENTION_MS).then(|| "soon".to_string()))
        .expect_err("not a number");
    assert!(bad.contains(ENV_RETENTION_MS), "{bad}");
}

#[test]
fn old_catalog_entries_read_as_no_stream() {
    #[derive(serde::Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "lenient_table_stream")]
        stream: Option<TableStream>,
    }
    let old: Holder = serde_json::from_value(json!({"stream": {"StreamEnabled": true, "StreamViewType": "KEYS_ONLY"}}))
        .expect("old shape");
    assert_eq!(old.stream, None);
    let current: Holder =
        serde_json::from_value(json!({"stream": {"enabled": true, "view_type": "KEYS_ONLY", "label": "x"}}))
            .expect("current shape");
    assert_eq!(current.stream.map(|s| s.view_type), Some(ViewType::KeysOnly));
}

#[test]
fn status_moves_from_enabling_to_enabled_and_disabling_to_disabled() {
    let enabled_at = 1_000_000;
    assert_eq!(stream_status(enabled_at, None, enabled_at), "ENABLING");
    assert_eq!(
        stream_status(enabled_at, None, enabled_at + STATUS_TRANSITION_MS - 1),
        "ENABLING"
    );
    assert_eq!(
        stream_status(enabled_at, None, enabled_at + STATUS_TRANSITION_MS),
        "ENABLED"
    );
    // A clock that stepped back reads as the transition, never as a panic or a wrap.
    assert_eq!(stream_status(enabled_at, None, enabled_at - 5), "ENABLING");
    let disabled_at = enabled_at + 60_000;
    assert_eq!(stream_status(enabled_at, Some(disabled_at), disabled_at), "DISABLING");
    assert_eq!(
        stream_status(enabled_at, Some(disabled_at), disabled_at + STATUS_TRANSITION_MS - 1),
        "DISABLING"
    );
    assert_eq!(
        stream_status(enabled_at, Some(disabled_at), disabled_at + STATUS_TRANSITION_MS),
        "DISABLED"
    );
}

#[test]
fn compact_records_render_as_the_record_and_are_much_smaller() {
    let key = schema();
    let (mut a, mut b) = (item("k", "a"), item("k", "b"));
    for (at, it) in [&mut a, &mut b].into_iter().enumerate() {
        for n in 0..6 {
            it.insert(
                format!("attribute{n}"),
                AttributeValue::S(format!("value {n} of item {at}")),
            );
        }
    }
    let mut c = change(&key, ViewType::NewAndOldImages, Some(&a), Some(&b));
    c.seq = 987_654_321;
    let mut compact = Vec::new();
    assert!(write_compact_record(&c, None, None, &mut compact));
    // The images' stored JSON, when given, is copied: the same bytes as serialising them.
    let (a_json, b_json) = (serde_json::to_vec(&a).expect("a"), serde_json::to_vec(&b).expect("b"));
    let mut copied = Vec::new();
    assert!(write_compact_record(&c, Some(&b_json), Some(&a_json), &mut copied));
    assert_eq!(copied, compact);
    // A view without old images ignores the old JSON.
    let new_only = change(&key, ViewType::NewImage, Some(&a), Some(&b));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    assert!(write_compact_record(&new_only, None, Some(b"{\"junk\":{}}"), &mut with));
    assert!(write_compact_record(&new_only, None, None, &mut without));
    assert_eq!(with, without);
    let mut rendered = b"[".to_vec();
    render_compact_record(c.store_id, c.stream_id, c.seq, c.region, &compact, &mut rendered).expect("renders");
    let reference = serde_json::to_vec(&shape_record(&c).expect("a change")).expect("serialises");
    assert_eq!(&rendered[1..], &reference[..], "appended after what `out` held");
    // What is left out is the ~260 bytes of names and constants around the images.
    assert!(
        compact.len() + 240 < reference.len(),
        "{} compact against {}",
        compact.len(),
        reference.len()
    );
    // The same change in another stream, at another number, in another region.
    let mut other = Vec::new();
    render_compact_record(77, 9, 10, "ap-south-2", &compact, &mut other).expect("renders");
    let value: serde_json::Value = serde_json::from_slice(&other).expect("JSON");
    assert_eq!(value["awsRegion"], "ap-south-2");
    assert_eq!(value["dynamodb"]["SequenceNumber"], format_sequence(10));
    assert_eq!(value["eventID"], event_id(77, "ap-south-2", 9, 10));
    // The same stream and number in another region (two regions of a global table number
    // their streams and records alike) is another event: eventID is globally unique.
    let mut elsewhere = Vec::new();
    render_compact_record(77, 9, 10, "us-east-1", &compact, &mut elsewhere).expect("renders");
    let elsewhere: serde_json::Value = serde_json::from_slice(&elsewhere).expect("JSON");
    assert_ne!(value["eventID"], elsewhere["eventID"]);
    // The same region, stream and number in another database (the region rebuilt on an empty
    // data directory numbers its streams and records from 1 again) is another event too.
    let mut rebuilt = Vec::new();
    render_compact_record(78, 9, 10, "ap-south-2", &compact, &mut rebuilt).expect("renders");
    let rebuilt: serde_json::Value = serde_json::from_slice(&rebuilt).expect("JSON");
    assert_ne!(value["eventID"], rebuilt["eventID"]);
}

#[test]
fn damaged_compact_records_are_errors_that_name_the_damage() {
    let key = schema();
    let (a, b) = (item("k", "a"), item("k", "b"));
    let mut compact = Vec::new();
    assert!(write_compact_record(
        &change(&key, ViewType::NewAndOldImages, Some(&a), Some(&b)),
        None,
        None,
        &mut compact
    ));
    let render = |bytes: &[u8]| {
        let mut out = Vec::new();
        render_compact_record(1, 1, 2, "r", bytes, &mut out)
    };
    assert!(render(&compact).is_ok());
    assert!(render(&[]).expect_err("empty").contains("empty"));
    // Every cut is an error, never a panic or a record missing a field.
    for len in 1..compact.len() {
        assert!(render(&compact[..len]).is_err(), "cut to {len}");
    }
    let mut trailing = compact.clone();
    trailing.push(b'x');
    assert!(render(&trailing).expect_err("trailing").contains("after its fields"));
    let mut flags = compact.clone();
    flags[0] &= !0b11;
    assert!(render(&flags).expect_err("no event").contains("flags"));
    let mut flags = compact.clone();
    flags[0] |= 0x80;
    assert!(render(&flags).expect_err("unknown bit").contains("flags"));
    // A number that runs past 64 bits.
    let mut long = vec![compact[0]];
    long.extend_from_slice(&[0xff; 9]);
    long.push(0x7f);
    assert!(render(&long).expect_err("overflow").contains("64 bits"));
}

proptest::proptest! {
    #[test]
    fn any_bytes_render_as_a_record_or_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
        // Never a panic; a record that renders has all its fields.
        let mut out = Vec::new();
        if render_compact_record(1, 1, 2, "r", &bytes, &mut out).is_ok() {
            let complete = out.last() == Some(&b'}') && out.windows(10).any(|w| w == b"\"eventName");
            proptest::prop_assert!(complete, "a rendered record lacks its end");
        }
    }
}
