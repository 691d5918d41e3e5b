//! `switchyard lock run` (and the hidden `lock exec-guard`): argument parsing only; the logic
//! is in the `lock` crate.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub(crate) struct LockArgs {
    #[command(subcommand)]
    command: LockCommand,
}

#[derive(clap::Subcommand)]
enum LockCommand {
    /// Run CMD only if this host's region is the active one and this run holds the lease NAME
    /// (a fenced lease in a global table of the local store); renew it while CMD runs — and while
    /// anything CMD started runs, in its process group or not (setsid, a daemon) — and release it
    /// when all of that is gone. Exit status: CMD's own when it ran; 100 not the active region,
    /// 101 lease held elsewhere (both print `switchyard lock: skipped '…'`), 102 pointer unknown,
    /// 103 store unavailable (both print `switchyard lock: cannot run '…'`), 104 CMD stopped
    /// mid-run (pointer moved, lease lost, or its guard killed), 105 CMD ran longer than
    /// --max-run-s, 127 CMD could not start.
    Run(Box<RunArgs>),
    /// Internal: the reaper between `lock run` and the command (see `lock::guard`).
    #[command(name = "exec-guard", hide = true)]
    ExecGuard {
        #[arg(long)]
        parent_pid: i32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The lock's name, one per job (e.g. magento-cron).
    #[arg(long)]
    name: String,
    /// This host's region, as the controller names it.
    #[arg(long, env = "SWITCHYARD_REGION")]
    region: String,
    /// The local regional store (`switchyard store`).
    #[arg(long, env = "SWITCHYARD_STORE", default_value = "http://127.0.0.1:8000")]
    store: String,
    /// The lease table: a global table with a string partition key `name`.
    #[arg(long, default_value = lock::store::TABLE_DEFAULT)]
    table: String,
    /// Seconds a lease lives without renewal: how long a crashed holder blocks the job. It is
    /// renewed every third of it while CMD runs.
    #[arg(long, default_value_t = 60)]
    ttl_s: u64,
    /// Milliseconds to wait after taking the lease before starting CMD, so a lease another
    /// region wrote just before the pointer moved has replicated here; keep it above the
    /// replication lag between regions.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Seconds CMD gets between SIGTERM and SIGKILL when it must stop.
    #[arg(long, default_value_t = 10)]
    kill_grace_s: u64,
    /// Stop CMD (and what it started) after this many seconds, 1..=604800: SIGTERM to every
    /// process of it, SIGKILL after --kill-grace-s, exit status 105; the lease is released once
    /// they are gone. Without it a hung job holds the lease for as long as it hangs.
    #[arg(long, value_name = "SECONDS")]
    max_run_s: Option<u64>,
    #[command(flatten)]
    client: crate::controller::ControllerClientArgs,
    /// Access key for SigV4-signed store requests (with --secret-access-key).
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key_id: Option<String>,
    /// Secret key for SigV4-signed store requests (with --access-key-id).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_access_key: Option<String>,
    /// The job: a program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// When this process is `lock exec-guard`: runs the guard (before any other runtime starts)
/// and returns its exit status.
pub(crate) fn exec_guard(args: &LockArgs) -> Option<i32> {
    let LockCommand::ExecGuard { parent_pid, command } = &args.command else {
        return None;
    };
    Some(lock::guard::run(*parent_pid, command))
}

/// The exit status of arguments `lock run` refuses (clap's own refusals exit 2 too).
const BAD_ARGUMENTS_STATUS: i32 = lock::EXIT_BAD_ARGUMENTS;

pub(crate) async fn run(args: LockArgs) -> anyhow::Result<i32> {
    let LockCommand::Run(args) = args.command else {
        bail!("lock exec-guard is internal to lock run");
    };
    // Arguments clap took but `lock run` refuses exit 2, as clap's own refusals do (README's
    // exit statuses): a crontab tells a wrong line from a job that failed.
    // Said as `lock run`'s own lines are, so that the README's crontab mails it.
    let name = args.name.clone();
    let bad_arguments = |message: String| {
        eprintln!("{}", lock::run::not_run_line(BAD_ARGUMENTS_STATUS, &name, message));
        Ok(BAD_ARGUMENTS_STATUS)
    };
    if let Err(message) = lock::store::check_name(&args.name) {
        return bad_arguments(message);
    }
    if let Err(message) = store::global::check_region_name(&args.region) {
        return bad_arguments(format!("--region: {message}"));
    }
    let timing = match lock::lease::Timing::new(
        args.ttl_s.saturating_mul(1000),
        args.settle_ms,
        args.kill_grace_s.saturating_mul(1000),
    ) {
        Ok(timing) => timing,
        Err(message) => return bad_arguments(message),
    };
    let max_run_ms = match lock::lease::max_run_ms(args.max_run_s) {
        Ok(max_run_ms) => max_run_ms,
        Err(message) => return bad_arguments(message),
    };
    let credentials = match (args.access_key_id, args.secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(demoapp::AwsCredentials {
            access_key_id,
            secret_access_key,
        }),
        (None, None) => None,
        _ => return bad_arguments("give both --access-key-id and --secret-access-key (or neither)".into()),
    };
    let client = match demoapp::dynamo::Client::new(&args.store, &args.region, credentials) {
        Ok(client) => client,
        Err(message) => return bad_arguments(format!("--store: {message}")),
    };
    let command: Vec<String> = args
        .command
        .into_iter()
        .map(|part| {
            part.into_string()
                .map_err(|part| anyhow::anyhow!("the command part {part:?} is not UTF-8"))
        })
        .collect::<anyhow::Result<_>>()?;
    let target = match crate::controller::target(&args.client) {
        Ok(target) => target,
        Err(error) => {
            let problem = common::error::chain(error.as_ref());
            let fix = if problem.contains("token") {
                "; give the controller's read token with --token-file or SWITCHYARD_CONTROL_TOKEN_FILE (a file holding it), or SWITCHYARD_CONTROL_TOKEN"
            } else {
                ""
            };
            return bad_arguments(format!("{problem}{fix}"));
        }
    };
    let guard_program: PathBuf = std::env::current_exe().context("find this binary to start the command")?;
    let options = lock::run::Options {
        name: args.name,
        region: args.region,
        controllers: target.urls,
        token: target.token,
        table: lock::store::LeaseTable {
            client,
            table: args.table,
        },
        timing,
        command,
        guard_program,
        holder: lock::run::holder_name(),
        max_run_ms,
    };
    Ok(lock::run::run(options, &lock::run::SystemClock).await)
}
