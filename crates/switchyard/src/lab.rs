//! `switchyard lab`: argument parsing for the lab; the logic is in the `lab` crate.

use std::path::PathBuf;

use anyhow::bail;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    command: Option<LabCommand>,
    /// Directory for the lab's configuration, data, logs, `lab.json` and `drill-targets.toml`.
    #[arg(long, default_value = "./lab")]
    dir: PathBuf,
    /// Regions to run (2 to 5).
    #[arg(long, default_value_t = 2)]
    regions: usize,
    /// First port of the lab's layout; every port it uses is derived from it.
    #[arg(long, default_value_t = lab::plan::BASE_PORT_DEFAULT)]
    base_port: u16,
    /// Leave out the controller and its agents (writes stay in each region; DNS is static).
    #[arg(long)]
    no_controller: bool,
    /// Run each region's processes (store, shops, load balancer) in a network namespace of its
    /// own, joined to the lab by a veth pair, so `lab ctl cut-network REGION` cuts a real link:
    /// packets vanish, connections time out. Linux, root and iproute2 (`ip netns`) only.
    #[arg(long)]
    netns: bool,
    /// Give each region's store a data disk of its own: a tmpfs of this many MiB mounted on its
    /// data folder (Linux, root), with the store's free-space watermark at a quarter of it, so
    /// `lab ctl fill-disk REGION` (and the `disk-full` drill) can fill one region's disk.
    #[arg(long, value_name = "MIB")]
    disk_mib: Option<u64>,
    /// Also run the infrastructure the controller's provider steps drive, on loopback: a BIND9
    /// primary of the lab's zone with a TSIG key (`rfc2136` step), HAProxy in front of every
    /// region's shops with its runtime API on a socket (`haproxy` step), and moto's server as
    /// the AWS API with a Route 53 hosted zone and an SSM parameter (`route53` and
    /// `ssm_parameter` steps). Those not installed are left out, with the command that
    /// installs them.
    #[arg(long)]
    providers: bool,
    /// Controllers to run: 1, or 3 — one per site (the first three regions, or two regions and
    /// a tie-breaker site) in `[controller.ha]` on a three-member etcd cluster (Debian's
    /// `etcd-server`), every etcd peer, etcd client and controller API link through the fault
    /// proxy so drills can cut them. `switchyard status --lab` shows who leads.
    #[arg(long, default_value_t = 1)]
    controllers: usize,
    /// Serve every API between components over HTTPS with a CA the lab generates at each start
    /// (in DIR/config/tls: ca.pem, cert.pem, key.pem): the stores' API and replication (mutual
    /// TLS between regions), the controller, the DNS and load balancers' admin APIs. The shop's
    /// front door, the fault proxy's API and etcd stay plain HTTP on loopback. `switchyard
    /// drill --lab DIR` and `status --lab DIR` trust the lab's CA by themselves.
    #[arg(long)]
    tls: bool,
    /// Also run, per region, a MariaDB and a Redis from Debian (`mariadb-server`,
    /// `redis-server`): the active region's are the primaries, the others replicate from them
    /// through the fault proxy (MariaDB with GTIDs), the controller's runbook promotes, fences
    /// and rejoins them (`mysql_promote`, `redis_promote`) before it moves the traffic, and the
    /// demo shop keeps its orders in MariaDB and its sessions in Redis. Those not installed are
    /// left out, with the command that installs them.
    #[arg(long)]
    databases: bool,
    /// With --databases: MariaDB semi-synchronous replication (a commit is acknowledged once a
    /// replica has it), so a region outage loses no acknowledged order.
    #[arg(long, requires = "databases")]
    semi_sync: bool,
    /// Do not start anything: check the lab in --dir, print its table, and exit 0 when every
    /// component is up, 1 with the reason otherwise.
    #[arg(long)]
    status: bool,
    /// Once everything is up, print one line for CI logs (components running, regions, where
    /// the details are) instead of the table and the commands to try.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Subcommand)]
enum LabCommand {
    /// Faults on a running lab, carried out by its supervisor: kill (kill -9), stop (SIGSTOP),
    /// cont (SIGCONT), restart a component; cut-network / heal-network a region (--netns labs); fill-disk /
    /// free-disk a region's data disk (--disk-mib labs).
    Ctl(CtlArgs),
    /// Runs an outside program as a lab component (used by the lab itself for BIND9 and
    /// HAProxy): ready once it accepts TCP connections, stopped with the component.
    #[command(hide = true)]
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Ready once this address accepts TCP connections.
    #[arg(long)]
    ready_tcp: std::net::SocketAddr,
    /// The program to run.
    #[arg(long)]
    program: PathBuf,
    /// One argument of the program (repeat, in order).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Written with the address once the program is ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// A JSON array of HTTP requests ({what, method, path, headers, body}) sent to the ready
    /// address once the program listens; ready only when each answered 2xx.
    #[arg(long)]
    setup: Option<PathBuf>,
    /// A preparation run once before the program (MariaDB's `mariadb-install-db`), skipped
    /// when the file named by --init-creates exists.
    #[arg(long, requires = "init_creates")]
    init_program: Option<PathBuf>,
    /// One argument of the preparation (repeat, in order).
    #[arg(long = "init-arg", allow_hyphen_values = true)]
    init_args: Vec<String>,
    /// The file the preparation makes: when it exists, the preparation is skipped.
    #[arg(long)]
    init_creates: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The running lab's directory.
    #[arg(long, default_value = "./lab")]
    dir: PathBuf,
    #[arg(value_enum)]
    action: CtlAction,
    /// The component, as the lab's table names it (e.g. store-us-east-1); for cut-network,
    /// heal-network, fill-disk and free-disk, the region (e.g. us-east-1).
    name: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CtlAction {
    /// kill -9 the component.
    Kill,
    /// SIGSTOP it (hung).
    Stop,
    /// SIGCONT it.
    Cont,
    /// Stop it and start it again.
    Restart,
    /// Take the region's network link down (a lab started with --netns).
    CutNetwork,
    /// Bring the region's network link back up.
    HealNetwork,
    /// Fill the region's data disk below its store's watermark (a lab started with --disk-mib).
    FillDisk,
    /// Give the region's data disk its room back.
    FreeDisk,
}

pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    if let Some(LabCommand::Exec(exec)) = args.command {
        let options = lab::exec::ExecOptions {
            program: exec.program,
            args: exec.args,
            ready_tcp: exec.ready_tcp,
            ready_file: exec.ready_file,
            setup: exec.setup,
            init: exec
                .init_program
                .zip(exec.init_creates)
                .map(|(program, creates)| lab::exec::InitStep {
                    program,
                    args: exec.init_args,
                    creates,
                }),
        };
        return match lab::exec::exec(&options, crate::shutdown_signal()).await {
            Ok(0) => Ok(()),
            Ok(code) => bail!("{} exited with code {code}", options.program.display()),
            Err(reason) => bail!("{reason}"),
        };
    }
    if let Some(LabCommand::Ctl(ctl)) = args.command {
        let action = match ctl.action {
            CtlAction::Kill => lab::Action::Kill,
            CtlAction::Stop => lab::Action::Stop,
            CtlAction::Cont => lab::Action::Cont,
            CtlAction::Restart => lab::Action::Restart,
            CtlAction::CutNetwork => lab::Action::CutNetwork,
            CtlAction::HealNetwork => lab::Action::HealNetwork,
            CtlAction::FillDisk => lab::Action::FillDisk,
            CtlAction::FreeDisk => lab::Action::FreeDisk,
        };
        return match lab::control(&ctl.dir, action, &ctl.name).await {
            Ok(message) => {
                println!("{message}");
                Ok(())
            }
            Err(reason) => bail!("{reason}"),
        };
    }
    if args.status {
        // The same as `status --lab DIR`.
        return crate::controller::lab_status(&args.dir).await;
    }
    // Absolute from here on: the generated configurations name files in the lab's folder, and
    // each reader resolves a relative path from somewhere else (the controller from its config
    // file's folder, BIND from its `directory`, a drill's fault commands from its own working
    // directory), so `--dir ./lab` put the controller's audit log in `lab/config/lab/data/` and
    // kept `--databases` and `--providers` from starting.
    let dir = match std::path::absolute(&args.dir) {
        Ok(dir) => dir,
        Err(error) => bail!("--dir {}: cannot make it an absolute path: {error}", args.dir.display()),
    };
    let options = lab::LabOptions {
        dir,
        regions: args.regions,
        base_port: args.base_port,
        controller: !args.no_controller,
        netns: args.netns,
        disk_mib: args.disk_mib,
        providers: args.providers.then(lab::providers::Programs::find),
        controllers: args.controllers,
        etcd: (args.controllers > 1)
            .then(|| lab::providers::find_program("etcd"))
            .flatten(),
        tls: args.tls,
        quiet: args.quiet,
        databases: args.databases.then(|| lab::databases::DatabaseOptions {
            programs: lab::databases::DbPrograms::find(),
            semi_sync: args.semi_sync,
        }),
    };
    lab::run(&options, crate::shutdown_signal(), &mut std::io::stdout()).await?;
    Ok(())
}
