//! `switchyard agent`: argument parsing for a remote vantage point; the logic is in
//! `health::agent`.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The controller's base URL, e.g. http://10.0.0.2:7400; for a group of controllers, every
    /// member's, comma-separated: the agent moves to the next member when one cannot be reached.
    #[arg(long, env = "SWITCHYARD_CONTROLLER", value_name = "URL[,URL...]")]
    controller: String,
    /// This vantage point's name, as listed in the controller's config (e.g. eu-agent).
    #[arg(long, env = "SWITCHYARD_AGENT_NAME")]
    name: String,
    /// File holding this agent's own token (role agent, listed for --name in the controller's
    /// [[tokens]]; `switchyard token new --role agent --name NAME` makes one), or set
    /// SWITCHYARD_CONTROL_TOKEN. The variable is the one every other command reads;
    /// SWITCHYARD_TOKEN_FILE, which the agent read before, still works (with a warning).
    #[arg(long, env = "SWITCHYARD_CONTROL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Milliseconds between two fetches of the plan (the checks to run).
    #[arg(long, default_value_t = health::agent::DEFAULT_PLAN_REFRESH_MS)]
    plan_refresh_ms: u64,
    /// Probes running at the same time, at most.
    #[arg(long, default_value_t = health::runner::DEFAULT_PROBES_IN_FLIGHT_MAX)]
    probes_in_flight_max: usize,
}

/// The variable the agent alone read its token file from before it took
/// SWITCHYARD_CONTROL_TOKEN_FILE like every other command.
const OLD_TOKEN_FILE_ENV: &str = "SWITCHYARD_TOKEN_FILE";

pub(crate) async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let token_file = args.token_file.or_else(|| {
        let old = std::env::var_os(OLD_TOKEN_FILE_ENV).filter(|v| !v.is_empty())?;
        tracing::warn!(
            "{OLD_TOKEN_FILE_ENV} is deprecated for the agent: set SWITCHYARD_CONTROL_TOKEN_FILE, as for every other command"
        );
        Some(PathBuf::from(old))
    });
    let token = crate::read_token(
        token_file.as_deref(),
        "SWITCHYARD_CONTROL_TOKEN",
        "the control token is empty: put the controller's token in --token-file or SWITCHYARD_CONTROL_TOKEN",
    )?;
    let mut config = health::agent::AgentConfig::new(args.controller, args.name);
    config.token = token;
    config.plan_refresh_ms = args.plan_refresh_ms;
    config.runner.probes_in_flight_max = args.probes_in_flight_max.max(1);
    tracing::info!(controller = %config.controller, name = %config.name, "agent starting");
    health::agent::run(config, crate::shutdown_signal())
        .await
        .context("run the agent")
}
