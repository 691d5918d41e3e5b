//! `switchyard guard`: argument parsing and the checks before it starts; the logic is in
//! `controller::guard`.

use std::path::PathBuf;

use anyhow::bail;

#[derive(clap::Args)]
#[command(mut_arg("controller", |arg| arg.help(
    "Every controller member's URL, comma-separated (URL,URL,...): the guard asks them all every round and takes the newest fresh answer; with [guard] controller_members the list must name that many. Default http://127.0.0.1:7400."
)))]
pub(crate) struct GuardArgs {
    /// The controller's configuration file (a copy on this region's host is enough): the
    /// runbook's mysql_promote, postgres_promote and redis_promote steps name this region's
    /// servers and how to log in, and `[guard]` holds isolation_fence_ms.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: PathBuf,
    /// This host's region, as the configuration's [[regions]] name it.
    #[arg(long, env = "SWITCHYARD_REGION")]
    region: String,
    /// Where the guard keeps what it must not forget across a restart: which servers its
    /// isolation fence changed (the only ones it will unfence), the fence for another region,
    /// and when it last heard a controller member (a guard restarted while cut off fences as
    /// soon as the limit has passed). Without it a restarted guard starts afresh, and servers
    /// it fenced for isolation stay fenced until unfenced by hand.
    #[arg(long, env = "SWITCHYARD_GUARD_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Serve `GET /health` (200 while rounds go on, 503 `stuck` when none has ended for
    /// 10.5 s; the body says what the guard heard, decided and did to each server) and
    /// `GET /metrics` (Prometheus) on this address, e.g. 127.0.0.1:9187. Neither needs a token
    /// and neither changes anything: bind it to loopback or a management network.
    #[arg(long, env = "SWITCHYARD_GUARD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Once it guards (and serves --listen), write the /health and /metrics address there
    /// (`IP:PORT`, an empty line without --listen): what a supervisor waits for.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    client: crate::controller::ControllerClientArgs,
}

pub(crate) async fn run(args: GuardArgs) -> anyhow::Result<()> {
    let config = match controller::config::load(&args.config) {
        Ok(config) => config,
        Err(error) => bail!("invalid configuration; fix it first (`switchyard config check`):\n{error}"),
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let regions = config.region_names();
    if !regions.contains(&args.region) {
        bail!(
            "--region {}: {} names no such region; use one of: {}",
            args.region,
            args.config.display(),
            regions.join(", ")
        );
    }
    if !config
        .steps
        .iter()
        .any(|step| step.kind == controller::config::StepKind::Pointer)
    {
        bail!(
            "{}: the runbook has no `pointer` step, so the active-region pointer the guard follows never moves: add a step with kind = \"pointer\" after the database promote steps",
            args.config.display()
        );
    }
    let steps: Vec<controller::guard::Guarded> = config
        .steps
        .iter()
        .filter_map(|step| {
            let action = step.action.as_ref()?;
            action
                .guarded_regions()
                .contains(&args.region)
                .then(|| controller::guard::Guarded {
                    step: step.name.clone(),
                    action: std::sync::Arc::clone(action),
                })
        })
        .collect();
    if steps.is_empty() {
        bail!(
            "{}: no mysql_promote, postgres_promote or redis_promote step lists servers in {}: the guard would have nothing to fence",
            args.config.display(),
            args.region
        );
    }
    if args.state_file.is_none()
        && config
            .file
            .guard
            .as_ref()
            .is_some_and(|g| g.isolation_fence_ms.is_some())
    {
        tracing::warn!(
            "no --state-file: a restart forgets which servers the isolation fence changed (they stay fenced until unfenced by hand) and when a controller member was last heard"
        );
    }
    let target = crate::controller::target(&args.client)?;
    let controller_members = config
        .file
        .guard
        .as_ref()
        .and_then(|g| g.controller_members.as_ref())
        .map(|n| usize::try_from(*n.get_ref()).unwrap_or(usize::MAX));
    if let Some(members) = controller_members
        && target.urls.urls().len() < members
    {
        bail!(
            "[guard] controller_members = {members}, but --controller lists {}: give every member's URL (the guard may only take \"every member cut off from etcd\" for no isolation when it hears them all)",
            target.urls.urls().len()
        );
    }
    let status = controller::guard::status::StatusHandle::new(controller::guard::status::Status::new(
        &args.region,
        target.urls.urls().len(),
        config
            .file
            .guard
            .as_ref()
            .and_then(|g| g.isolation_fence_ms.as_ref())
            .map(|ms| *ms.get_ref()),
    ));
    let mut serving = String::new();
    if let Some(listen) = args.listen {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| {
            anyhow::anyhow!("--listen {listen}: cannot listen there ({error}); is the port in use? pick another")
        })?;
        let bound = listener.local_addr()?;
        serving = bound.to_string();
        tracing::info!(%bound, "serving /health and /metrics");
        let serving = controller::guard::status::serve(listener, std::sync::Arc::clone(&status));
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "the /health and /metrics server stopped");
            }
        });
    }
    let options = controller::guard::Options {
        region: args.region,
        regions,
        controllers: target.urls,
        token: target.token,
        steps,
        isolation_fence_ms: config
            .file
            .guard
            .as_ref()
            .and_then(|g| g.isolation_fence_ms.as_ref())
            .map(|ms| *ms.get_ref()),
        state_file: args.state_file,
        controller_members,
        status,
    };
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{serving}\n"))
            .map_err(|error| anyhow::anyhow!("write the ready file {}: {error}", path.display()))?;
    }
    controller::guard::run(options, crate::shutdown_signal()).await;
    Ok(())
}
