//! `flotilla-agent`: the edge agent binary. For now it only answers
//! `--version` and `--help`; enrolment and the sync loop that drive the
//! artifact cache and health probes (in the library) come next, with the
//! command line `--controller URL --bootstrap-token TOKEN --name NAME
//! --data-dir DIR [--labels k=v,...] [--http ADDR] [--grpc ADDR]`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla's edge agent")]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    // Exit non-zero so that a supervisor does not take this build for a
    // running agent.
    eprintln!(
        "flotilla-agent: enrolment arrives with the sync loop; this build has no agent to run yet"
    );
    ExitCode::FAILURE
}
