//! `switchyard drill SCENARIO`: argument parsing and report files; the drill itself lives in
//! the `drill` crate.

use std::path::PathBuf;

use anyhow::{Context, bail};
use drill::runtime::deployment::{Deployment, LAB_TARGETS_FILE};
use drill::runtime::target::{CommandProcessControl, DeploymentTarget, NoProcessControl, ProcessControl};
use drill::runtime::{CLIENTS_MAX, DrillOptions};
use drill::scenario::{self, Durations};

/// Longest phase a drill accepts, in seconds.
const PHASE_S_MAX: u64 = 3_600;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("deployment").required(true).args(["lab", "targets"])))]
pub(crate) struct DrillArgs {
    /// The scenario: region-outage, region-hang (SIGSTOP the primary region, SIGCONT at
    /// heal), region-partition, vantage-partition, controller-partition (the controller's own
    /// view cut: must not fail over), region-isolation (cut the primary's network link; a lab
    /// started with --netns), flapping-health, slow-region, store-crash, failback, or
    /// disk-full (fill the primary store's disk; a lab started with --disk-mib); with
    /// several controllers (a lab started with --controllers 3): controller-crash (kill -9 the
    /// leader mid-runbook), controller-isolation (cut it off etcd mid-runbook) or
    /// leader-region-outage (lose the leader's whole site); with databases (a lab started with
    /// --databases): db-lag (the standby's MariaDB applier delayed, then the primary region
    /// killed: promotion must be refused, naming the would-be loss) or db-partition (the
    /// primary cut off, its databases included, while its shops write on: its guard must stop
    /// those writes within 2.5 s of the pointer moving).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(scenario::NAMES), hide_possible_values = true)]
    scenario: String,
    /// A running lab's directory: the drill reads DIR/drill-targets.toml, which
    /// `switchyard lab --dir DIR` writes.
    #[arg(long, value_name = "DIR")]
    lab: Option<PathBuf>,
    /// A deployment description (TOML, or JSON when it ends in .json) for a deployment that is
    /// not a lab: DNS server and name, stores per region, controller and fault-proxy URLs,
    /// link names, process-control commands: docs/examples/drill-targets.toml is a commented
    /// example (`switchyard config check FILE` checks one).
    /// `--config FILE` is the same flag.
    #[arg(long, visible_alias = "config", value_name = "FILE")]
    targets: Option<PathBuf>,
    /// Seconds the fault lasts.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Seconds of normal traffic before the fault (the baseline).
    #[arg(long, default_value_t = 10)]
    warmup_s: u64,
    /// Seconds after healing (convergence, failback, the recovery window).
    #[arg(long, default_value_t = 30)]
    settle_s: u64,
    /// Shop clients resolving the name and placing orders.
    #[arg(long, default_value_t = drill::runtime::CLIENTS_DEFAULT)]
    clients: u32,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page (timeline chart included) to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// One line for CI logs instead of the full report (verdict, RTO, RPO, false failovers,
    /// failed expectations); no progress bar. `--json`/`--html` still write the full report.
    #[arg(long)]
    quiet: bool,
}

impl DrillArgs {
    /// The lab this drill runs on, if any.
    pub(crate) fn lab_dir(&self) -> Option<&std::path::Path> {
        self.lab.as_deref()
    }

    /// `--quiet`: one line on stdout, and only warnings and errors logged.
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }
}

fn phase_ms(flag: &str, seconds: u64, min: u64) -> anyhow::Result<u64> {
    if seconds < min || seconds > PHASE_S_MAX {
        bail!("--{flag} {seconds}: give {min} to {PHASE_S_MAX} seconds");
    }
    Ok(seconds * 1000)
}

fn load_deployment(args: &DrillArgs) -> anyhow::Result<Deployment> {
    let path = match (&args.lab, &args.targets) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                bail!(
                    "lab directory {} does not exist: start a lab with `switchyard lab --dir {}` first",
                    dir.display(),
                    dir.display()
                );
            }
            // A lab that stopped is said so before any fault or request (one with a component
            // still restarting after another drill is the drill's to wait for).
            if dir.join(lab::state::STATE_FILE).is_file()
                && let Err(error) = lab::status(dir)
                && error.table.is_none()
            {
                bail!("{}", error.reason);
            }
            let path = dir.join(LAB_TARGETS_FILE);
            if !path.is_file() {
                bail!(
                    "{} has no {LAB_TARGETS_FILE}: is the lab running? `switchyard lab --dir {}` writes it once every component is up",
                    dir.display(),
                    dir.display()
                );
            }
            path
        }
        (None, Some(path)) => path.clone(),
        (None, None) => bail!("pass --lab DIR or --targets (--config) FILE"),
    };
    Deployment::load(&path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub(crate) async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let scenario = scenario::by_name(&args.scenario).map_err(|e| anyhow::anyhow!("{e}"))?;
    let durations = Durations {
        warmup_ms: phase_ms("warmup-s", args.warmup_s, 1)?,
        fault_ms: phase_ms("duration-s", args.duration_s, 1)?,
        settle_ms: phase_ms("settle-s", args.settle_s, 1)?,
    };
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        bail!("--clients {}: give 1 to {CLIENTS_MAX}", args.clients);
    }
    let deployment = load_deployment(&args)?;
    let options = DrillOptions {
        durations,
        clients: args.clients,
        progress: !args.no_progress && !args.quiet,
    };
    match deployment.process_control.clone() {
        Some(commands) => {
            run_with(
                &args,
                &scenario,
                deployment,
                CommandProcessControl { commands },
                &options,
            )
            .await
        }
        None => run_with(&args, &scenario, deployment, NoProcessControl, &options).await,
    }
}

async fn run_with<P: ProcessControl>(
    args: &DrillArgs,
    scenario: &scenario::Scenario,
    deployment: Deployment,
    processes: P,
    options: &DrillOptions,
) -> anyhow::Result<()> {
    let target = DeploymentTarget::new(deployment.clone(), processes);
    if !args.quiet {
        eprintln!(
            "drill {}: {} ({} s)",
            scenario.name,
            scenario.summary,
            options.durations.total_ms() / 1000
        );
    }
    let outcome = drill::runtime::run(scenario, &deployment, &target, options, crate::shutdown_signal())
        .await
        .context("run the drill")?;
    let report = &outcome.report;
    if args.quiet {
        print!("{}", drill::report::render_line(report));
    } else {
        print!("{}", drill::report::render_text(report));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report).context("encode the report")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        if !args.quiet {
            println!("  JSON report: {}", path.display());
        }
    }
    if let Some(path) = &args.html {
        std::fs::write(path, drill::report::render_html(report))
            .with_context(|| format!("write {}", path.display()))?;
        if !args.quiet {
            println!("  HTML report: {}", path.display());
        }
    }
    if outcome.overflowed {
        eprintln!("warning: the history hit its record limit; the figures cover part of the drill");
    }
    if !outcome.heal_errors.is_empty() {
        bail!(
            "interrupted, and some faults could not be healed — fix them by hand: {}",
            outcome.heal_errors.join("; ")
        );
    }
    if outcome.interrupted {
        bail!("interrupted: the faults this drill injected were healed; the report covers the part that ran");
    }
    if !report.passed {
        bail!(
            "drill {} failed: {}",
            scenario.name,
            report.failed_expectations().join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        drill: super::DrillArgs,
    }

    /// The scenario argument's help names every scenario the drill runs.
    #[test]
    fn the_help_names_every_scenario() {
        let command = Cli::command();
        let help = command
            .get_arguments()
            .find(|argument| argument.get_id() == "scenario")
            .and_then(|argument| argument.get_help())
            .expect("the scenario argument has help")
            .to_string();
        for name in drill::scenario::NAMES {
            assert!(help.contains(name), "the scenario help does not name {name}: {help}");
        }
    }

    /// Without a deployment the error names both ways to give one (a lab or a targets file),
    /// not `--lab` alone; both at once are refused.
    #[test]
    fn a_drill_without_a_deployment_names_lab_and_targets() {
        use clap::Parser;
        let error = match Cli::try_parse_from(["drill", "region-outage"]) {
            Ok(_) => panic!("a drill without --lab or --targets parsed"),
            Err(error) => error.render().to_string(),
        };
        assert!(error.contains("--lab") && error.contains("--targets"), "{error}");
        assert!(Cli::try_parse_from(["drill", "region-outage", "--targets", "t.toml"]).is_ok());
        assert!(Cli::try_parse_from(["drill", "region-outage", "--config", "t.toml"]).is_ok());
        assert!(Cli::try_parse_from(["drill", "region-outage", "--lab", "lab"]).is_ok());
        assert!(Cli::try_parse_from(["drill", "region-outage", "--lab", "lab", "--targets", "t.toml"]).is_err());
    }
}
