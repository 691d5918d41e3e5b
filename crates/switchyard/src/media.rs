//! `switchyard media sync|lag`: argument parsing and printing only; the copy and the
//! measurement are `providers::media`'s, with the `media_sync` steps of the controller's
//! configuration.

use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub(crate) struct MediaArgs {
    #[command(subcommand)]
    command: MediaCommand,
}

#[derive(clap::Args)]
struct Which {
    /// The controller's TOML configuration; its `kind = "media_sync"` runbook steps say where
    /// each region's media live (rsync folders or S3 buckets) and the limits of a run.
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "switchyard.toml")]
    config: PathBuf,
    /// Only this media_sync step (default: every one).
    #[arg(long)]
    step: Option<String>,
    /// The region whose media are copied or compared against: the active one. Under
    /// `switchyard lock run` it is the active region the lock saw ($SWITCHYARD_ACTIVE_REGION);
    /// otherwise the home region (the lowest priority number).
    #[arg(long, env = "SWITCHYARD_ACTIVE_REGION")]
    from: Option<String>,
    /// A receiving region (repeat for several); default: every region but --from.
    #[arg(long = "to")]
    to: Vec<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum MediaCommand {
    /// Copy the media the other regions lack from the active region (--from) to them, within
    /// the step's limits (objects_per_run_max, bytes_per_run_max, run_timeout_ms), and verify
    /// the copy by measuring the lag again.
    ///
    /// rsync: `rsync -rlpt --safe-links`: the active region's copy is the truth, so a file on
    /// the receiver that differs is replaced, even when it is newer (only a runbook step's copy
    /// into the region taking over keeps newer files, with `--update`); `--delete` only with
    /// `delete = true`. S3: ListObjectsV2 on both buckets, GetObject + PutObject of what is
    /// missing or differs in size or ETag (an object the receiver wrote itself after the
    /// source's version too, which only a runbook step's copy keeps), HeadObject to verify.
    /// Exits 1 when a copy failed.
    /// Run it from cron in the active region only: `SWITCHYARD_REGION=REGION switchyard lock
    /// run --name media-sync -- switchyard media sync --config FILE` (`lock run` needs this
    /// host's region, and the controller's URL unless it is http://127.0.0.1:7400).
    Sync(Which),
    /// Measure the media lag: per receiving region, the objects and bytes it lacks (or holds
    /// differently) of the active region's, and the age of the oldest, without copying.
    ///
    /// rsync: `rsync --dry-run --itemize-changes --stats`; S3: both bucket listings compared.
    /// The controller measures the same every lag_interval_ms and shows it in `status`, the
    /// dashboard and /metrics. Exits 1 when a measurement failed, 0 otherwise (lag or not).
    Lag(Which),
}

struct Pair<'a> {
    step: &'a str,
    media: &'a providers::media::MediaSync,
    from: String,
    to: String,
}

fn pairs<'a>(config: &'a controller::config::Config, which: &Which) -> anyhow::Result<Vec<Pair<'a>>> {
    let steps: Vec<(&str, &providers::media::MediaSync)> = config
        .steps
        .iter()
        .filter_map(|s| {
            s.action
                .as_deref()
                .and_then(|a| a.media())
                .map(|m| (s.name.as_str(), m))
        })
        .filter(|(name, _)| which.step.as_deref().is_none_or(|wanted| wanted == *name))
        .collect();
    if steps.is_empty() {
        match &which.step {
            Some(name) => bail!("{} has no media_sync step named '{name}'", which.config.display()),
            None => bail!(
                "{} has no runbook step with kind = \"media_sync\"; add one (see README, Media sync)",
                which.config.display()
            ),
        }
    }
    let regions = config.region_names();
    let from = match &which.from {
        Some(region) => {
            if !regions.contains(region) {
                bail!(
                    "--from {region} is not a region of {} ({})",
                    which.config.display(),
                    regions.join(", ")
                );
            }
            region.clone()
        }
        None => config
            .file
            .regions
            .iter()
            .min_by_key(|r| *r.priority.get_ref())
            .map(|r| r.name.get_ref().clone())
            .context("the configuration has no regions")?,
    };
    for region in &which.to {
        if !regions.contains(region) || *region == from {
            bail!("--to {region} is not a region of the configuration other than --from {from}");
        }
    }
    let mut out = Vec::new();
    for (step, media) in steps {
        for to in media.regions() {
            if *to != from && (which.to.is_empty() || which.to.contains(to)) {
                out.push(Pair {
                    step,
                    media,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// The line of a pair that failed (`what` says how, like `FAILED`): JSON with `--json`.
fn failure_line(
    json: bool,
    (step, from, to): (&str, &str, &str),
    what: &str,
    failure: &impl std::fmt::Display,
) -> String {
    if json {
        serde_json::json!({"step": step, "from": from, "to": to, "ok": false, "error": failure.to_string()}).to_string()
    } else {
        format!("{step}: {from} -> {to}: {what}: {failure}")
    }
}

pub(crate) async fn run(args: MediaArgs) -> anyhow::Result<()> {
    let (which, sync) = match &args.command {
        MediaCommand::Sync(which) => (which, true),
        MediaCommand::Lag(which) => (which, false),
    };
    let config = match controller::config::load(&which.config) {
        Ok(config) => config,
        Err(error) => bail!("invalid configuration; fix it first (`switchyard config check`):\n{error}"),
    };
    let mut failed = 0;
    for pair in pairs(&config, which)? {
        let (step, from, to) = (pair.step, pair.from.as_str(), pair.to.as_str());
        let line = if sync {
            match pair.media.sync(from, to).await {
                Ok(report) => {
                    if which.json {
                        serde_json::json!({
                            "step": step, "from": from, "to": to, "ok": true,
                            "copied_objects": report.copied_objects, "copied_bytes": report.copied_bytes,
                            "deleted_objects": report.deleted_objects, "remaining": report.remaining,
                            "limited": report.limited, "note": report.note,
                        })
                        .to_string()
                    } else {
                        format!("{step}: {}", report.describe(from, to))
                    }
                }
                Err(failure) => {
                    failed += 1;
                    failure_line(which.json, (step, from, to), "FAILED", &failure)
                }
            }
        } else {
            match pair.media.lag(from, to).await {
                Ok(lag) => {
                    if which.json {
                        serde_json::json!({"step": step, "from": from, "to": to, "ok": true, "lag": lag}).to_string()
                    } else {
                        format!("{step}: {to} lacks of {from}: {}", lag.describe())
                    }
                }
                Err(failure) => {
                    failed += 1;
                    failure_line(which.json, (step, from, to), "NOT MEASURED", &failure)
                }
            }
        };
        println!("{line}");
    }
    if failed > 0 {
        bail!("{failed} media {} failed", if sync { "copies" } else { "measurements" });
    }
    Ok(())
}
