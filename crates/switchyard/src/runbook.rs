//! `switchyard runbook show`: argument parsing only; the document is built by
//! `controller::runbook_doc`.

use std::path::PathBuf;

use anyhow::bail;

#[derive(clap::Args)]
pub(crate) struct RunbookArgs {
    #[command(subcommand)]
    command: RunbookCommand,
}

#[derive(clap::Subcommand)]
enum RunbookCommand {
    /// Print the failover and failback procedure the controller runs with this file — regions,
    /// checks, quorum, timers, and the steps of every move in order — as Markdown (or HTML).
    Show {
        /// The controller's TOML configuration.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "switchyard.toml")]
        config: PathBuf,
        /// A self-contained HTML page instead of Markdown.
        #[arg(long)]
        html: bool,
    },
}

pub(crate) fn run(args: RunbookArgs) -> anyhow::Result<()> {
    let RunbookCommand::Show { config, html } = args.command;
    let parsed = match controller::config::load(&config) {
        Ok(parsed) => parsed,
        Err(error) => bail!("invalid configuration; fix it first (`switchyard config check`):\n{error}"),
    };
    let blocks = controller::runbook_doc::document(&parsed, &config.display().to_string());
    let text = if html {
        controller::runbook_doc::html(&blocks)
    } else {
        controller::runbook_doc::markdown(&blocks)
    };
    print!("{text}");
    Ok(())
}
