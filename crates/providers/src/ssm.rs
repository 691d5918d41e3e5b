//! `ssm_parameter`: writes the active region into the SSM Parameter Store parameter the apps
//! read `AWS_REGION` from, and [`ParameterReader`], which `switchyard pointer watch
//! --ssm-parameter` uses to follow it on hosts that cannot reach the controller.
//!
//! SSM has no conditional put, so the step fences on what it reads just before writing: the
//! parameter's description carries `switchyard generation=N region=R`; a description with a
//! newer generation, or a value that is not what that generation wrote (someone else changed
//! it), is `Fenced` and nothing is written. The put (`Overwrite`) carries the order's
//! generation in the description; then `GetParameter` and `DescribeParameters` read it back
//! and a newer generation seen there is reported as fenced too. The window between the read
//! and the put is the only race left, and the read-back reports it.

use std::collections::BTreeMap;

use toml::Spanned;

use crate::Checker;
#[cfg(feature = "aws")]
use crate::Failure;
use crate::aws::{self, Access};
#[cfg(feature = "aws")]
use crate::{Order, Outcome};

/// The SDK client (nothing in a build without AWS support).
#[cfg(feature = "aws")]
type SdkClient = aws_sdk_ssm::Client;
#[cfg(not(feature = "aws"))]
type SdkClient = ();

/// Longest parameter name SSM accepts, in bytes.
pub const NAME_BYTES_MAX: usize = 1011;
/// Longest value the step writes, in bytes (a region name is short; SSM's limit is 4 KiB).
pub const VALUE_BYTES_MAX: usize = 256;
/// Longest description SSM accepts, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 1024;
/// Pages of `DescribeParameters` read at most while looking for the parameter's description.
pub const DESCRIBE_PAGES_MAX: u32 = 50;

aws::aws_settings! {
    /// `[runbook.ssm_parameter]`; its `region` is the AWS region that holds the parameter.
    pub struct Settings {
        /// The parameter, like `/shop/prod/AWS_REGION`.
        pub name: Spanned<String>,
        /// Per region the value to write; default: the region's name.
        #[serde(default)]
        pub values: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    }
}

/// Why `name` is not an SSM parameter name, if it is not.
pub fn check_parameter_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("must have 1..={NAME_BYTES_MAX} bytes"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return Err("may hold only letters, digits and _ . - /".into());
    }
    let lower = name.trim_start_matches('/').to_ascii_lowercase();
    if lower.starts_with("aws") || lower.starts_with("ssm") {
        return Err("must not start with aws or ssm (reserved by AWS)".into());
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err("is a path without the leading /".into());
    }
    Ok(())
}

/// What the description says Switchyard wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub generation: u64,
    pub region: String,
}

impl Written {
    pub fn description(&self, kind: &str) -> String {
        let mut text = format!(
            "switchyard generation={} region={} ({kind}); written by the ssm_parameter step",
            self.generation, self.region
        );
        while text.len() > DESCRIPTION_BYTES_MAX {
            text.pop();
        }
        text
    }

    pub fn parse(description: &str) -> Option<Written> {
        let rest = description.trim().strip_prefix("switchyard ")?;
        let (mut generation, mut region) = (None, None);
        for word in rest.split_whitespace() {
            if let Some((key, value)) = word.split_once('=') {
                match key {
                    "generation" => generation = value.parse().ok(),
                    "region" => region = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        Some(Written {
            generation: generation?,
            region: region?,
        })
    }
}

/// What a run read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// `None`: the parameter does not exist.
    pub value: Option<String>,
    pub description: Option<String>,
    /// The parameter's type and KMS key as DescribeParameters lists them: an overwrite sends
    /// them back, so a `SecureString` under a customer key stays under that key (the
    /// reference says a put without `KeyId` uses the account's default key).
    pub kind: Option<String>,
    pub key_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Done,
    Put,
    Fenced(String),
}

/// The decision of one run (pure): `values` maps every region to its value.
pub fn decide(view: &View, values: &BTreeMap<String, String>, region: &str, generation: u64) -> Decision {
    let Some(desired) = values.get(region) else {
        return Decision::Fenced(format!("no value for region '{region}'"));
    };
    let written = view.description.as_deref().and_then(Written::parse);
    let holds = view.value.as_deref().unwrap_or("nothing");
    match &written {
        Some(written) if written.generation > generation => {
            return Decision::Fenced(format!(
                "generation {} (region {}) already wrote the parameter; this order's generation {generation} is stale",
                written.generation, written.region
            ));
        }
        Some(written) if view.value.as_ref() != values.get(&written.region) => {
            return Decision::Fenced(format!(
                "someone else changed the parameter since generation {} wrote it for region {}: it holds {holds}; nothing overwritten (put the value back, or clear the description to let Switchyard take it over)",
                written.generation, written.region
            ));
        }
        None if view
            .value
            .as_ref()
            .is_some_and(|v| !values.values().any(|known| known == v)) =>
        {
            return Decision::Fenced(format!(
                "the parameter holds {holds}, which is none of the configured regions' values, and Switchyard never wrote it; nothing overwritten (set it to one of the configured values, or fix the step's values)"
            ));
        }
        _ => {}
    }
    let fenced_here = written.as_ref().is_some_and(|w| w.generation == generation);
    if view.value.as_ref() == Some(desired) && fenced_here {
        Decision::Done
    } else {
        Decision::Put
    }
}

impl Settings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<SsmParameter> {
        let what = format!("ssm_parameter step '{step}'");
        let table = self.name.span();
        let (mut ok, access) = self.access_keys().check(&what, table.clone(), None, checker);
        if let Err(problem) = check_parameter_name(self.name.get_ref()) {
            checker.error(
                self.name.span(),
                format!("{what}: name '{}' {problem}", self.name.get_ref()),
                "name the parameter the apps read, like /shop/prod/AWS_REGION".into(),
            );
            ok = false;
        }
        let mut values: BTreeMap<String, String> = checker.regions().iter().map(|r| (r.clone(), r.clone())).collect();
        if let Some(given) = &self.values {
            for (region, value) in given.get_ref() {
                if !checker.regions().contains(region) {
                    checker.error(
                        given.span(),
                        format!("{what}: '{region}' is not a configured region"),
                        format!(
                            "use the names of [[regions]]: {}",
                            checker.regions().iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                    ok = false;
                }
                let text = value.get_ref();
                if text.trim().is_empty() || text.len() > VALUE_BYTES_MAX || text.trim() != text {
                    checker.error(
                        value.span(),
                        format!("{what}: the value of region '{region}' is empty, padded or longer than {VALUE_BYTES_MAX} bytes"),
                        "give the value the apps should read, like eu-west-1".into(),
                    );
                    ok = false;
                }
                values.insert(region.clone(), text.clone());
            }
        }
        if !aws::check_built(&what, table, checker) {
            return None;
        }
        if !ok {
            return None;
        }
        Some(SsmParameter {
            step: step.to_string(),
            name: self.name.get_ref().clone(),
            values,
            aws: aws::SdkClient::new(access?),
        })
    }
}

/// The `ssm_parameter` step, ready to run.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
#[derive(Debug)]
pub struct SsmParameter {
    step: String,
    name: String,
    values: BTreeMap<String, String>,
    aws: aws::SdkClient<SdkClient>,
}

aws::step_entry_points!(SsmParameter, aws, "aws", aws::not_built());

impl SsmParameter {
    #[cfg(feature = "aws")]
    async fn run_live(&self, order: &Order) -> Outcome {
        let client = self.aws.get(aws_sdk_ssm::Client::new).await;
        let name = &self.name;
        let view = read_view(client, name).await?;
        let Some(desired) = self.values.get(&order.to) else {
            return Err(Failure::Refused(format!(
                "ssm_parameter step '{}' has no value for region '{}'",
                self.step, order.to
            )));
        };
        match decide(&view, &self.values, &order.to, order.generation) {
            Decision::Fenced(reason) => return Err(Failure::Fenced(format!("parameter {name}: {reason}"))),
            Decision::Done => {
                return Ok(format!(
                    "parameter {name} already holds {desired} (region {}, generation {})",
                    order.to, order.generation
                ));
            }
            Decision::Put => {}
        }
        let written = Written {
            generation: order.generation,
            region: order.to.clone(),
        };
        let mut put = client
            .put_parameter()
            .name(name)
            .value(desired)
            .overwrite(true)
            .description(written.description(&order.kind));
        if view.value.is_none() {
            put = put.r#type(aws_sdk_ssm::types::ParameterType::String);
        } else if view.kind.as_deref() == Some("SecureString") {
            put = put
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .set_key_id(view.key_id.clone());
        }
        let version = put
            .send()
            .await
            .map_err(|e| aws::failure("SSM PutParameter", &e))?
            .version();
        let after = read_view(client, name).await?;
        let read_written = after.description.as_deref().and_then(Written::parse);
        match read_written {
            Some(w) if w.generation == order.generation && after.value.as_ref() == Some(desired) => Ok(format!(
                "parameter {name} set to {desired} (region {}, generation {}, version {version})",
                order.to, order.generation
            )),
            Some(w) if w.generation > order.generation => Err(Failure::Fenced(format!(
                "parameter {name}: generation {} wrote after this step",
                w.generation
            ))),
            _ => Err(Failure::Retryable(format!(
                "parameter {name} reads back {} after a put of {desired} (version {version})",
                after.value.as_deref().unwrap_or("nothing")
            ))),
        }
    }
}

/// Reads the value (`GetParameter`) and the description (`DescribeParameters`).
#[cfg(feature = "aws")]
async fn read_view(client: &aws_sdk_ssm::Client, name: &str) -> Result<View, Failure> {
    let value = match client.get_parameter().name(name).with_decryption(true).send().await {
        Ok(answer) => answer.parameter().and_then(|p| p.value()).map(String::from),
        Err(error) if aws::error_code(&error) == Some("ParameterNotFound") => None,
        Err(error) => return Err(aws::failure("SSM GetParameter", &error)),
    };
    if value.is_none() {
        return Ok(View::default());
    }
    let filter = aws_sdk_ssm::types::ParameterStringFilter::builder()
        .key("Name")
        .option("Equals")
        .values(name)
        .build()
        .map_err(|e| Failure::Refused(format!("build the DescribeParameters filter: {e}")))?;
    // DescribeParameters answers "on a best-effort basis": a page may hold fewer items than
    // asked for, even none, with a NextToken, also with a filter matching one name. Stopping
    // at the first page would read a parameter Switchyard fenced as one it never wrote.
    let mut token: Option<String> = None;
    let mut pages = 0;
    let (description, kind, key_id) = loop {
        let described = client
            .describe_parameters()
            .parameter_filters(filter.clone())
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| aws::failure("SSM DescribeParameters", &e))?;
        pages += 1;
        if let Some(found) = described.parameters().iter().find(|p| p.name() == Some(name)) {
            break (
                found.description().map(String::from),
                found.r#type().map(|t| t.as_str().to_string()),
                found.key_id().map(String::from),
            );
        }
        match described.next_token() {
            Some(next) if !next.is_empty() && pages < DESCRIBE_PAGES_MAX => token = Some(next.to_string()),
            Some(next) if !next.is_empty() => {
                return Err(Failure::Retryable(format!(
                    "SSM DescribeParameters did not list parameter {name} within {DESCRIBE_PAGES_MAX} pages"
                )));
            }
            _ => {
                // GetParameter found it: the listing lags (a parameter just created).
                return Err(Failure::Retryable(format!(
                    "SSM DescribeParameters does not list parameter {name}, which GetParameter read; its description (the fence) is unknown"
                )));
            }
        }
    };
    Ok(View {
        value,
        description,
        kind,
        key_id,
    })
}

/// What `pointer watch --ssm-parameter` reads: the value, and the region and generation of the
/// description when Switchyard wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointerReading {
    pub value: String,
    pub written: Option<Written>,
}

/// Reads one parameter for `pointer watch`, with the same credential chain as the steps.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub struct ParameterReader {
    name: String,
    aws: aws::SdkClient<SdkClient>,
}

aws::reader_credentials!(ParameterReader);

impl ParameterReader {
    /// `region` is the AWS region that holds the parameter; `endpoint_url` overrides AWS's.
    pub fn new(
        name: &str,
        region: &str,
        profile: Option<String>,
        endpoint_url: Option<String>,
    ) -> Result<ParameterReader, String> {
        check_parameter_name(name).map_err(|problem| format!("--ssm-parameter '{name}' {problem}"))?;
        if !aws::valid_region(region) {
            return Err(format!(
                "--ssm-region '{region}' is not an AWS region name (like eu-west-1)"
            ));
        }
        if let Some(url) = &endpoint_url {
            aws::check_endpoint_url(url).map_err(|problem| format!("--ssm-endpoint-url '{url}' {problem}"))?;
        }
        if !cfg!(feature = "aws") {
            return Err(crate::aws::NOT_BUILT.into());
        }
        Ok(ParameterReader {
            name: name.to_string(),
            aws: aws::SdkClient::new(Access {
                region: region.to_string(),
                profile,
                endpoint_url,
                credentials_file: None,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One read; the error carries AWS's error text.
    pub async fn read(&self) -> Result<PointerReading, String> {
        #[cfg(feature = "aws")]
        {
            let client = self.aws.get(aws_sdk_ssm::Client::new).await;
            let view = read_view(client, &self.name).await.map_err(|f| f.to_string())?;
            let value = view
                .value
                .ok_or_else(|| format!("parameter {} does not exist", self.name))?;
            Ok(PointerReading {
                value,
                written: view.description.as_deref().and_then(Written::parse),
            })
        }
        #[cfg(not(feature = "aws"))]
        {
            Err(crate::aws::NOT_BUILT.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, String> {
        [("us", "us-east-1"), ("eu", "eu-west-1")]
            .into_iter()
            .map(|(r, v)| (r.to_string(), v.to_string()))
            .collect()
    }

    fn view(value: Option<&str>, written: Option<(u64, &str)>) -> View {
        View {
            kind: None,
            key_id: None,
            value: value.map(String::from),
            description: written.map(|(generation, region)| {
                Written {
                    generation,
                    region: region.into(),
                }
                .description("failover")
            }),
        }
    }

    #[test]
    fn description_round_trips() {
        let written = Written {
            generation: 12,
            region: "eu".into(),
        };
        assert_eq!(Written::parse(&written.description("failover")), Some(written));
        assert_eq!(Written::parse("the region the shop writes to"), None);
    }

    #[test]
    fn decisions() {
        let v = values();
        assert_eq!(decide(&view(None, None), &v, "eu", 1), Decision::Put, "created");
        assert_eq!(
            decide(&view(Some("us-east-1"), None), &v, "eu", 1),
            Decision::Put,
            "taken over"
        );
        assert!(
            matches!(decide(&view(Some("mars-1"), None), &v, "eu", 1), Decision::Fenced(m) if m.contains("none of"))
        );
        assert_eq!(
            decide(&view(Some("us-east-1"), Some((4, "us"))), &v, "eu", 5),
            Decision::Put
        );
        assert!(
            matches!(decide(&view(Some("us-east-1"), Some((6, "us"))), &v, "eu", 5), Decision::Fenced(m) if m.contains("stale"))
        );
        assert!(
            matches!(decide(&view(Some("ap-south-1"), Some((4, "us"))), &v, "eu", 5), Decision::Fenced(m) if m.contains("someone else"))
        );
        assert_eq!(
            decide(&view(Some("eu-west-1"), Some((5, "eu"))), &v, "eu", 5),
            Decision::Done
        );
        assert_eq!(
            decide(&view(Some("eu-west-1"), Some((5, "eu"))), &v, "eu", 6),
            Decision::Put,
            "the fence moves up"
        );
    }

    #[test]
    fn parameter_names() {
        assert!(check_parameter_name("/shop/prod/AWS_REGION").is_ok());
        assert!(check_parameter_name("shop_region").is_ok());
        assert!(check_parameter_name("/aws/reference/x").is_err());
        assert!(check_parameter_name("shop/region").is_err());
        assert!(check_parameter_name("has space").is_err());
        assert!(check_parameter_name("").is_err());
    }
}
