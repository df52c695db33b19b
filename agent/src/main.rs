//! `flotilla-agent`: the edge agent binary. For now it only answers
//! `--version` and `--help`; enrolment and the sync loop that drive the
//! artifact cache and health probes (in the library) come next, with the
//! command line `--controller URL --bootstrap-token TOKEN --name NAME
//! --data-dir DIR [--labels k=v,...] [--http ADDR] [--grpc ADDR]`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla's edge agent")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("enrolment arrives with the sync loop; this build has no agent to run yet")
}
