//! `switchyard controller`, `config check`, `status`, `switchover`, `failover`, `failback`,
//! `pause`, `resume`, `acknowledge` and `pointer watch`: argument parsing only; the logic is in
//! the `controller` crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use common::members::ControllerUrls;
use controller::client::HttpClient;
use hyper::Method;
use tokio::net::TcpListener;

/// Default controller URL for the CLI subcommands.
const CONTROLLER_URL_DEFAULT: &str = "http://127.0.0.1:7400";
/// Timeout of one CLI request.
const CLI_REQUEST_TIMEOUT_MS: u64 = 10_000;

#[derive(clap::Args)]
pub(crate) struct ControllerArgs {
    /// The TOML configuration (see docs/examples/switchyard.toml).
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "switchyard.toml")]
    config: PathBuf,
    /// Overrides `[controller] listen`; port 0 picks a free port (see --ready-file).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `[controller] audit_log`.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Deprecated: one bearer token for every role (agent, operator, read), from this file (or
    /// SWITCHYARD_CONTROL_TOKEN). Give each agent, operator and reader its own token in the
    /// config's [[tokens]] instead. While a role has no token the controller only listens on
    /// loopback.
    #[arg(long, env = "SWITCHYARD_CONTROL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Once accepting connections, write the bound address (`IP:PORT`) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Start generations above N. Only after the audit log was lost while `switchyard dns`
    /// still holds a higher generation (its `GET /v1/health` shows it): otherwise every push is
    /// refused as stale. Never needed while the audit log is kept.
    #[arg(long, default_value_t = 0)]
    generation_floor: u64,
    #[command(flatten)]
    tls: crate::TlsArgs,
    /// Overrides `[controller.ha] member`, so every controller of a group can share one file.
    #[arg(long)]
    member: Option<String>,
    /// Overrides `[controller] vantage`, the name this controller's own probes report as (one of
    /// `[quorum] vantages`): give each member of a group its own, so the leader counts each
    /// member's view (followers pass theirs on).
    #[arg(long)]
    vantage: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(clap::Subcommand)]
enum ConfigCommand {
    /// Validate a configuration; prints every mistake with its line, column and fix. A
    /// controller's file (it has [[regions]]) is checked as the controller reads it; a file
    /// with only a `switchyard dns` [dns] section (zones), a `switchyard proxy` [proxy]
    /// section, a `switchyard store` [store] section or a `switchyard fault-proxy` [fault_proxy]
    /// section, or a drill's targets file, is checked as that command reads it.
    Check {
        /// The TOML file.
        file: PathBuf,
        /// A store file: check it as `switchyard store --trusted-network --config FILE` reads
        /// it (unsigned requests on a non-loopback `listen` without `credentials` allowed).
        #[arg(long)]
        trusted_network: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Print a new random token and the config snippet that accepts it (with its SHA-256, so
    /// the controller never needs the secret itself).
    New {
        /// agent (reports and fetches the plan as --name), operator (switchover, failover,
        /// failback, pause, resume, acknowledge; also read), read (status, events, the
        /// active-region pointer), member (a controller of a [controller.ha] group: a follower
        /// passes its own reports on to the leader as --name, its vantage name) or dns (the
        /// controller's pushes to `switchyard dns`).
        #[arg(long, value_parser = ["agent", "operator", "read", "member", "dns"])]
        role: String,
        /// For an agent its vantage name (`switchyard agent --name`); otherwise who holds it.
        #[arg(long)]
        name: String,
    },
}

/// How the CLI reaches a controller.
#[derive(clap::Args, Clone)]
pub(crate) struct ControllerClientArgs {
    /// The controller's URL; for a group of controllers (`[controller.ha]`), every member's,
    /// comma-separated (URL,URL,...), so the command works while any member is up: commands
    /// try them in order, `lock run` and `pointer watch` ask them all at once. Default
    /// http://127.0.0.1:7400.
    #[arg(long, env = "SWITCHYARD_CONTROLLER", value_name = "URL[,URL...]")]
    controller: Option<String>,
    /// File holding the control token (or set SWITCHYARD_CONTROL_TOKEN).
    #[arg(long, env = "SWITCHYARD_CONTROL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    client: ControllerClientArgs,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
    /// Check a running lab instead (`switchyard lab --dir DIR`): print its table and exit 0
    /// when every component is up, non-zero with the reason otherwise.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["json", "controller"])]
    lab: Option<PathBuf>,
}

impl StatusArgs {
    /// The lab this status is of, if any.
    pub(crate) fn lab_dir(&self) -> Option<&std::path::Path> {
        self.lab.as_deref()
    }
}

#[derive(clap::Args)]
pub(crate) struct SwitchoverArgs {
    /// The region to move to; it becomes the preferred region.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    client: ControllerClientArgs,
}

#[derive(clap::Args)]
pub(crate) struct ManualArgs {
    #[command(flatten)]
    client: ControllerClientArgs,
}

#[derive(clap::Args)]
pub(crate) struct FailoverArgs {
    #[command(flatten)]
    client: ControllerClientArgs,
    /// Let database steps promote a replica that is behind (its missing transactions are
    /// lost); also retries a move that is still pending because a step refused.
    #[arg(long)]
    force_data_loss: bool,
}

#[derive(clap::Args)]
pub(crate) struct PointerArgs {
    #[command(subcommand)]
    command: PointerCommand,
}

#[derive(clap::Subcommand)]
enum PointerCommand {
    /// Follow the active-region pointer: on each change, atomically rewrite an env file
    /// (AWS_REGION, SWITCHYARD_ACTIVE_REGION, SWITCHYARD_GENERATION) and run a command.
    Watch {
        #[command(flatten)]
        client: ControllerClientArgs,
        /// The env file to rewrite.
        #[arg(long)]
        write_env: PathBuf,
        /// Run with `sh -c` after each change, e.g. 'systemctl reload php-fpm'.
        #[arg(long)]
        exec: Option<String>,
        /// Follow this SSM parameter (written by an `ssm_parameter` step) instead of the
        /// controller, for hosts that cannot reach it. Credentials: the AWS chain.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["controller", "token_file"])]
        ssm_parameter: Option<String>,
        /// The AWS region that holds the parameter.
        #[arg(long, value_name = "REGION", requires = "ssm_parameter")]
        ssm_region: Option<String>,
        /// A profile of ~/.aws/config for reading the parameter.
        #[arg(long, value_name = "PROFILE", requires = "ssm_parameter")]
        ssm_profile: Option<String>,
        /// Another SSM endpoint than AWS's (a VPC endpoint, or moto in tests).
        #[arg(long, value_name = "URL", requires = "ssm_parameter")]
        ssm_endpoint_url: Option<String>,
        /// How often to read the parameter, in milliseconds.
        #[arg(long, default_value_t = 5_000, requires = "ssm_parameter")]
        poll_ms: u64,
    },
}

pub(crate) async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let mut config = match controller::config::load(&args.config) {
        Ok(config) => config,
        Err(error) => bail!("invalid configuration; the controller does not start:\n{error}"),
    };
    for warning in &config.warnings {
        tracing::warn!(file = %args.config.display(), line = warning.line, column = warning.column, fix = %warning.fix, "{}", warning.message);
    }
    if let Some(listen) = args.listen {
        config.file.controller.listen = listen;
    }
    if let Some(audit_log) = args.audit_log {
        config.file.controller.audit_log = audit_log;
    }
    if let Some(member) = args.member {
        let Some(ha) = config.file.controller.ha.as_mut() else {
            bail!(
                "--member {member} needs a [controller.ha] section in {}",
                args.config.display()
            );
        };
        ha.member = member;
        let problems = ha.problems();
        if let Some((_, message, fix)) = problems.iter().find(|(key, _, _)| *key == "member") {
            bail!("--member: {message}; {fix}");
        }
    }
    if let Some(vantage) = args.vantage {
        let vantages = config.file.quorum.vantages.get_ref();
        if !vantages.contains(&vantage) {
            bail!(
                "--vantage {vantage} is not in [quorum] vantages ({}) of {}; add it there (and count it in quorum) or pick one of them",
                vantages.join(", "),
                args.config.display()
            );
        }
        if config
            .credentials
            .iter()
            .any(|c| c.role == controller::auth::Role::Agent && c.name == vantage)
        {
            bail!(
                "--vantage {vantage} is an agent's name ([[tokens]] gives it an agent token); give this controller a name of its own"
            );
        }
        config.file.controller.vantage = vantage;
    }
    // The member token speaks for this member's vantage name only: the leader would refuse
    // every report passed on with another's.
    if let Some(token) = &config.member_token {
        let vantage = &config.file.controller.vantage;
        let digest = controller::auth::TokenDigest::of(token);
        if let Some(other) = config
            .credentials
            .iter()
            .find(|c| c.role == controller::auth::Role::Member && c.digest.same(&digest))
            .filter(|c| &c.name != vantage)
        {
            bail!(
                "[controller.ha] token_file holds the member token of '{}', but this controller reports as '{vantage}'; give it its own token, or start it with --vantage {}",
                other.name,
                other.name
            );
        }
    }
    let token = crate::read_token(args.token_file.as_deref(), "SWITCHYARD_CONTROL_TOKEN", EMPTY_TOKEN)?;
    let listen = config.file.controller.listen;
    let access = controller::server::access(&config, token.as_deref());
    controller::server::check_exposure(listen, &access)?;
    let open_roles: Vec<&str> = access.open_roles().iter().map(|role| role.name()).collect();
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen} (is the port in use? pick another with --listen)"))?;
    let address = listener.local_addr().context("read the bound address")?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, address.to_string()).with_context(|| format!("write ready file {}", path.display()))?;
    }
    // Authenticated: every role needs a token (from [[tokens]] or the deprecated one).
    tracing::info!(%address, config = %args.config.display(), authenticated = open_roles.is_empty(), roles_without_token = %open_roles.join(","), deprecated_control_token = token.is_some(), "controller listening");
    let options = controller::server::RunOptions {
        token,
        dns_token: None,
        local_reports: None,
        probe_locally: true,
        generation_floor: args.generation_floor,
        tls: args.tls.load("controller")?,
    };
    controller::server::run(listener, config, options, crate::shutdown_signal())
        .await
        .context("run the controller")?;
    tracing::info!("controller stopped");
    Ok(())
}

/// What a configuration file is for, from its top-level tables: the controller's (it lists
/// regions), or another command's file that `config check` reads as that command would.
enum ConfigKind {
    Controller,
    Dns,
    Proxy,
    DrillTargets,
    Store,
    FaultProxy,
}

fn config_kind(file: &std::path::Path) -> ConfigKind {
    // A file that does not parse is the controller's check's to report, with its line.
    let Ok(text) = std::fs::read_to_string(file) else {
        return ConfigKind::Controller;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return ConfigKind::Controller;
    };
    // Any key only a drill targets file has (one of them misspelt, the file is still one), or
    // regions with a `store_url`, which the controller's do not have.
    const DRILL_TARGET_KEYS: [&str; 7] = [
        "shop_name",
        "shop_port",
        "dns_server",
        "controller_url",
        "fault_proxy_url",
        "fault_proxy_token_file",
        "process_control",
    ];
    let region_store_urls = table
        .get("regions")
        .and_then(toml::Value::as_array)
        .is_some_and(|regions| {
            regions
                .iter()
                .any(|region| region.as_table().is_some_and(|r| r.contains_key("store_url")))
        });
    if (DRILL_TARGET_KEYS.iter().any(|key| table.contains_key(*key)) || region_store_urls)
        && !table.contains_key("controller")
    {
        return ConfigKind::DrillTargets;
    }
    if table.contains_key("regions") || table.contains_key("controller") {
        return ConfigKind::Controller;
    }
    let dns_server = table.get("dns").and_then(toml::Value::as_table).is_some_and(|dns| {
        ["zones", "listen", "admin_listen"]
            .iter()
            .any(|key| dns.contains_key(*key))
    });
    if dns_server {
        ConfigKind::Dns
    } else if table.contains_key("proxy") {
        ConfigKind::Proxy
    } else if table.contains_key("store") {
        ConfigKind::Store
    } else if table.contains_key("fault_proxy") {
        ConfigKind::FaultProxy
    } else {
        ConfigKind::Controller
    }
}

pub(crate) fn run_config(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file, .. } if matches!(config_kind(&file), ConfigKind::Dns) => {
            match dns::config::load(&file) {
                Ok(config) => {
                    println!(
                        "{}: ok (a `switchyard dns` configuration: {}, DNS on {}, admin API on {})",
                        file.display(),
                        common::text::counted(config.zones.iter().count(), "zone", "zones"),
                        config.listen,
                        config.admin_listen
                    );
                    Ok(())
                }
                Err(error) => bail!(
                    "{error}
(checked as a `switchyard dns` configuration: its [dns] section has zones)"
                ),
            }
        }
        ConfigCommand::Check { file, .. } if matches!(config_kind(&file), ConfigKind::Proxy) => {
            match proxy::config::load(&file) {
                Ok(config) => {
                    println!(
                        "{}: ok (a `switchyard proxy` configuration: {} servers, listening on {})",
                        file.display(),
                        config.servers.len(),
                        config.listen
                    );
                    Ok(())
                }
                Err(error) => bail!(
                    "{error}
(checked as a `switchyard proxy` configuration: it has a [proxy] section and no [[regions]])"
                ),
            }
        }
        ConfigCommand::Check { file, trusted_network } if matches!(config_kind(&file), ConfigKind::Store) => {
            // As `switchyard store --config FILE` reads it, without flags, and with what it
            // refuses before opening its database (credentials, exposure, replication key,
            // peers, TLS files), so a file that passes starts.
            let checked = store::config::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|keys| Ok(store::settings::Settings::merge(keys, Default::default())?))
                .and_then(|settings| {
                    crate::store_files(&settings, trusted_network)?;
                    Ok(settings)
                });
            match checked {
                Ok(settings) => {
                    println!(
                        "{}: ok (a `switchyard store` configuration: region {}, listening on {}, data in {}, {} peer(s))",
                        file.display(),
                        settings.region,
                        settings.listen,
                        settings.data_dir.display(),
                        settings.peers.len()
                    );
                    Ok(())
                }
                Err(error) => bail!(
                    "{error:#}
(checked as a `switchyard store` configuration: it has a [store] section and no [[regions]])"
                ),
            }
        }
        ConfigCommand::Check { file, .. } if matches!(config_kind(&file), ConfigKind::FaultProxy) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            match faultproxy::config::from_toml(&text, &file.display().to_string()) {
                Ok(config) => {
                    println!(
                        "{}: ok (a `switchyard fault-proxy` configuration: {} proxies, control API on {})",
                        file.display(),
                        config.proxies.len(),
                        config.listen
                    );
                    Ok(())
                }
                Err(error) => bail!(
                    "{error}
(checked as a `switchyard fault-proxy` configuration: it has a [fault_proxy] section and no [[regions]])"
                ),
            }
        }
        ConfigCommand::Check { file, .. } if matches!(config_kind(&file), ConfigKind::DrillTargets) => {
            match drill::runtime::deployment::Deployment::load(&file) {
                Ok(deployment) => {
                    println!(
                        "{}: ok (a drill targets file: {} regions{})",
                        file.display(),
                        deployment.regions.len(),
                        if deployment.process_control.is_some() {
                            ", process control"
                        } else {
                            ", no process control: only network faults"
                        }
                    );
                    Ok(())
                }
                Err(error) => {
                    bail!("{error}\n(checked as a drill targets file: `switchyard drill --targets FILE` reads it)")
                }
            }
        }
        ConfigCommand::Check { file, .. } => match controller::config::check_file(&file) {
            Ok(config) => {
                for warning in &config.warnings {
                    let place = if warning.line == 0 {
                        file.display().to_string()
                    } else {
                        format!("{}:{}:{}", file.display(), warning.line, warning.column)
                    };
                    eprintln!("{place}: warning: {}\n    fix: {}", warning.message, warning.fix);
                }
                let open: Vec<&str> = controller::server::access(&config, None)
                    .open_roles()
                    .iter()
                    .map(|role| role.name())
                    .collect();
                println!(
                    "{}: ok ({}, {}, {}, quorum {} of {}, {}; roles without one: {})",
                    file.display(),
                    common::text::counted(config.engine.regions.len(), "region", "regions"),
                    common::text::counted(config.file.checks.len(), "check", "checks"),
                    common::text::counted(config.steps.len(), "runbook step", "runbook steps"),
                    config.quorum.effective_quorum(),
                    config.quorum.vantages_expected.len(),
                    common::text::counted(config.credentials.len(), "token", "tokens"),
                    if open.is_empty() {
                        "none".to_string()
                    } else {
                        open.join(", ")
                    }
                );
                Ok(())
            }
            Err(error) => {
                eprint!("{error}");
                std::process::exit(1);
            }
        },
    }
}

pub(crate) struct Target {
    pub(crate) urls: ControllerUrls,
    pub(crate) token: Option<String>,
}

pub(crate) fn target(args: &ControllerClientArgs) -> anyhow::Result<Target> {
    let text = args.controller.as_deref().unwrap_or(CONTROLLER_URL_DEFAULT);
    let urls = ControllerUrls::parse(text).map_err(|error| anyhow::anyhow!("--controller: {error}"))?;
    Ok(Target {
        urls,
        token: crate::read_token(args.token_file.as_deref(), "SWITCHYARD_CONTROL_TOKEN", EMPTY_TOKEN)?,
    })
}

impl Target {
    fn one(url: &str, token: Option<String>) -> anyhow::Result<Target> {
        Ok(Target {
            urls: ControllerUrls::parse(url).map_err(anyhow::Error::msg)?,
            token,
        })
    }
}

/// An answer of one member: its HTTP status, its JSON (or `{"error": text}`), and which member.
struct Answered {
    status: u16,
    value: serde_json::Value,
    member: String,
}

/// Sends the request to the members in order. The next member is asked when one could not be
/// reached at all (the request never left), and, for a read, when one failed in any way; a
/// command that may have reached a member is not sent again elsewhere (it could act twice).
async fn call(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Answered> {
    let client = HttpClient::new();
    let body = body.map(|b| b.to_string().into_bytes());
    let mut failures = Vec::new();
    for member in target.urls.urls() {
        let url = format!("{member}{path}");
        match client
            .request(
                method.clone(),
                &url,
                target.token.as_deref(),
                body.clone(),
                CLI_REQUEST_TIMEOUT_MS,
            )
            .await
        {
            Ok(answer) => {
                if !failures.is_empty() {
                    eprintln!("{}; answered by {member}", failures.join("; "));
                }
                let mut value = serde_json::from_slice(&answer.body)
                    .unwrap_or_else(|_| serde_json::json!({"error": answer.text()}));
                // Refused for want of a token this command never sent: say how to send one.
                if answer.status.as_u16() == 401
                    && target.token.is_none()
                    && let Some(error) = value.get("error").and_then(|e| e.as_str())
                {
                    value["error"] = serde_json::json!(format!(
                        "{error} (this command sent none: pass --token-file FILE, or set SWITCHYARD_CONTROL_TOKEN_FILE)"
                    ));
                }
                return Ok(Answered {
                    status: answer.status.as_u16(),
                    value,
                    member: member.clone(),
                });
            }
            Err(error) if error.never_sent() || method == Method::GET => failures.push(error.to_string()),
            Err(error) => {
                bail!(
                    "{error}: the command may or may not have been taken; check `switchyard status` before sending it again"
                )
            }
        }
    }
    let failed = failures.join("; ");
    // A private CA's certificate (the lab's with --tls) is refused by the public roots alone.
    let hint = if failed.contains("UnknownIssuer") || failed.contains("invalid peer certificate") {
        "its certificate is not trusted: pass --ca-file FILE with the CA that signed it (a lab started with --tls: lab/config/tls/ca.pem)"
    } else {
        "is it running? pass --controller URL[,URL...]"
    };
    bail!("reach the controller at {} ({hint}): {failed}", target.urls)
}

/// With several controllers in the lab, who leads: one line per member, as each sees it.
async fn lab_controllers(dir: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let Ok(state) = lab::LabState::read(dir) else {
        return String::new();
    };
    let members: Vec<&lab::ComponentRecord> = state.components.iter().filter(|c| c.kind == "controller").collect();
    if members.len() < 2 {
        return String::new();
    }
    let mut out = String::from("\ncontrollers (etcd):\n");
    for member in members {
        let Some(address) = member.address.as_deref().and_then(|a| a.split_whitespace().next()) else {
            let _ = writeln!(out, "  {:<28} {}", member.name, member.state);
            continue;
        };
        // A `--tls` lab's controllers serve HTTPS (main trusts the lab's CA for `--lab`).
        let scheme = if lab::plan::tls_dir(dir).is_dir() {
            "https"
        } else {
            "http"
        };
        let line = match async {
            call(
                &Target::one(&format!("{scheme}://{address}"), None)?,
                Method::GET,
                "/v1/status",
                None,
            )
            .await
        }
        .await
        {
            Ok(Answered { status: 200, value, .. }) => {
                let ha = &value["ha"];
                let leader = match (ha["leader"]["member"].as_str(), ha["leader"]["address"].as_str()) {
                    (Some(name), Some(address)) => format!("{name} at {address}"),
                    _ => "none known".to_string(),
                };
                let mut line = format!(
                    "{} ({}{})   leader: {leader}",
                    ha["member"].as_str().unwrap_or("?"),
                    ha["role"].as_str().unwrap_or("?"),
                    if ha["acting"].as_bool() == Some(true) {
                        ", acting"
                    } else {
                        ""
                    }
                );
                if let Some(error) = ha["etcd_error"].as_str() {
                    let _ = write!(line, "   etcd: {error}");
                }
                line
            }
            Ok(Answered { status, value, .. }) => format!("HTTP {status}: {}", value["error"].as_str().unwrap_or("")),
            Err(error) => format!("{} ({error:#})", member.state),
        };
        let _ = writeln!(out, "  {:<28} {line}", member.name);
    }
    out
}

/// `status --lab DIR` and `lab --status`: the lab's table, and with several controllers who
/// leads as each member sees it.
pub(crate) async fn lab_status(dir: &std::path::Path) -> anyhow::Result<()> {
    let controllers = lab_controllers(dir).await;
    match lab::status(dir) {
        Ok(table) => {
            print!("{table}{controllers}");
            Ok(())
        }
        Err(error) => {
            if let Some(table) = &error.table {
                print!("{table}{controllers}");
            }
            bail!("{}", error.reason)
        }
    }
}

pub(crate) async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.lab {
        return lab_status(dir).await;
    }
    let target = target(&args.client)?;
    let Answered { status, value, .. } = call(&target, Method::GET, "/v1/status", None).await?;
    if status != 200 {
        bail!("the controller answered HTTP {status}: {}", value["error"]);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value).context("print JSON")?);
        return Ok(());
    }
    print!("{}", render_status(&value));
    Ok(())
}

fn render_status(value: &serde_json::Value) -> String {
    use std::fmt::Write;
    let engine = &value["engine"];
    let mut out = String::new();
    let active = engine["observed"]["active"].as_str().unwrap_or("(none)");
    let _ = writeln!(
        out,
        "active region: {active}   generation: {}   policy: {}   preferred: {}",
        value["generation"],
        engine["policy"].as_str().unwrap_or("?"),
        engine["preferred"].as_str().unwrap_or("?")
    );
    if let Some(ha) = value["ha"].as_object() {
        let member = ha.get("member").and_then(|m| m.as_str()).unwrap_or("?");
        let leader = &ha.get("leader").cloned().unwrap_or_default();
        let leader = match (leader["member"].as_str(), leader["address"].as_str()) {
            (Some(name), Some(address)) => format!("{name} at {address}"),
            _ => "unknown (election in progress or etcd unreachable)".into(),
        };
        let role = ha.get("role").and_then(|r| r.as_str()).unwrap_or("?");
        let _ = writeln!(out, "controller member: {member} ({role})   leader: {leader}");
        if let Some(error) = ha.get("etcd_error").and_then(|e| e.as_str()) {
            let _ = writeln!(out, "etcd: {error}");
        }
    }
    if engine["paused"].as_bool() == Some(true) {
        let _ = writeln!(out, "automation: PAUSED");
    }
    if engine["fenced"].as_bool() == Some(true) {
        let _ = writeln!(out, "FENCED by a newer generation");
    }
    if let Some(order) = engine["in_flight"].as_object() {
        let _ = writeln!(
            out,
            "runbook in flight: generation {} to {}",
            order.get("generation").cloned().unwrap_or_default(),
            order.get("to").and_then(|t| t["active"].as_str()).unwrap_or("?")
        );
    }
    let _ = writeln!(
        out,
        "\nREGION               PRIO  STATE        VERDICT   LAG_MS   REASON"
    );
    for region in engine["regions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:>4}  {:<12} {:<9} {:>6}   {}",
            region["region"].as_str().unwrap_or("?"),
            region["priority"].as_u64().unwrap_or(0),
            region["state"].as_str().unwrap_or("?"),
            region["verdict"].as_str().unwrap_or("?"),
            region["lag_ms"]
                .as_u64()
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            region["reason"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        out,
        "\nVANTAGE              FRESH  LAST_REPORT_MS_AGO  (quorum {})",
        value["quorum"]
    );
    for vantage in value["vantages"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<5}  {}",
            vantage["name"].as_str().unwrap_or("?"),
            vantage["fresh"].as_bool().unwrap_or(false),
            vantage["last_report_ms_ago"]
                .as_u64()
                .map(|l| l.to_string())
                .unwrap_or_else(|| "never".into())
        );
    }
    let steps: Vec<&serde_json::Value> = value["steps"].as_array().into_iter().flatten().collect();
    if !steps.is_empty() {
        // Columns as wide as their longest entry (`route53_failover_health` is 23 characters).
        let width = |key: &str, least: usize| {
            steps
                .iter()
                .map(|step| step[key].as_str().unwrap_or("?").chars().count())
                .fold(least, usize::max)
        };
        let (name_width, kind_width) = (width("name", 20), width("kind", 22));
        let _ = writeln!(
            out,
            "\n{:<name_width$} {:<kind_width$} OUTCOME   GEN  DETAIL (last attempt)",
            "STEP", "KIND"
        );
        for step in steps {
            let last = &step["last"];
            let _ = writeln!(
                out,
                "{:<name_width$} {:<kind_width$} {:<9} {:>4}  {}",
                step["name"].as_str().unwrap_or("?"),
                step["kind"].as_str().unwrap_or("?"),
                last["outcome"].as_str().unwrap_or("not run"),
                last["generation"]
                    .as_u64()
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                last["detail"].as_str().unwrap_or("")
            );
        }
    }
    let media: Vec<&serde_json::Value> = value["media"].as_array().into_iter().flatten().collect();
    if !media.is_empty() {
        let _ = writeln!(
            out,
            "\nMEDIA (media_lag)    FROM -> TO                      OBJECTS      BYTES  OLDEST_S  MEASURED_MS_AGO"
        );
        for figure in media {
            let number = |key: &str| {
                figure[key]
                    .as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                out,
                "{:<20} {:<30} {:>8} {:>10} {:>9}  {}{}",
                figure["step"].as_str().unwrap_or("?"),
                format!(
                    "{} -> {}",
                    figure["from"].as_str().unwrap_or("?"),
                    figure["to"].as_str().unwrap_or("?")
                ),
                number("objects"),
                number("bytes"),
                number("oldest_age_seconds"),
                number("measured_ms_ago"),
                figure["error"]
                    .as_str()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    out.push_str(&render_positions(value));
    let reasons: Vec<&str> = engine["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    if !reasons.is_empty() {
        let _ = writeln!(out, "\nwhy:");
        for reason in reasons {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    let alerts: Vec<&str> = engine["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    if !alerts.is_empty() {
        let _ = writeln!(out, "\nalerts:");
        for alert in alerts {
            let _ = writeln!(out, "  ! {alert}");
        }
    }
    out
}

/// Characters of a position shown in `status` (the JSON has it whole).
const POSITION_SHOWN_CHARS_MAX: usize = 32;

/// The replication positions the `sql` and `redis` checks read (from the first fresh vantage
/// that has each check), and for each replica what promoting it now would lose against the
/// primary of the same kind: bytes of WAL or of the Redis stream, or GTIDs.
fn render_positions(value: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut rows: Vec<(String, String, health::report::ReplicationPosition)> = Vec::new();
    for vantage in value["vantages"].as_array().into_iter().flatten() {
        if vantage["fresh"].as_bool() != Some(true) {
            continue;
        }
        for check in vantage["checks"].as_array().into_iter().flatten() {
            let name = check["check"].as_str().unwrap_or("?").to_string();
            let Ok(position) = serde_json::from_value::<health::report::ReplicationPosition>(check["position"].clone())
            else {
                continue;
            };
            if !rows.iter().any(|(n, _, _)| *n == name) {
                rows.push((name, check["region"].as_str().unwrap_or("?").to_string(), position));
            }
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
DATABASE CHECK        REGION           ROLE     KIND    RECEIVED                          PROMOTING IT LOSES"
    );
    for (name, region, position) in &rows {
        let primaries: Vec<&health::report::ReplicationPosition> = rows
            .iter()
            .map(|(_, _, p)| p)
            .filter(|p| p.role == "primary" && p.kind == position.kind)
            .collect();
        let loss = match (position.role.as_str(), primaries.as_slice()) {
            ("primary", _) => "-".to_string(),
            (_, [primary]) => expected_loss(primary, position),
            (_, []) => format!("? (no {} primary answers)", position.kind),
            (_, _) => format!("? (several {} primaries: compare by hand)", position.kind),
        };
        let shown: String = position.received.chars().take(POSITION_SHOWN_CHARS_MAX).collect();
        let _ = writeln!(
            out,
            "{name:<21} {region:<16} {:<8} {:<7} {shown:<33} {loss}",
            position.role, position.kind
        );
    }
    out
}

/// What a replica at `replica` lacks of what `primary` holds, in words.
fn expected_loss(
    primary: &health::report::ReplicationPosition,
    replica: &health::report::ReplicationPosition,
) -> String {
    use providers::db::gtid::{GtidSet, MariaState, Position};
    let bytes = |behind: Option<u64>| match behind {
        Some(0) => "nothing".to_string(),
        Some(n) => format!("{n} byte(s)"),
        None => "? (unreadable position)".to_string(),
    };
    match primary.kind.as_str() {
        health::report::POSITION_LSN => {
            let lsn = |t: &str| providers::db::postgres::Lsn::parse(t).ok();
            bytes(
                lsn(&primary.received)
                    .zip(lsn(&replica.received))
                    .map(|(p, r)| r.bytes_to(p)),
            )
        }
        health::report::POSITION_OFFSET => {
            let offset = |t: &str| t.parse::<u64>().ok();
            bytes(
                offset(&primary.received)
                    .zip(offset(&replica.received))
                    .map(|(p, r)| p.saturating_sub(r)),
            )
        }
        health::report::POSITION_GTID => {
            let parse = |t: &str| -> Option<Position> {
                if t.contains(':') {
                    GtidSet::parse(t).ok().map(Position::Mysql)
                } else {
                    MariaState::parse(t).ok().map(Position::Mariadb)
                }
            };
            let Some(written) = parse(&primary.received) else {
                return "? (unreadable position)".to_string();
            };
            // What the replica holds: what it received, and what it applied before that.
            let mut held = written.empty_like();
            for text in [Some(&replica.received), replica.applied.as_ref()]
                .into_iter()
                .flatten()
            {
                match parse(text) {
                    Some(p) if std::mem::discriminant(&p) == std::mem::discriminant(&written) => held.merge(&p),
                    _ => return "? (unreadable position)".to_string(),
                }
            }
            let missing = written.missing_from(&held);
            if missing.is_empty() {
                "nothing".to_string()
            } else {
                format!("{} transaction(s): {missing}", missing.count)
            }
        }
        other => format!("? (unknown kind {other})"),
    }
}

async fn manual(client: &ControllerClientArgs, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
    let target = target(client)?;
    let Answered {
        mut status,
        mut value,
        member,
    } = call(&target, Method::POST, path, body.clone()).await?;
    // A member of a group of controllers that does not lead passes commands on to the leader;
    // when it could not (421 naming the leader), the CLI follows once, to that address.
    if status == 421
        && let Some(address) = value["leader"]["address"].as_str()
        && address.trim_end_matches('/') != member
    {
        let leader = Target::one(address, target.token.clone())
            .with_context(|| format!("{member} named the leader at '{address}'"))?;
        eprintln!(
            "{member} does not lead; sending the command to the leader {} at {}",
            value["leader"]["member"].as_str().unwrap_or("?"),
            leader.urls
        );
        Answered { status, value, .. } = call(&leader, Method::POST, path, body).await?;
    }
    if let Some(leader) = value["forwarded_to"].as_object() {
        eprintln!(
            "passed on to the leader {} at {}",
            leader.get("member").and_then(|m| m.as_str()).unwrap_or("?"),
            leader.get("address").and_then(|m| m.as_str()).unwrap_or("?")
        );
    }
    let reason = value["reason"]
        .as_str()
        .or(value["error"].as_str())
        .unwrap_or("")
        .to_string();
    match status {
        200 => {
            println!("accepted: {reason} (generation {})", value["generation"]);
            Ok(())
        }
        409 => bail!("refused: {reason}"),
        421 => bail!("not taken: {reason}"),
        other => bail!("the controller answered HTTP {other}: {reason}"),
    }
}

pub(crate) async fn run_switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    manual(&args.client, "/v1/switchover", Some(serde_json::json!({"to": args.to}))).await
}

pub(crate) async fn run_failover(args: FailoverArgs) -> anyhow::Result<()> {
    let body = args
        .force_data_loss
        .then(|| serde_json::json!({"force_data_loss": true}));
    manual(&args.client, "/v1/failover", body).await
}

pub(crate) async fn run_manual(args: ManualArgs, path: &str) -> anyhow::Result<()> {
    manual(&args.client, path, None).await
}

pub(crate) async fn run_pointer(args: PointerArgs) -> anyhow::Result<()> {
    match args.command {
        PointerCommand::Watch {
            ssm_parameter: Some(name),
            ssm_region,
            ssm_profile,
            ssm_endpoint_url,
            poll_ms,
            write_env,
            exec,
            ..
        } => {
            let Some(region) = ssm_region else {
                bail!("--ssm-parameter needs --ssm-region REGION (the AWS region that holds the parameter)");
            };
            if !(crate::ssm_pointer::POLL_MS_MIN..=crate::ssm_pointer::POLL_MS_MAX).contains(&poll_ms) {
                bail!(
                    "--poll-ms {poll_ms} is out of range: use {}..={} milliseconds",
                    crate::ssm_pointer::POLL_MS_MIN,
                    crate::ssm_pointer::POLL_MS_MAX
                );
            }
            let reader = providers::ssm::ParameterReader::new(&name, &region, ssm_profile, ssm_endpoint_url)
                .map_err(anyhow::Error::msg)?;
            let options = crate::ssm_pointer::SsmWatch {
                reader,
                env_file: write_env,
                exec,
                poll_ms,
            };
            crate::ssm_pointer::watch(options, crate::shutdown_signal())
                .await
                .with_context(|| format!("watch the SSM parameter {name}"))
        }
        PointerCommand::Watch {
            client,
            write_env,
            exec,
            ..
        } => {
            let target = target(&client)?;
            let options = controller::pointer::WatchOptions {
                controllers: target.urls,
                token: target.token,
                env_file: write_env,
                exec,
            };
            controller::pointer::watch(options, crate::shutdown_signal())
                .await
                .context("watch the active-region pointer")
        }
    }
}

/// What an empty control token is told.
const EMPTY_TOKEN: &str = "the control token is empty: put a secret in it (e.g. `openssl rand -hex 32`)";

pub(crate) fn run_token(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::New { role, name } => {
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "--name '{name}' is not valid: use 1 to 64 letters, digits, '-' and '_' (an agent's is its --name)"
                );
            }
            let token = controller::auth::new_token().context("read random bytes from /dev/urandom")?;
            print!("{}", token_snippet(&role, &name, &token));
            Ok(())
        }
    }
}

/// What `token new` prints: the secret first (alone on its line, for `| head -1`), then where
/// it goes.
fn token_snippet(role: &str, name: &str, token: &str) -> String {
    let hash = controller::auth::TokenDigest::of(token).to_hex();
    let file = format!("{name}.token");
    let mut out = format!("{token}\n\n");
    match role {
        "dns" => out.push_str(&format!(
            "# The token above is the DNS admin token. Write it to a file only its readers can read\n\
             # (umask 077; printf %s TOKEN > {file}), then:\n\
             # - on the DNS server: switchyard dns --token-file {file}\n\
             # - in the controller's config (a relative path starts at the config's folder):\n\
             [dns]\ntoken_file = \"{file}\"\n"
        )),
        _ => {
            let holder = match role {
                "agent" => format!(
                    "# On the agent's host only: write the token to a file (umask 077; printf %s TOKEN > {file}) and run\n\
                     # switchyard agent --name {name} --token-file {file} --controller URL\n"
                ),
                "member" => format!(
                    "# On that controller's host only: write the token to a file (umask 077; printf %s TOKEN > {file}),\n\
                     # give it as [controller.ha] token_file = \"{file}\" and run switchyard controller --vantage {name}\n"
                ),
                _ => format!("# Give the token to '{name}' (CLI: --token-file FILE or SWITCHYARD_CONTROL_TOKEN).\n"),
            };
            out.push_str(&holder);
            out.push_str(&format!(
                "# In the controller's config (only the hash: the controller never needs the token itself):\n\
                 [[tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{hash}\"\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[controller]\naudit_log = \"/dev/null\"\n\n[quorum]\nvantages = [\"controller\", \"eu-agent\"]\n\n[[regions]]\nname = \"a\"\npriority = 1\n\n[[checks]]\nname = \"a-app\"\nregion = \"a\"\nkind = { type = \"tcp\", address = \"127.0.0.1:1\" }\n";

    #[test]
    fn the_steps_table_widens_to_its_longest_kind_and_name() {
        let value = serde_json::json!({"steps": [
            {"name": "dns", "kind": "route53_failover_health", "last": {"outcome": "ok", "generation": 3, "detail": "INSYNC"}},
            {"name": "a-step-with-a-long-name-indeed", "kind": "command", "last": {}},
        ]});
        let shown = render_status(&value);
        let lines: Vec<&str> = shown
            .lines()
            .filter(|l| l.starts_with("STEP") || l.starts_with("dns") || l.starts_with("a-step"))
            .collect();
        assert_eq!(lines.len(), 3, "{shown}");
        // Every column starts at the same place on every line.
        let outcome_at = |line: &str, word: &str| line.find(word).expect(word);
        let column = outcome_at(lines[0], "OUTCOME");
        assert_eq!(outcome_at(lines[1], "ok"), column, "{shown}");
        assert_eq!(outcome_at(lines[2], "not run"), column, "{shown}");
        assert!(lines[1].contains("route53_failover_health ok"), "{shown}");
    }

    #[test]
    fn status_shows_each_replicas_expected_loss_against_its_primary() {
        let check = |name: &str, region: &str, role: &str, kind: &str, received: &str, applied: Option<&str>| {
            serde_json::json!({"check": name, "region": region, "status": "up", "since_ms": 0, "detail": "",
                "position": {"role": role, "kind": kind, "received": received, "applied": applied}})
        };
        let value = serde_json::json!({"vantages": [
            {"name": "stale", "fresh": false, "checks": [check("orders-us", "us", "replica", "gtid", "0-1-1", None)]},
            {"name": "controller", "fresh": true, "checks": [
                check("orders-eu", "eu", "primary", "gtid", "0-1-105", None),
                check("orders-us", "us", "replica", "gtid", "0-1-102", Some("0-1-100")),
                check("pg-eu", "eu", "primary", "lsn", "0/3000200", None),
                check("pg-us", "us", "replica", "lsn", "0/3000148", Some("0/3000100")),
                check("redis-us", "us", "replica", "offset", "4000", None),
            ]},
        ]});
        let text = render_positions(&value);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            line("orders-us").ends_with("3 transaction(s): 0-1-103..0-1-105"),
            "{text}"
        );
        assert!(line("orders-eu").ends_with(" -"), "{text}");
        assert!(line("pg-us").ends_with("184 byte(s)"), "{text}");
        assert!(line("redis-us").contains("no offset primary answers"), "{text}");
        assert_eq!(render_positions(&serde_json::json!({"vantages": []})), "");
    }

    #[test]
    fn an_agent_snippet_is_accepted_by_the_controller_config() {
        let token = "0123456789abcdef0123456789abcdef";
        let text = token_snippet("agent", "eu-agent", token);
        assert_eq!(text.lines().next(), Some(token));
        assert!(text.contains("--token-file eu-agent.token"), "{text}");
        let snippet: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let config = controller::config::parse("c.toml", &format!("{CONFIG}\n{snippet}")).expect("valid");
        let access = controller::server::access(&config, None);
        let header = format!("Bearer {token}");
        let caller = access
            .authorize(Some(&header), controller::auth::Role::Agent)
            .expect("the token is accepted");
        assert_eq!(access.may_act_as(&caller, "eu-agent"), Ok(()));
    }

    #[test]
    fn an_operator_snippet_grants_the_operator_role() {
        let token = "fedcba9876543210fedcba9876543210";
        let text = token_snippet("operator", "alice", token);
        let snippet: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let config = controller::config::parse("c.toml", &format!("{CONFIG}\n{snippet}")).expect("valid");
        let access = controller::server::access(&config, None);
        let header = format!("Bearer {token}");
        assert_eq!(
            access.authorize(Some(&header), controller::auth::Role::Operator),
            Ok(controller::auth::Caller::Credential {
                name: "alice".into(),
                role: controller::auth::Role::Operator
            })
        );
        // The config has no agent token: that role is open (loopback only), read is covered.
        assert_eq!(access.open_roles(), [controller::auth::Role::Agent]);
    }

    #[test]
    fn a_dns_snippet_names_both_ends() {
        let text = token_snippet("dns", "dns", "0123456789abcdef0123456789abcdef");
        assert!(text.contains("switchyard dns --token-file dns.token"), "{text}");
        assert!(text.contains("[dns]\ntoken_file = \"dns.token\""), "{text}");
    }
}
