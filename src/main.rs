//! `auditline`: one binary, one subcommand per service or tool.

use auditline::cli::{Cli, run};
use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // verify's own failures exit with 2, distinct from its findings.
    let is_verify = matches!(cli.command, auditline::cli::Command::Verify { .. });
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // verify's report is printed already; 1 says it found something.
        Err(e) if e.is::<auditline::cli::Findings>() => std::process::ExitCode::from(1),
        Err(e) if is_verify => {
            eprintln!("auditline: {e:#}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("auditline: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
