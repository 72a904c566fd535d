//! The command line: global flags that override settings, and the subcommands.

use crate::loadgen::{self, LoadgenArgs};
use anyhow::Context;
use auditline_shared::{Settings, db, telemetry};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};
use sqlx::{Postgres, migrate::MigrateDatabase};
use std::path::PathBuf;

/// Auditline: audit events from RabbitMQ into exactly-once, partitioned PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "auditline", version, about)]
pub struct Cli {
    /// TOML settings file (layered over defaults, under AUDITLINE_* variables and flags).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL (overrides AUDITLINE_DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// RabbitMQ URL (overrides AUDITLINE_AMQP_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub amqp_url: Option<String>,
    /// Prefix of every exchange and queue (overrides AUDITLINE_NAMESPACE).
    #[arg(long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed, run pending migrations, create partitions ahead.
    Migrate,
    /// Run the writer: consume `<ns>.writer` and store events.
    Writer {
        /// Listen address of /metrics, /healthz and /readyz (overrides AUDITLINE_WRITER_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run every service in one process (today: the writer).
    All {
        /// Listen address of the writer's /metrics (overrides AUDITLINE_WRITER_LISTEN).
        #[arg(long)]
        writer_listen: Option<String>,
    },
    /// Publish generated events and report throughput and publish→committed latency.
    Loadgen(LoadgenArgs),
}

impl Cli {
    /// The flags that override settings, as a partial settings table.
    fn overrides(&self) -> Value {
        let mut map = Map::new();
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                map.insert(key.into(), json!(v));
            }
        };
        put("database_url", &self.database_url);
        put("amqp_url", &self.amqp_url);
        put("namespace", &self.namespace);
        match &self.command {
            Command::Writer { listen } => put("writer_listen", listen),
            Command::All { writer_listen } => put("writer_listen", writer_listen),
            Command::Migrate | Command::Loadgen(_) => {}
        }
        Value::Object(map)
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref(), cli.overrides())?;
    telemetry::init(settings.log_format);
    match cli.command {
        Command::Migrate => migrate(&settings).await,
        Command::Writer { .. } | Command::All { .. } => {
            let shutdown = shutdown_signal();
            let app = auditline_writer::Application::build(settings).await?;
            tracing::info!(port = app.port(), "writer listening");
            app.run_until_stopped(shutdown).await
        }
        Command::Loadgen(args) => loadgen::run(&settings, args).await,
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let url = settings.database_url.expose();
    if !Postgres::database_exists(url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", settings.database_url))?
    {
        Postgres::create_database(url)
            .await
            .context("cannot create the database")?;
        tracing::info!(url = %settings.database_url, "database created");
    }
    let pool = db::pool(&settings.database_url, 2)?;
    db::migrate(&pool).await?;
    let created = db::ensure_runway(&pool, settings.partitions.ahead_days).await?;
    let runway = db::runway_days(&pool).await?;
    println!(
        "migrations applied; {created} partitions created; partitions cover today and {runway} days ahead"
    );
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called (not when first polled), so a signal that arrives while a service is
/// still starting is not lost to the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown signal received");
    }
}
