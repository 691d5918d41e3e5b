//! What the AWS steps share: where and as whom they call AWS (`Access`: the signing region,
//! the standard credential chain or a named profile, an endpoint override for tests against
//! moto), one HTTPS client (rustls with ring), bounded timeouts and the SDK's standard retry
//! mode for throttling, and how an AWS error becomes a [`Failure`].
//!
//! Credentials never come from the TOML: the SDK's chain reads them from the environment
//! (`AWS_ACCESS_KEY_ID`, ...), the shared files (`profile`), web identity (EKS) or the
//! instance metadata service (IMDSv2). [`check_no_inline_credentials`] turns a key or secret
//! written into a step's table into an error that says so.

use std::ops::Range;

use toml::Spanned;

use crate::{Checker, Failure};

/// Whole operation, all retries included, in milliseconds.
pub const OPERATION_TIMEOUT_MS: u64 = 15_000;
/// One attempt of an operation.
pub const ATTEMPT_TIMEOUT_MS: u64 = 5_000;
/// TCP connect (and TLS handshake) to an AWS endpoint.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Attempts of one operation (the first included); the SDK's standard mode retries
/// throttling and transient errors with jittered exponential backoff.
pub const ATTEMPTS_MAX: u32 = 4;
/// First backoff of the SDK's retries.
pub const BACKOFF_INITIAL_MS: u64 = 200;
/// Longest single backoff of the SDK's retries.
pub const BACKOFF_MAX_MS: u64 = 5_000;
/// Longest `endpoint_url`, `profile` or `region` setting, in bytes.
pub const SETTING_BYTES_MAX: usize = 512;

/// Error codes that mean "the state is not what this controller expected": a compare-and-set
/// the provider refused.
#[cfg(feature = "aws")]
const FENCING_CODES: &[&str] = &["InvalidChangeBatch", "HealthCheckVersionMismatch"];
/// Error codes no retry can fix: an operator must change the configuration or the grants.
#[cfg(feature = "aws")]
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "NoSuchHostedZone",
    "NoSuchHealthCheck",
    "InvalidInput",
    "InvalidParameterValue",
    "ValidationException",
    "ParameterNotFound",
    "ParameterLimitExceeded",
    "DBInstanceNotFound",
    "DBClusterNotFoundFault",
    "GlobalClusterNotFoundFault",
    "HierarchyTypeMismatchException",
    "UnsupportedParameterType",
    "InvalidKeyId",
    "NoSuchChange",
    "ParameterMaxVersionLimitExceeded",
];

/// What the operator does about an error code whose provider message does not say it (added to
/// the failure's text).
#[cfg(feature = "aws")]
const ADVICE: &[(&str, &str)] = &[
    (
        "NoSuchChange",
        "Route 53 does not know the change id its ChangeResourceRecordSets answer gave, so INSYNC cannot be awaited: check that endpoint_url and the credentials reach the account that holds the hosted zone, then read the record back (`aws route53 list-resource-record-sets`); no retry fixes this",
    ),
    (
        "ParameterMaxVersionLimitExceeded",
        "Parameter Store keeps 100 versions of a parameter and deletes the oldest for a new one, but not while a label is on it: move that label to a newer version (`aws ssm label-parameter-version --parameter-name NAME --parameter-version NEWER --labels LABEL`) or remove it (`aws ssm unlabel-parameter-version`), then run the order again",
    ),
];

/// The AWS settings every AWS step accepts, already checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The signing region (Route 53 is global: `us-east-1`).
    pub region: String,
    /// A profile of the shared config and credentials files; `None`: the default chain.
    pub profile: Option<String>,
    /// Another endpoint than AWS's (moto in tests, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// A shared credentials file read instead of `~/.aws/credentials` (and no config file):
    /// for watchers handed a lab's or a test's keys. `None`: the standard locations.
    pub credentials_file: Option<std::path::PathBuf>,
}

/// The access keys of tests and embedders; `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticCredentials({}, ..)", self.access_key_id)
    }
}

impl Access {
    /// Checks the access settings of `what` (like "route53 step 'dns'"); `default_region`
    /// applies when `region` is absent (`None`: it is required).
    pub fn check(
        what: &str,
        table: Range<usize>,
        region: &Option<Spanned<String>>,
        profile: &Option<Spanned<String>>,
        endpoint_url: &Option<Spanned<String>>,
        default_region: Option<&str>,
        checker: &mut dyn Checker,
    ) -> Option<Access> {
        let mut ok = true;
        let region = match (region, default_region) {
            (Some(region), _) => {
                let text = region.get_ref();
                if !valid_region(text) {
                    checker.error(
                        region.span(),
                        format!("{what}: region '{text}' is not an AWS region name"),
                        "write the region like us-east-1 or eu-west-1".into(),
                    );
                    ok = false;
                }
                text.clone()
            }
            (None, Some(default)) => default.to_string(),
            (None, None) => {
                checker.error(
                    table,
                    format!("{what} has no region"),
                    "add region = \"us-east-1\" (the AWS region the step calls)".into(),
                );
                return None;
            }
        };
        if let Some(profile) = profile {
            let text = profile.get_ref();
            if text.is_empty() || text.len() > SETTING_BYTES_MAX || text.chars().any(char::is_whitespace) {
                checker.error(
                    profile.span(),
                    format!("{what}: profile '{text}' is not a profile name"),
                    "name a profile of ~/.aws/config, like profile = \"shop\", or leave it out for the default chain"
                        .into(),
                );
                ok = false;
            }
        }
        if let Some(url) = endpoint_url {
            if let Err(problem) = check_endpoint_url(url.get_ref()) {
                checker.error(
                    url.span(),
                    format!("{what}: endpoint_url '{}' {problem}", url.get_ref()),
                    "write http(s)://host:port, like http://127.0.0.1:5000 for moto, or leave it out for AWS".into(),
                );
                ok = false;
            }
        }
        ok.then(|| Access {
            region,
            profile: profile.as_ref().map(|p| p.get_ref().clone()),
            endpoint_url: endpoint_url.as_ref().map(|u| u.get_ref().clone()),
            credentials_file: None,
        })
    }

    /// Loads the SDK configuration: region, credential chain (or `credentials`), the ring-based
    /// HTTPS client, bounded timeouts and retries.
    #[cfg(feature = "aws")]
    pub async fn sdk_config(&self, credentials: Option<&StaticCredentials>) -> aws_config::SdkConfig {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        use std::time::Duration;

        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()))
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(ATTEMPTS_MAX)
                    .with_initial_backoff(Duration::from_millis(BACKOFF_INITIAL_MS))
                    .with_max_backoff(Duration::from_millis(BACKOFF_MAX_MS)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .operation_attempt_timeout(Duration::from_millis(ATTEMPT_TIMEOUT_MS))
                    .operation_timeout(Duration::from_millis(OPERATION_TIMEOUT_MS))
                    .build(),
            );
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(file) = &self.credentials_file {
            use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
            loader = loader.profile_files(
                EnvConfigFiles::builder()
                    .with_file(EnvConfigFileKind::Credentials, file)
                    .build(),
            );
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                credentials.access_key_id.clone(),
                credentials.secret_access_key.clone(),
                None,
                None,
                "switchyard-static",
            ));
        }
        loader.load().await
    }

    /// The same access in another region (CloudWatch is read per source region).
    pub fn in_region(&self, region: &str) -> Access {
        Access {
            region: region.to_string(),
            ..self.clone()
        }
    }
}

/// One AWS SDK client of a step or a watcher, made on first use from its [`Access`] and the
/// static credentials, if given (the credential chain otherwise).
pub struct SdkClient<C> {
    access: Access,
    credentials: Option<StaticCredentials>,
    #[cfg(feature = "aws")]
    client: tokio::sync::OnceCell<C>,
    #[cfg(not(feature = "aws"))]
    client: std::marker::PhantomData<C>,
}

impl<C> SdkClient<C> {
    pub fn new(access: Access) -> SdkClient<C> {
        SdkClient {
            access,
            credentials: None,
            client: Default::default(),
        }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Calls AWS with these keys instead of the credential chain (tests, embedding); before
    /// the first call.
    pub fn set_static_credentials(&mut self, credentials: StaticCredentials) {
        self.credentials = Some(credentials);
    }

    /// Reads keys from this shared credentials file (the access's `profile`, or `default`);
    /// before the first call.
    pub fn set_credentials_file(&mut self, file: std::path::PathBuf) {
        self.access.credentials_file = Some(file);
    }

    /// The client, made by `make` (like `aws_sdk_ssm::Client::new`) the first time.
    #[cfg(feature = "aws")]
    pub async fn get(&self, make: impl FnOnce(&aws_config::SdkConfig) -> C) -> &C {
        self.client
            .get_or_init(|| async { make(&self.access.sdk_config(self.credentials.as_ref()).await) })
            .await
    }
}

impl<C> std::fmt::Debug for SdkClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.access.fmt(f)
    }
}

/// What a reader or watcher of a build without the `aws` feature answers.
pub const NOT_BUILT: &str = "this switchyard was built without AWS support (feature `aws`)";

/// The answer of a step run by a build without the `aws` feature.
pub fn not_built() -> Failure {
    Failure::Refused("this switchyard was built without AWS support".into())
}

/// The entry points every AWS step has: `with_static_credentials`, handed to its client
/// `self.$client` (which has `set_static_credentials`), and `run`, which is the step's
/// `run_live` in a build with `feature = $feature` and `Err($not_built)` in one without.
macro_rules! step_entry_points {
    ($step:ident, $client:ident, $feature:tt, $not_built:expr) => {
        impl $step {
            /// Calls AWS with these keys instead of the credential chain (tests, embedding).
            pub fn with_static_credentials(mut self, credentials: $crate::aws::StaticCredentials) -> $step {
                self.$client.set_static_credentials(credentials);
                self
            }

            /// Runs one attempt; see the module's documentation.
            pub async fn run(&self, order: &$crate::Order) -> $crate::Outcome {
                #[cfg(feature = $feature)]
                {
                    self.run_live(order).await
                }
                #[cfg(not(feature = $feature))]
                {
                    let _ = order;
                    Err($not_built)
                }
            }
        }
    };
}
pub(crate) use step_entry_points;

/// The credential setters of a watcher's reader whose client is `self.aws`
/// ([`SdkClient`]): static keys, or a shared credentials file.
macro_rules! reader_credentials {
    ($reader:ident) => {
        impl $reader {
            /// Calls AWS with these keys instead of the credential chain (tests, embedding).
            pub fn with_static_credentials(mut self, credentials: $crate::aws::StaticCredentials) -> $reader {
                self.aws.set_static_credentials(credentials);
                self
            }

            /// Reads keys from this shared credentials file (the access's `profile`, or
            /// `default`).
            pub fn with_credentials_file(mut self, file: std::path::PathBuf) -> $reader {
                self.aws.set_credentials_file(file);
                self
            }
        }
    };
}
pub(crate) use reader_credentials;

/// The access settings every AWS step's table holds.
pub struct AccessKeys<'a> {
    pub region: &'a Option<Spanned<String>>,
    pub profile: &'a Option<Spanned<String>>,
    pub endpoint_url: &'a Option<Spanned<String>>,
    pub access_key_id: &'a Option<Spanned<toml::Value>>,
    pub secret_access_key: &'a Option<Spanned<toml::Value>>,
    pub session_token: &'a Option<Spanned<toml::Value>>,
}

impl AccessKeys<'_> {
    /// Refuses inline credentials ([`check_no_inline_credentials`], the `bool`) and checks the
    /// access ([`Access::check`]).
    pub fn check(
        &self,
        what: &str,
        table: Range<usize>,
        default_region: Option<&str>,
        checker: &mut dyn Checker,
    ) -> (bool, Option<Access>) {
        let ok = check_no_inline_credentials(
            what,
            &inline_credential_keys(self.access_key_id, self.secret_access_key, self.session_token),
            checker,
        );
        let access = Access::check(
            what,
            table,
            self.region,
            self.profile,
            self.endpoint_url,
            default_region,
            checker,
        );
        (ok, access)
    }
}

/// Declares a settings table of the AWS steps (`deny_unknown_fields`): its own fields, then the
/// keys of [`AccessKeys`] (`region`, `profile`, `endpoint_url`, and the refused
/// `access_key_id`, `secret_access_key`, `session_token`), with `access_keys()`. A macro for
/// the reason `promote_settings!` is one: serde cannot combine `deny_unknown_fields` with a
/// flattened shared struct.
macro_rules! aws_settings {
    ($(#[$meta:meta])* pub struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($own)*
            /// The AWS region the step signs for.
            #[serde(default)]
            pub region: Option<::toml::Spanned<String>>,
            /// A profile of the shared config and credentials files.
            #[serde(default)]
            pub profile: Option<::toml::Spanned<String>>,
            /// Another endpoint than AWS's (moto in tests, a VPC endpoint, an S3-compatible
            /// service).
            #[serde(default)]
            pub endpoint_url: Option<::toml::Spanned<String>>,
            /// Refused with an explanation: credentials come from the AWS chain.
            #[serde(default)]
            pub access_key_id: Option<::toml::Spanned<::toml::Value>>,
            #[serde(default)]
            pub secret_access_key: Option<::toml::Spanned<::toml::Value>>,
            #[serde(default)]
            pub session_token: Option<::toml::Spanned<::toml::Value>>,
        }

        impl $name {
            /// This table's AWS access keys.
            pub fn access_keys(&self) -> $crate::aws::AccessKeys<'_> {
                $crate::aws::AccessKeys {
                    region: &self.region,
                    profile: &self.profile,
                    endpoint_url: &self.endpoint_url,
                    access_key_id: &self.access_key_id,
                    secret_access_key: &self.secret_access_key,
                    session_token: &self.session_token,
                }
            }
        }
    };
}
pub(crate) use aws_settings;

/// False, with the error, when this build has no AWS support (`span`: the step's table).
pub fn check_built(what: &str, span: Range<usize>, checker: &mut dyn Checker) -> bool {
    if cfg!(feature = "aws") {
        return true;
    }
    checker.error(
        span,
        format!("{what}: this switchyard was built without AWS support"),
        "use a build with the `aws` feature (the default of the switchyard binary)".into(),
    );
    false
}

/// The smallest span holding both (a step's table, for problems of the table as a whole).
pub fn cover(a: Range<usize>, b: Range<usize>) -> Range<usize> {
    a.start.min(b.start)..a.end.max(b.end)
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`: lowercase letters and digits in
/// dash-separated parts, ending in a number.
pub fn valid_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() >= 3
        && text.len() <= 32
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// Why `url` is not an `http(s)://host[:port][/]` endpoint, if it is not.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    if url.len() > SETTING_BYTES_MAX {
        return Err(format!("is longer than {SETTING_BYTES_MAX} bytes"));
    }
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err("does not start with http:// or https://".into());
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
        return Err("has no host".into());
    }
    Ok(())
}

/// The keys of inline credentials present in a step's table.
pub fn inline_credential_keys<'a>(
    access_key_id: &'a Option<Spanned<toml::Value>>,
    secret_access_key: &'a Option<Spanned<toml::Value>>,
    session_token: &'a Option<Spanned<toml::Value>>,
) -> Vec<(&'static str, std::ops::Range<usize>)> {
    [
        ("access_key_id", access_key_id),
        ("secret_access_key", secret_access_key),
        ("session_token", session_token),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_ref().map(|v| (key, v.span())))
    .collect()
}

/// Keys some users write to give AWS credentials inline; each is refused with the way to give
/// them instead. `keys` are the inline credential keys present, with their spans.
pub fn check_no_inline_credentials(what: &str, keys: &[(&str, Range<usize>)], checker: &mut dyn Checker) -> bool {
    for (key, span) in keys {
        checker.error(
            span.clone(),
            format!("{what}: {key} is a secret and must not be in the config file"),
            "remove it: AWS steps take credentials from the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the controller's environment, profile = \"NAME\" of ~/.aws/credentials, web identity, or the instance role via IMDSv2)".into(),
        );
    }
    keys.is_empty()
}

/// Turns an SDK error into a step failure with AWS's own code and message: a refused
/// compare-and-set is `Fenced`, a mistake no retry fixes is `Refused`, the rest (throttling
/// left after the SDK's retries, timeouts, 5xx, network) is `Retryable`.
#[cfg(feature = "aws")]
pub fn failure<E, R>(action: &str, error: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Failure
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let message = service.err().message().unwrap_or("(no message)");
            let text = match ADVICE.iter().find(|(known, _)| *known == code) {
                Some((_, advice)) => format!("{action}: {code}: {message}; {advice}"),
                None => format!("{action}: {code}: {message}"),
            };
            if FENCING_CODES.contains(&code) {
                Failure::Fenced(text)
            } else if PERMANENT_CODES.contains(&code) {
                Failure::Refused(text)
            } else {
                Failure::Retryable(text)
            }
        }
        other => Failure::Retryable(format!("{action}: {}", common::error::chain(other))),
    }
}

/// The error code of an SDK service error (`ParameterNotFound`), if it is one.
#[cfg(feature = "aws")]
pub fn error_code<E, R>(error: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Option<&str>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    match error {
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names() {
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-4",
        ] {
            assert!(valid_region(good), "{good}");
        }
        for bad in ["", "us", "US-EAST-1", "us-east", "us east 1", "us--1", "eu-west-1a"] {
            assert!(!valid_region(bad), "{bad}");
        }
    }

    #[cfg(feature = "aws")]
    #[test]
    fn aws_errors_become_failures_with_their_code() {
        use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsError;
        use aws_smithy_runtime_api::client::result::SdkError;
        use aws_smithy_types::error::ErrorMetadata;

        let error = |code: &str| {
            let meta = ErrorMetadata::builder()
                .code(code)
                .message("the provider's words")
                .build();
            SdkError::<ChangeResourceRecordSetsError, ()>::service_error(
                ChangeResourceRecordSetsError::generic(meta),
                (),
            )
        };
        let fenced = failure("Route 53 ChangeResourceRecordSets", &error("InvalidChangeBatch"));
        assert_eq!(
            fenced,
            Failure::Fenced("Route 53 ChangeResourceRecordSets: InvalidChangeBatch: the provider's words".into())
        );
        assert!(matches!(failure("x", &error("AccessDenied")), Failure::Refused(_)));
        // No retry fixes these: final, with what to do.
        assert!(matches!(
            failure("Route 53 GetChange", &error("NoSuchChange")),
            Failure::Refused(m) if m.starts_with("Route 53 GetChange: NoSuchChange: the provider's words; ") && m.contains("endpoint_url")
        ));
        assert!(matches!(
            failure("SSM PutParameter", &error("ParameterMaxVersionLimitExceeded")),
            Failure::Refused(m) if m.contains("label-parameter-version") && m.contains("unlabel-parameter-version")
        ));
        assert!(matches!(failure("x", &error("Throttling")), Failure::Retryable(_)));
        assert!(matches!(
            failure("x", &error("PriorRequestNotComplete")),
            Failure::Retryable(_)
        ));
        let timeout = SdkError::<ChangeResourceRecordSetsError, ()>::timeout_error("slow");
        assert!(matches!(failure("x", &timeout), Failure::Retryable(m) if m.contains("x: ")));
    }

    #[test]
    fn endpoint_urls() {
        assert!(check_endpoint_url("http://127.0.0.1:5000").is_ok());
        assert!(check_endpoint_url("https://route53.amazonaws.com/").is_ok());
        assert!(check_endpoint_url("127.0.0.1:5000").is_err());
        assert!(check_endpoint_url("http://").is_err());
        assert!(check_endpoint_url("http://user@host").is_err());
    }
}
