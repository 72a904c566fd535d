//! `auditline`: one binary, one subcommand per service or tool.

use auditline::cli::{Cli, run};
use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auditline: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
