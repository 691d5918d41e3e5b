//! `switchyard lab`: argument parsing for the lab; the logic is in the `lab` crate.

use std::path::PathBuf;

use anyhow::bail;

#[derive(clap::Args)]
pub struct LabArgs {
    /// Directory for the lab's configuration, data, logs and `lab.json`.
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
    /// Do not start anything: check the lab in --dir, print its table, and exit 0 when every
    /// component is up, 1 with the reason otherwise.
    #[arg(long)]
    status: bool,
}

pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    if args.status {
        return match lab::status(&args.dir) {
            Ok(table) => {
                print!("{table}");
                Ok(())
            }
            Err(reason) => bail!("{reason}"),
        };
    }
    let options = lab::LabOptions {
        dir: args.dir,
        regions: args.regions,
        base_port: args.base_port,
        controller: !args.no_controller,
    };
    lab::run(&options, crate::shutdown_signal(), &mut std::io::stdout()).await?;
    Ok(())
}
