//! Watches the infrastructure the controller's runbook acts on — a DNS primary updated with
//! RFC 2136, HAProxy's server states, a Route 53 record, an SSM parameter — and records a
//! `Provider` event whenever what it shows changes, so the report can give an RTO per
//! provider. Read-only: a DNS query, `show servers state` on HAProxy's stats socket,
//! `ListResourceRecordSets` or `GetParameter` (the AWS ones need a build with `aws`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::deployment::{ProviderKind, ProviderWatch};
use super::resolver;
use super::workload::Context;
use crate::measure::EventKind;

/// Pause between two readings of one provider.
pub const PROVIDER_POLL_MS: u64 = 50;
/// Longest wait for one reading.
pub const PROVIDER_READ_TIMEOUT_MS: u64 = 1_000;
/// Longest answer read from HAProxy's runtime API.
pub const HAPROXY_ANSWER_BYTES_MAX: u64 = 1024 * 1024;

/// What one reading shows: the region pointed at (if exactly one) and a description.
type Reading = (Option<String>, String);

/// Route 53 is signed for this region when the watch names none.
pub const ROUTE53_SIGNING_REGION: &str = "us-east-1";

/// The AWS readers of one watch, built once (the SDK's configuration and its connection pool
/// are reused across readings).
enum Aws {
    None,
    Route53(providers::route53::RecordReader),
    Ssm(providers::ssm::ParameterReader),
}

fn access(provider: &ProviderWatch, default_region: &str) -> providers::aws::Access {
    providers::aws::Access {
        region: provider
            .aws_region
            .clone()
            .unwrap_or_else(|| default_region.to_string()),
        profile: provider.profile.clone(),
        endpoint_url: provider.endpoint_url.clone(),
        credentials_file: provider.credentials_file.clone(),
    }
}

fn aws_reader(provider: &ProviderWatch) -> Result<Aws, String> {
    Ok(match provider.kind {
        ProviderKind::Dns | ProviderKind::Haproxy => Aws::None,
        ProviderKind::Route53 => {
            let (Some(zone), Some(record)) = (&provider.zone, &provider.record) else {
                return Err("zone and record are needed".into());
            };
            Aws::Route53(providers::route53::RecordReader::new(
                zone,
                record,
                provider.record_type.as_deref().unwrap_or("A"),
                access(provider, ROUTE53_SIGNING_REGION),
            )?)
        }
        ProviderKind::Ssm => {
            let (Some(parameter), Some(region)) = (&provider.parameter, &provider.aws_region) else {
                return Err("parameter and aws_region are needed".into());
            };
            let mut reader = providers::ssm::ParameterReader::new(
                parameter,
                region,
                provider.profile.clone(),
                provider.endpoint_url.clone(),
            )?;
            if let Some(file) = &provider.credentials_file {
                reader = reader.with_credentials_file(file.clone());
            }
            Aws::Ssm(reader)
        }
    })
}

/// Reads `provider` until the drill stops, recording each change.
pub async fn watch(ctx: Arc<Context>, provider: ProviderWatch) {
    let aws = match aws_reader(&provider) {
        Ok(aws) => aws,
        Err(problem) => {
            // Recorded once: the report then says the provider never switched, and why.
            ctx.recorder.event(EventKind::Provider {
                provider: provider.name.clone(),
                region: None,
                state: format!("cannot be read: {problem}"),
            });
            return;
        }
    };
    let mut last: Option<Reading> = None;
    loop {
        let reading = tokio::time::timeout(Duration::from_millis(PROVIDER_READ_TIMEOUT_MS), read(&provider, &aws))
            .await
            .unwrap_or_else(|_| Err("no answer".to_string()));
        // An unreadable provider says nothing about where it points: keep the last reading.
        if let Ok(reading) = reading
            && last.as_ref() != Some(&reading)
        {
            ctx.recorder.event(EventKind::Provider {
                provider: provider.name.clone(),
                region: reading.0.clone(),
                state: reading.1.clone(),
            });
            last = Some(reading);
        }
        if !ctx.pause(PROVIDER_POLL_MS).await {
            break;
        }
    }
}

async fn read(provider: &ProviderWatch, aws: &Aws) -> Result<Reading, String> {
    match aws {
        Aws::Route53(reader) => {
            let values = reader.read().await?;
            return Ok(dns_region(&provider.regions, &values));
        }
        Aws::Ssm(reader) => {
            let reading = reader.read().await?;
            return Ok(dns_region(&provider.regions, std::slice::from_ref(&reading.value)));
        }
        Aws::None => {}
    }
    match provider.kind {
        ProviderKind::Route53 | ProviderKind::Ssm => Err("no AWS reader".into()),
        ProviderKind::Dns => {
            let (Some(server), Some(record)) = (provider.dns_server, &provider.record) else {
                return Err("dns_server and record are needed".into());
            };
            let answer = resolver::query(server, record).await.map_err(|e| e.to_string())?;
            let mut addresses: Vec<String> = answer.addresses.iter().map(|a| a.to_string()).collect();
            addresses.sort();
            Ok(dns_region(&provider.regions, &addresses))
        }
        ProviderKind::Haproxy => {
            let answer = match (&provider.socket, &provider.address) {
                (Some(path), _) => talk(tokio::net::UnixStream::connect(path).await.map_err(|e| e.to_string())?).await,
                (None, Some(address)) => {
                    talk(
                        tokio::net::TcpStream::connect(address)
                            .await
                            .map_err(|e| e.to_string())?,
                    )
                    .await
                }
                (None, None) => return Err("socket or address is needed".into()),
            }
            .map_err(|e| e.to_string())?;
            haproxy_region(&provider.regions, &answer)
        }
    }
}

/// The region whose addresses are exactly the answer.
pub fn dns_region(regions: &BTreeMap<String, Vec<String>>, addresses: &[String]) -> Reading {
    let region = regions
        .iter()
        .find(|(_, values)| {
            let mut values = (*values).clone();
            values.sort();
            values == addresses
        })
        .map(|(region, _)| region.clone());
    let state = if addresses.is_empty() {
        "no answer".to_string()
    } else {
        format!("answers {}", addresses.join(", "))
    };
    (region, state)
}

/// From `show servers state`: the region whose listed servers are all ready while no other
/// region's is (maintenance or drain per HAProxy's admin-state bits).
pub fn haproxy_region(regions: &BTreeMap<String, Vec<String>>, answer: &str) -> Result<Reading, String> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("1") {
        return Err(format!(
            "not a server state: {}",
            answer.lines().next().unwrap_or_default()
        ));
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or("no header")?
        .split_whitespace()
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .ok_or(format!("no column {name}"))
    };
    let (backend, server, admin) = (column("be_name")?, column("srv_name")?, column("srv_admin_state")?);
    let mut ready = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(b), Some(s), Some(bits)) = (fields.get(backend), fields.get(server), fields.get(admin)) else {
            continue;
        };
        // Forced, inherited or resolution maintenance, or drain: not taking new traffic.
        let bits: u32 = bits.parse().map_err(|_| format!("bad admin state in '{line}'"))?;
        ready.insert(format!("{b}/{s}"), bits & (0x01 | 0x02 | 0x20 | 0x08 | 0x10) == 0);
    }
    let region_ready = |servers: &Vec<String>| servers.iter().all(|s| ready.get(s).copied().unwrap_or(false));
    let region_idle = |servers: &Vec<String>| servers.iter().all(|s| !ready.get(s).copied().unwrap_or(false));
    let serving: Vec<&String> = regions
        .iter()
        .filter(|(_, s)| region_ready(s))
        .map(|(r, _)| r)
        .collect();
    let region = match serving.as_slice() {
        [only] if regions.iter().filter(|(r, _)| r != only).all(|(_, s)| region_idle(s)) => Some((*only).clone()),
        _ => None,
    };
    let state = if serving.is_empty() {
        "no region ready".to_string()
    } else {
        format!(
            "ready: {}",
            serving.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    Ok((region, state))
}

async fn talk(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<String> {
    stream.write_all(b"show servers state\n").await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(HAPROXY_ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([
            ("eu".to_string(), vec!["shop/eu".to_string()]),
            ("us".to_string(), vec!["shop/us".to_string()]),
        ])
    }

    fn state(us_bits: u32, eu_bits: u32) -> String {
        format!(
            "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n3 shop 1 us 127.0.0.1 2 {us_bits}\n3 shop 2 eu 127.0.0.1 2 {eu_bits}\n\n"
        )
    }

    #[test]
    fn haproxy_points_at_the_only_ready_region() {
        assert_eq!(
            haproxy_region(&regions(), &state(0, 1)).expect("reads").0.as_deref(),
            Some("us")
        );
        assert_eq!(
            haproxy_region(&regions(), &state(1, 4)).expect("reads").0.as_deref(),
            Some("eu")
        );
        assert_eq!(
            haproxy_region(&regions(), &state(8, 0)).expect("reads").0.as_deref(),
            Some("eu")
        );
        assert_eq!(haproxy_region(&regions(), &state(0, 0)).expect("reads").0, None);
        assert_eq!(haproxy_region(&regions(), &state(1, 1)).expect("reads").0, None);
        assert!(haproxy_region(&regions(), "Permission denied.\n").is_err());
    }

    #[test]
    fn dns_points_at_the_region_with_exactly_that_answer() {
        let regions = BTreeMap::from([
            ("eu".to_string(), vec!["192.0.2.2".to_string()]),
            ("us".to_string(), vec!["192.0.2.1".to_string()]),
        ]);
        assert_eq!(
            dns_region(&regions, &["192.0.2.2".to_string()]).0.as_deref(),
            Some("eu")
        );
        assert_eq!(dns_region(&regions, &[]).0, None);
        assert_eq!(
            dns_region(&regions, &["192.0.2.1".to_string(), "192.0.2.2".to_string()]).0,
            None
        );
    }
}
