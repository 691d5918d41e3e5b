//! `route53`, `route53_failover_health`, `ssm_parameter` and the CloudWatch lag reader against
//! moto's server.

use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
use providers::aws::{Access, StaticCredentials};
use providers::{Failure, Order};

use crate::common::{Collect, check_settings};
use crate::moto::Moto;

/// A step checked from its settings `text` for the regions `us` and `eu`, with the test's keys.
fn checked<S: serde::de::DeserializeOwned, T>(text: &str, check: impl FnOnce(&S, &mut Collect) -> Option<T>) -> T {
    check_settings(text, Collect::new(&["us", "eu"]), check).expect("settings check")
}

fn credentials() -> StaticCredentials {
    StaticCredentials {
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
    }
}

fn order(generation: u64, to: &str) -> Order {
    crate::support::order_from(generation, None, to, false)
}

async fn sdk(moto: &Moto, region: &str) -> aws_config::SdkConfig {
    Access {
        region: region.into(),
        profile: None,
        endpoint_url: Some(moto.url.clone()),
        credentials_file: None,
    }
    .sdk_config(Some(&credentials()))
    .await
}

/// A hosted zone `shop.example.com.` and a Route 53 client for the test's own reads and writes.
async fn zone(moto: &Moto) -> (aws_sdk_route53::Client, String) {
    let client = aws_sdk_route53::Client::new(&sdk(moto, "us-east-1").await);
    let id = create_zone(&client, "shop.example.com.", "switchyard-test").await;
    (client, id)
}

/// Creates a hosted zone named `name`; its id without `/hostedzone/`.
async fn create_zone(client: &aws_sdk_route53::Client, name: &str, caller_reference: &str) -> String {
    let created = client
        .create_hosted_zone()
        .name(name)
        .caller_reference(caller_reference)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create the hosted zone {name} ({caller_reference}): {e}"));
    created
        .hosted_zone()
        .expect("zone")
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string()
}

fn route53_step(moto: &Moto, zone_id: &str) -> providers::route53::Route53 {
    let text = format!(
        r#"
zone_id = "{zone_id}"
name = "www.shop.example.com"
type = "A"
ttl = 60
values = {{ us = "203.0.113.10", eu = "198.51.100.7" }}
insync_timeout_ms = 10000
endpoint_url = "{}"
"#,
        moto.url
    );
    checked(&text, |s: &providers::route53::Settings, c| s.check("dns", c)).with_static_credentials(credentials())
}

/// The A values and the fence TXT as Route 53 holds them.
async fn records(client: &aws_sdk_route53::Client, zone_id: &str) -> (Vec<String>, Vec<String>) {
    let listed = client
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .expect("list record sets");
    let values = |name: &str, kind: RrType| -> Vec<String> {
        listed
            .resource_record_sets()
            .iter()
            .filter(|set| set.name() == name && *set.r#type() == kind)
            .flat_map(|set| set.resource_records().iter().map(|r| r.value().to_string()))
            .collect()
    };
    (
        values("www.shop.example.com.", RrType::A),
        values("_switchyard.www.shop.example.com.", RrType::Txt),
    )
}

async fn upsert_a(client: &aws_sdk_route53::Client, zone_id: &str, value: &str) {
    let set = ResourceRecordSet::builder()
        .name("www.shop.example.com.")
        .r#type(RrType::A)
        .ttl(60)
        .resource_records(ResourceRecord::builder().value(value).build().expect("record"))
        .build()
        .expect("record set");
    client
        .change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()
                        .expect("change"),
                )
                .build()
                .expect("batch"),
        )
        .send()
        .await
        .expect("upsert");
}

#[tokio::test]
async fn route53_sets_the_record_waits_for_insync_and_a_rerun_changes_nothing() {
    let moto = Moto::start();
    let (client, zone_id) = zone(&moto).await;
    let step = route53_step(&moto, &zone_id);

    let first = step.run(&order(1, "us")).await.expect("first write");
    assert!(first.contains("INSYNC"), "{first}");
    let (values, fence) = records(&client, &zone_id).await;
    assert_eq!(values, ["203.0.113.10"]);
    assert!(fence[0].contains("generation=1 region=us"), "{fence:?}");

    let moved = step.run(&order(2, "eu")).await.expect("failover write");
    assert!(
        moved.contains("set to 198.51.100.7") && moved.contains("INSYNC"),
        "{moved}"
    );
    let (values, fence) = records(&client, &zone_id).await;
    assert_eq!(values, ["198.51.100.7"]);
    assert!(fence[0].contains("generation=2 region=eu"), "{fence:?}");

    let again = step.run(&order(2, "eu")).await.expect("re-run");
    assert!(again.contains("already holds"), "{again}");
    assert_eq!(
        records(&client, &zone_id).await,
        (values, fence),
        "a re-run writes nothing"
    );

    let stale = step.run(&order(1, "us")).await.expect_err("an older order is fenced");
    assert!(matches!(&stale, Failure::Fenced(m) if m.contains("stale")), "{stale:?}");
    assert_eq!(records(&client, &zone_id).await.0, ["198.51.100.7"]);
}

/// `zone = "NAME"` finds the hosted zone with `ListHostedZonesByName`; a name that two zones
/// share (a public and a private zone, say) is refused with both ids, and nothing is written.
#[tokio::test]
async fn route53_finds_its_zone_by_name_and_refuses_an_ambiguous_name() {
    let moto = Moto::start();
    let (client, zone_id) = zone(&moto).await;
    // A zone whose name only starts the same: not a match.
    create_zone(&client, "shop.example.com.au.", "decoy").await;
    let by_name = |zone: &str| {
        let text = format!(
            "zone = \"{zone}\"\nname = \"www.shop.example.com\"\ntype = \"A\"\nvalues = {{ us = \"203.0.113.10\", eu = \"198.51.100.7\" }}\ninsync_timeout_ms = 10000\nendpoint_url = \"{}\"\n",
            moto.url
        );
        checked(&text, |s: &providers::route53::Settings, c| s.check("dns", c)).with_static_credentials(credentials())
    };
    let written = by_name("shop.example.com")
        .run(&order(1, "us"))
        .await
        .expect("found by name");
    assert!(written.contains("INSYNC"), "{written}");
    assert_eq!(records(&client, &zone_id).await.0, ["203.0.113.10"]);

    let twin_id = create_zone(&client, "shop.example.com.", "twin").await;
    let refused = by_name("shop.example.com.")
        .run(&order(2, "eu"))
        .await
        .expect_err("ambiguous");
    assert!(
        matches!(&refused, Failure::Refused(m) if m.contains("2 hosted zones") && m.contains(&zone_id) && m.contains(&twin_id)),
        "{refused:?}"
    );
    assert_eq!(records(&client, &zone_id).await.0, ["203.0.113.10"], "nothing written");

    // The record is inside example.com, but no zone has that name.
    let missing = by_name("example.com").run(&order(2, "eu")).await;
    assert!(
        matches!(&missing, Err(Failure::Refused(m)) if m.contains("no hosted zone is named example.com.")),
        "{missing:?}"
    );
}

/// A controller whose read went stale sends a batch Route 53 refuses as a whole
/// (`InvalidChangeBatch`), and nothing it sent is applied. Route 53 refuses such a batch at its
/// DELETE (the values no longer match); moto checks a DELETE only against values the name ever
/// had, so the conflict here is one moto also detects: the stale batch's CREATE meets the
/// record the newer controller created.
#[tokio::test]
async fn route53_a_stale_read_is_refused_by_route53_and_nothing_is_overwritten() {
    let moto = Moto::start();
    let (client, zone_id) = zone(&moto).await;
    let old_controller = route53_step(&moto, &zone_id);
    let new_controller = route53_step(&moto, &zone_id);
    old_controller.run(&order(1, "us")).await.expect("first write");

    // The old controller reads, then the new one writes before the old one's batch arrives.
    let read = old_controller.observe().await.expect("read");
    new_controller.run(&order(3, "eu")).await.expect("newer write");
    let refused = old_controller
        .apply(&read, &order(2, "eu"))
        .await
        .expect_err("stale batch");
    assert!(
        matches!(&refused, Failure::Fenced(m) if m.contains("InvalidChangeBatch")),
        "{refused:?}"
    );
    let (values, fence) = records(&client, &zone_id).await;
    assert_eq!(values, ["198.51.100.7"]);
    assert!(fence[0].contains("generation=3"), "the newer fence stands: {fence:?}");
}

/// The SDK sends a request again when its answer is lost (a timeout, a reset connection); the
/// second send of a change batch Route 53 already applied is refused (`InvalidChangeBatch`).
/// That refusal is this order's own write showing, not a concurrent writer: success, not a
/// fence that would stop the runbook for an operator.
#[tokio::test]
async fn route53_a_resent_batch_that_was_already_applied_is_success_not_a_fence() {
    let moto = Moto::start();
    let (client, zone_id) = zone(&moto).await;
    let step = route53_step(&moto, &zone_id);
    step.run(&order(1, "us")).await.expect("first write");

    let read = step.observe().await.expect("read");
    step.apply(&read, &order(2, "eu")).await.expect("the first send");
    let resent = step.apply(&read, &order(2, "eu")).await;
    assert!(
        matches!(&resent, Ok(m) if m.contains("an earlier send of this change batch was applied")),
        "{resent:?}"
    );
    let (values, fence) = records(&client, &zone_id).await;
    assert_eq!(values, ["198.51.100.7"]);
    assert!(fence[0].contains("generation=2 region=eu"), "{fence:?}");

    // The same refusal with another generation's fence standing stays a fence.
    let stale = step.apply(&read, &order(1, "eu")).await;
    assert!(matches!(&stale, Err(Failure::Fenced(_))), "{stale:?}");
}

#[tokio::test]
async fn route53_a_record_someone_else_changed_is_fenced_not_overwritten() {
    let moto = Moto::start();
    let (client, zone_id) = zone(&moto).await;
    let step = route53_step(&moto, &zone_id);
    step.run(&order(1, "us")).await.expect("first write");
    upsert_a(&client, &zone_id, "192.0.2.99").await;

    let fenced = step.run(&order(2, "eu")).await.expect_err("fenced");
    assert!(
        matches!(&fenced, Failure::Fenced(m) if m.contains("someone else changed")),
        "{fenced:?}"
    );
    assert_eq!(
        records(&client, &zone_id).await.0,
        ["192.0.2.99"],
        "nothing overwritten"
    );
}

#[tokio::test]
async fn route53_failover_health_inverts_the_primary_check_and_reads_it_back() {
    let moto = Moto::start();
    let client = aws_sdk_route53::Client::new(&sdk(&moto, "us-east-1").await);
    let created = client
        .create_health_check()
        .caller_reference("primary")
        .health_check_config(
            aws_sdk_route53::types::HealthCheckConfig::builder()
                .r#type(aws_sdk_route53::types::HealthCheckType::Http)
                .ip_address("192.0.2.10")
                .port(80)
                .resource_path("/health")
                .build()
                .expect("config"),
        )
        .send()
        .await
        .expect("create health check");
    let id = created.health_check().expect("health check").id().to_string();
    let text = format!(
        "health_check_id = \"{id}\"\nprimary = \"us\"\nendpoint_url = \"{}\"\n",
        moto.url
    );
    let step = checked(&text, |s: &providers::route53::FailoverHealthSettings, c| {
        s.check("primary-health", c)
    })
    .with_static_credentials(credentials());
    let inverted = |client: aws_sdk_route53::Client, id: String| async move {
        let read = client.get_health_check().health_check_id(id).send().await.expect("get");
        let config = read
            .health_check()
            .and_then(|h| h.health_check_config())
            .cloned()
            .expect("config");
        (config.inverted().unwrap_or(false), config.disabled().unwrap_or(false))
    };

    let done = step.run(&order(2, "eu")).await.expect("invert");
    assert!(done.contains("Inverted=true"), "{done}");
    assert!(
        done.contains("Route 53 applies this to DNS answers at its next evaluation of the check"),
        "{done}"
    );
    assert_eq!(inverted(client.clone(), id.clone()).await, (true, false));
    let again = step.run(&order(2, "eu")).await.expect("re-run");
    assert!(again.contains("already"), "{again}");
    step.run(&order(3, "us")).await.expect("back to the primary");
    assert_eq!(inverted(client.clone(), id.clone()).await, (false, false));
}

fn ssm_step(moto: &Moto) -> providers::ssm::SsmParameter {
    let text = format!(
        "name = \"/shop/prod/AWS_REGION\"\nvalues = {{ us = \"us-east-1\", eu = \"eu-west-1\" }}\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
        moto.url
    );
    checked(&text, |s: &providers::ssm::Settings, c| s.check("app-region", c)).with_static_credentials(credentials())
}

/// The value of the test's parameter as SSM holds it.
async fn parameter(client: &aws_sdk_ssm::Client) -> Option<String> {
    let read = client
        .get_parameter()
        .name("/shop/prod/AWS_REGION")
        .send()
        .await
        .expect("get");
    read.parameter().and_then(|p| p.value()).map(str::to_string)
}

#[tokio::test]
async fn ssm_parameter_puts_reads_back_and_fences() {
    let moto = Moto::start();
    let client = aws_sdk_ssm::Client::new(&sdk(&moto, "us-east-1").await);
    let step = ssm_step(&moto);

    let created = step.run(&order(1, "us")).await.expect("create");
    assert!(created.contains("set to us-east-1"), "{created}");
    let moved = step.run(&order(2, "eu")).await.expect("overwrite");
    assert!(moved.contains("set to eu-west-1"), "{moved}");
    assert_eq!(parameter(&client).await.as_deref(), Some("eu-west-1"));

    let reader =
        providers::ssm::ParameterReader::new("/shop/prod/AWS_REGION", "us-east-1", None, Some(moto.url.clone()))
            .expect("reader")
            .with_static_credentials(credentials());
    let pointer = reader.read().await.expect("pointer read");
    assert_eq!(pointer.value, "eu-west-1");
    let written = pointer.written.expect("written by the step");
    assert_eq!((written.generation, written.region.as_str()), (2, "eu"));

    let again = step.run(&order(2, "eu")).await.expect("re-run");
    assert!(again.contains("already holds"), "{again}");
    let stale = step.run(&order(1, "us")).await.expect_err("stale");
    assert!(matches!(&stale, Failure::Fenced(m) if m.contains("stale")), "{stale:?}");

    client
        .put_parameter()
        .name("/shop/prod/AWS_REGION")
        .value("ap-south-1")
        .overwrite(true)
        .send()
        .await
        .expect("someone else's put");
    let fenced = step.run(&order(3, "us")).await.expect_err("someone else changed it");
    assert!(matches!(&fenced, Failure::Fenced(_)), "{fenced:?}");
    assert_eq!(
        parameter(&client).await.as_deref(),
        Some("ap-south-1"),
        "nothing overwritten"
    );
}

/// A `SecureString` parameter under a customer key stays a `SecureString` under that key
/// when the step overwrites it.
#[tokio::test]
async fn ssm_parameter_keeps_a_secure_strings_type_and_key() {
    let moto = Moto::start();
    let client = aws_sdk_ssm::Client::new(&sdk(&moto, "us-east-1").await);
    client
        .put_parameter()
        .name("/shop/prod/AWS_REGION")
        .value("us-east-1")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .key_id("alias/shop-config")
        // Moto's first SSM request can outlast the SDK's 5 s attempt on a loaded machine; its
        // retry must not fail on the parameter the first attempt created.
        .overwrite(true)
        .send()
        .await
        .expect("the operator's parameter");
    let step = ssm_step(&moto);
    let moved = step.run(&order(2, "eu")).await.expect("overwrite");
    assert!(moved.contains("set to eu-west-1"), "{moved}");
    let read = client
        .get_parameter()
        .name("/shop/prod/AWS_REGION")
        .with_decryption(true)
        .send()
        .await
        .expect("get");
    let parameter = read.parameter().expect("parameter");
    assert_eq!(parameter.value(), Some("eu-west-1"));
    assert_eq!(
        parameter.r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    let described = client.describe_parameters().send().await.expect("describe");
    let meta = described
        .parameters()
        .iter()
        .find(|p| p.name() == Some("/shop/prod/AWS_REGION"))
        .expect("listed");
    assert_eq!(meta.key_id(), Some("alias/shop-config"));
}

#[tokio::test]
async fn cloudwatch_lag_is_read_from_the_metrics_put() {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

    let moto = Moto::start();
    let client = aws_sdk_cloudwatch::Client::new(&sdk(&moto, "us-east-1").await);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let datum = |metric: &str, table: &str, value: f64, unit: StandardUnit| {
        MetricDatum::builder()
            .metric_name(metric)
            .dimensions(Dimension::builder().name("TableName").value(table).build())
            .dimensions(Dimension::builder().name("ReceivingRegion").value("eu-west-1").build())
            .value(value)
            .unit(unit)
            .timestamp(aws_smithy_types::DateTime::from_secs(now_s))
            .build()
    };
    client
        .put_metric_data()
        .namespace("AWS/DynamoDB")
        .metric_data(datum("ReplicationLatency", "orders", 350.0, StandardUnit::Milliseconds))
        .metric_data(datum("ReplicationLatency", "carts", 0.0, StandardUnit::Milliseconds))
        .metric_data(datum("PendingReplicationCount", "carts", 4.0, StandardUnit::Count))
        .send()
        .await
        .expect("put metrics");

    let reader = providers::cloudwatch::LagReader::new().with_static_credentials(credentials());
    let access = Access {
        region: "us-east-1".into(),
        profile: None,
        endpoint_url: Some(moto.url.clone()),
        credentials_file: None,
    };
    let lag = |table: &'static str| {
        let (reader, access) = (&reader, &access);
        async move { reader.replication_lag(access, table, "eu-west-1", 300, now_s).await }
    };
    assert_eq!(lag("orders").await, Ok(350));
    assert_eq!(lag("carts").await, Ok(1), "pending changes are never a lag of 0");
    let idle = lag("sessions").await.expect_err("no datapoints");
    assert!(idle.contains("no ReplicationLatency datapoint"), "{idle}");
}

#[tokio::test]
async fn route53_points_an_alias_at_the_active_regions_load_balancer() {
    let moto = Moto::start();
    let (client, zone_id) = zone(&moto).await;
    let text = format!(
        r#"
zone_id = "{zone_id}"
name = "shop.example.com"
type = "A"
alias = {{ us = {{ zone_id = "Z35SXDOTRQ7X7K", dns_name = "shop-us-1.us-east-1.elb.amazonaws.com" }}, eu = {{ zone_id = "Z32O12XQLNTSW2", dns_name = "shop-eu-1.eu-west-1.elb.amazonaws.com", evaluate_target_health = true }} }}
insync_timeout_ms = 10000
endpoint_url = "{}"
"#,
        moto.url
    );
    let step =
        checked(&text, |s: &providers::route53::Settings, c| s.check("shop", c)).with_static_credentials(credentials());
    step.run(&order(1, "us")).await.expect("first write");
    let moved = step.run(&order(2, "eu")).await.expect("failover");
    assert!(
        moved.contains("alias shop-eu-1.eu-west-1.elb.amazonaws.com."),
        "{moved}"
    );
    let listed = client
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await
        .expect("list");
    let alias = listed
        .resource_record_sets()
        .iter()
        .find(|set| set.name() == "shop.example.com." && *set.r#type() == RrType::A)
        .and_then(|set| set.alias_target().cloned())
        .expect("an alias record");
    assert_eq!(alias.hosted_zone_id(), "Z32O12XQLNTSW2");
    assert!(
        alias.dns_name().starts_with("shop-eu-1.eu-west-1.elb.amazonaws.com"),
        "{alias:?}"
    );
    assert!(alias.evaluate_target_health());
    let again = step.run(&order(2, "eu")).await.expect("re-run");
    assert!(again.contains("already holds"), "{again}");
}

/// SSM's `DescribeParameters` answers "on a best-effort basis": a page may hold none of the
/// matching parameters and a `NextToken`, also with a filter matching one name (moto never
/// does this, so a fake speaking SSM's JSON protocol answers here). The step must read on: the
/// description on page 2 says generation 5 wrote the parameter, so an order of generation 3 is
/// stale and writes nothing.
#[tokio::test]
async fn ssm_parameter_reads_every_page_of_describe_parameters_before_it_judges_the_fence() {
    use std::sync::{Arc, Mutex};

    let puts = Arc::new(Mutex::new(0));
    let seen_puts = Arc::clone(&puts);
    let url = crate::fake::serve(move |request| {
        let target = request
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = request.json();
        let reply = |value: serde_json::Value| {
            crate::fake::answer(200, value, &[("content-type", "application/x-amz-json-1.1")])
        };
        match target.as_str() {
            "AmazonSSM.GetParameter" => reply(serde_json::json!({
                "Parameter": {"Name": "/shop/prod/AWS_REGION", "Value": "eu-west-1", "Type": "String", "Version": 7}
            })),
            "AmazonSSM.DescribeParameters" => match body.get("NextToken").and_then(|t| t.as_str()) {
                None => reply(serde_json::json!({"Parameters": [], "NextToken": "page-2"})),
                Some("page-2") => reply(serde_json::json!({"Parameters": [{
                    "Name": "/shop/prod/AWS_REGION",
                    "Type": "String",
                    "Version": 7,
                    "Description": "switchyard generation=5 region=eu (failover); written by the ssm_parameter step"
                }]})),
                Some(other) => crate::fake::answer(
                    400,
                    serde_json::json!({"__type": "InvalidNextToken", "message": other}),
                    &[],
                ),
            },
            "AmazonSSM.PutParameter" => {
                *seen_puts.lock().expect("lock") += 1;
                reply(serde_json::json!({"Version": 8, "Tier": "Standard"}))
            }
            other => crate::fake::answer(
                400,
                serde_json::json!({"__type": "UnknownOperation", "message": other}),
                &[],
            ),
        }
    })
    .await;
    let text = format!(
        "name = \"/shop/prod/AWS_REGION\"\nvalues = {{ us = \"us-east-1\", eu = \"eu-west-1\" }}\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n"
    );
    let step = checked(&text, |s: &providers::ssm::Settings, c| s.check("app-region", c))
        .with_static_credentials(credentials());
    let stale = step.run(&order(3, "us")).await;
    assert!(
        matches!(&stale, Err(Failure::Fenced(m)) if m.contains("generation 5")),
        "{stale:?}"
    );
    assert_eq!(*puts.lock().expect("lock"), 0, "nothing written");
}

/// The health check of [`route53_failover_health_takes_a_resent_update_route53_had_applied_as_done`]
/// as Route 53's REST-XML API returns it.
fn health_check_xml(root: &str, version: i64, inverted: bool) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<{root} xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><HealthCheck><Id>{HEALTH_CHECK}</Id><CallerReference>primary</CallerReference><HealthCheckConfig><IPAddress>192.0.2.10</IPAddress><Port>80</Port><Type>HTTP</Type><ResourcePath>/health</ResourcePath><Inverted>{inverted}</Inverted><Disabled>false</Disabled></HealthCheckConfig><HealthCheckVersion>{version}</HealthCheckVersion></HealthCheck></{root}>"#
    )
}

const HEALTH_CHECK: &str = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718";

/// `UpdateHealthCheck` applied but answered with a 5xx (its answer lost, as far as the client
/// can tell): the SDK sends it again, and Route 53 refuses the resend with
/// `HealthCheckVersionMismatch`, its version being stale by then. moto checks no versions, so
/// a fake speaking Route 53's REST-XML answers. The check holds what the order wants: done,
/// not a fence that stops the runbook.
#[tokio::test]
async fn route53_failover_health_takes_a_resent_update_route53_had_applied_as_done() {
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};

    // (version, inverted, updates received)
    let state = Arc::new(Mutex::new((1i64, false, 0u32)));
    let shared = Arc::clone(&state);
    let url = crate::fake::serve(move |request| {
        let xml = |status: u16, body: String| {
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [("content-type", "text/xml")],
                body,
            )
                .into_response()
        };
        let mut state = shared.lock().expect("lock");
        let path = format!("/2013-04-01/healthcheck/{HEALTH_CHECK}");
        if request.path != path {
            return xml(404, String::new());
        }
        match request.method.as_str() {
            "GET" => xml(200, health_check_xml("GetHealthCheckResponse", state.0, state.1)),
            "POST" => {
                state.2 += 1;
                let body = String::from_utf8_lossy(&request.body).into_owned();
                if !body.contains(&format!("<HealthCheckVersion>{}</HealthCheckVersion>", state.0)) {
                    return xml(409, "<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>HealthCheckVersionMismatch</Code><Message>The value of HealthCheckVersion in the request doesn't match the value of HealthCheckVersion in the health check.</Message></Error><RequestId>r2</RequestId></ErrorResponse>".into());
                }
                state.0 += 1;
                state.1 = body.contains("<Inverted>true</Inverted>");
                if state.2 == 1 {
                    // Applied, but the answer is an error: the client cannot tell.
                    return xml(500, "<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Receiver</Type><Code>InternalFailure</Code><Message>We encountered an internal error. Please try again.</Message></Error><RequestId>r1</RequestId></ErrorResponse>".into());
                }
                xml(200, health_check_xml("UpdateHealthCheckResponse", state.0, state.1))
            }
            _ => xml(405, String::new()),
        }
    })
    .await;
    let text = format!("health_check_id = \"{HEALTH_CHECK}\"\nprimary = \"us\"\nendpoint_url = \"{url}\"\n");
    let step = checked(&text, |s: &providers::route53::FailoverHealthSettings, c| {
        s.check("primary-health", c)
    })
    .with_static_credentials(credentials());
    let done = step.run(&order(2, "eu")).await;
    assert!(
        matches!(&done, Ok(m) if m.contains("Inverted=true") && m.contains("resend")),
        "{done:?}"
    );
    let state = state.lock().expect("lock");
    assert_eq!((state.0, state.1, state.2), (2, true, 2), "applied once, sent twice");
}

/// The text between `start` and the next `end` in `text`, if any.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// A fake of Route 53's REST-XML API for one hosted zone: `ListResourceRecordSets` of one name
/// and type, and `ChangeResourceRecordSets` applying the batch's DELETEs and CREATEs; its
/// answer carries `change_info` (Route 53 documents a `ChangeInfo` with the change's `Id`:
/// here left out or emptied, an answer that is malformed). Counts `GetChange` calls.
async fn route53_without_change_ids(change_info: &'static str) -> (String, std::sync::Arc<std::sync::Mutex<u32>>) {
    use axum::response::IntoResponse;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    const NS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
    // (name, type) -> the <ResourceRecordSet> element as sent.
    let sets: Arc<Mutex<BTreeMap<(String, String), String>>> = Arc::default();
    let get_changes = Arc::new(Mutex::new(0u32));
    let seen = Arc::clone(&get_changes);
    let url = crate::fake::serve(move |request| {
        let xml = |status: u16, body: String| {
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [("content-type", "text/xml")],
                body,
            )
                .into_response()
        };
        let key = |name: &str, kind: &str| {
            (
                format!("{}.", name.trim_end_matches('.').to_ascii_lowercase()),
                kind.to_string(),
            )
        };
        let mut sets = sets.lock().expect("lock");
        let path = request.path.trim_end_matches('/');
        if path.starts_with("/2013-04-01/change/") {
            *seen.lock().expect("lock") += 1;
            return xml(404, format!("<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>NoSuchChange</Code><Message>A change with the specified change ID does not exist.</Message></Error><RequestId>r</RequestId></ErrorResponse>"));
        }
        if path != "/2013-04-01/hostedzone/Z0FAKE/rrset" {
            return xml(404, String::new());
        }
        if request.method == axum::http::Method::GET {
            let wanted = key(request.query("name").unwrap_or(""), request.query("type").unwrap_or(""));
            let found = sets.get(&wanted).cloned().unwrap_or_default();
            return xml(200, format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListResourceRecordSetsResponse xmlns=\"{NS}\"><ResourceRecordSets>{found}</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>1</MaxItems></ListResourceRecordSetsResponse>"));
        }
        let body = String::from_utf8_lossy(&request.body).into_owned();
        for change in body.split("<Change>").skip(1) {
            let (Some(action), Some(set)) = (
                between(change, "<Action>", "</Action>"),
                between(change, "<ResourceRecordSet>", "</ResourceRecordSet>"),
            ) else {
                continue;
            };
            let name = between(set, "<Name>", "</Name>").unwrap_or("");
            let kind = between(set, "<Type>", "</Type>").unwrap_or("");
            match action {
                "DELETE" => {
                    sets.remove(&key(name, kind));
                }
                _ => {
                    sets.insert(key(name, kind), format!("<ResourceRecordSet>{set}</ResourceRecordSet>"));
                }
            }
        }
        xml(200, format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ChangeResourceRecordSetsResponse xmlns=\"{NS}\">{change_info}</ChangeResourceRecordSetsResponse>"))
    })
    .await;
    (url, get_changes)
}

/// An answer to ChangeResourceRecordSets without a change id: a clear error, no pending change
/// kept that could never finish, and the next attempt finds the record set and is done.
#[tokio::test]
async fn route53_a_change_answer_without_a_change_id_is_an_error_that_the_next_attempt_ends() {
    for change_info in [
        "",
        "<ChangeInfo><Id></Id><Status>PENDING</Status><SubmittedAt>2024-01-01T00:00:00Z</SubmittedAt></ChangeInfo>",
    ] {
        let (url, get_changes) = route53_without_change_ids(change_info).await;
        let text = format!(
            "zone_id = \"Z0FAKE\"\nname = \"www.shop.example.com\"\ntype = \"A\"\nvalues = {{ us = \"203.0.113.10\", eu = \"198.51.100.7\" }}\ninsync_timeout_ms = 2000\nendpoint_url = \"{url}\"\n"
        );
        let step = checked(&text, |s: &providers::route53::Settings, c| s.check("dns", c))
            .with_static_credentials(credentials());
        let first = step.run(&order(2, "eu")).await;
        assert!(
            matches!(&first, Err(Failure::Retryable(m)) if m.contains("no change id")),
            "{change_info:?}: {first:?}"
        );
        let second = step.run(&order(2, "eu")).await;
        assert!(
            matches!(&second, Ok(m) if m.contains("already holds 198.51.100.7")),
            "{change_info:?}: {second:?}"
        );
        assert_eq!(
            *get_changes.lock().expect("lock"),
            0,
            "GetChange never asked for an empty id"
        );
    }
}
