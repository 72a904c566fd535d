//! The command line: global flags that override settings, and the subcommands.

use crate::loadgen::{self, LoadgenArgs};
use anyhow::Context;
use auditline_integrity::{checkpoint, storage::Storage};
use auditline_shared::{
    Settings,
    auth::{self, Scope},
    db, telemetry,
};
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
    /// Run the HTTP ingest gateway (`POST /v1/events`).
    Ingest {
        /// Listen address (overrides AUDITLINE_INGEST_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the admin HTTP service (search, users, metrics, OpenAPI).
    Admin {
        /// Listen address (overrides AUDITLINE_ADMIN_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run every service in one process: the writer, the ingest gateway and the admin service.
    All {
        /// Listen address of the writer's /metrics (overrides AUDITLINE_WRITER_LISTEN).
        #[arg(long)]
        writer_listen: Option<String>,
        /// Listen address of the ingest gateway (overrides AUDITLINE_INGEST_LISTEN).
        #[arg(long)]
        ingest_listen: Option<String>,
        /// Listen address of the admin service (overrides AUDITLINE_ADMIN_LISTEN).
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Run the demo actix-web app, audited by `AuditMiddleware`.
    DemoApp(crate::demo::DemoArgs),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Publish generated events and report throughput and publish→committed latency.
    Loadgen(LoadgenArgs),
    /// Prove the stored events untouched: recompute every seal, check each
    /// chain against the newest signed checkpoint, and every row in the range
    /// against its seal. Exit status 0 when clean, 1 on any finding, 2 when
    /// verify itself failed.
    Verify {
        /// Verify rows that occurred at or after this (RFC 3339; default: all).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Verify rows that occurred before this (RFC 3339; default: all).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Print the report as JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// Walk the checkpoint history from this file on (e.g. after the
        /// checkpoint key was rotated); default: the whole history.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Write a checkpoint of every seal chain to storage now.
    Checkpoint,
    /// Daily partitions: list them, archive one, or drop one (archived and
    /// verified first, the drop recorded and signed).
    Partitions {
        #[command(subcommand)]
        action: PartitionAction,
    },
    /// Print new Ed25519 key pairs: the checkpoint key (`integrity.signing_key`
    /// / `verify_key`) and the writers' seal key (`integrity.writer_key` /
    /// `writer_verify_keys`).
    Keygen,
}

/// `auditline partitions …`
#[derive(Debug, Subcommand)]
pub enum PartitionAction {
    /// The partitions (estimated rows, size) and the days retention dropped.
    List,
    /// Archive a past day to `partitions.archive_destination` and verify the archive; nothing is dropped.
    Archive {
        /// The UTC day, YYYY-MM-DD.
        #[arg(long)]
        day: chrono::NaiveDate,
    },
    /// Archive, verify, then detach and drop a day's partition.
    Drop {
        /// The UTC day, YYYY-MM-DD.
        #[arg(long, required_unless_present = "expired", conflicts_with = "expired")]
        day: Option<chrono::NaiveDate>,
        /// Every day older than `partitions.retention_days`.
        #[arg(long)]
        expired: bool,
    },
}

/// `verify` found something: the process exits with status 1.
#[derive(Debug, thiserror::Error)]
#[error("verify found {0} problems")]
pub struct Findings(pub u64);

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
            Command::Ingest { listen } => put("ingest_listen", listen),
            Command::Admin { listen } => put("admin_listen", listen),
            Command::All {
                writer_listen,
                ingest_listen,
                admin_listen,
            } => {
                put("writer_listen", writer_listen);
                put("ingest_listen", ingest_listen);
                put("admin_listen", admin_listen);
            }
            Command::Migrate
            | Command::Loadgen(_)
            | Command::Token { .. }
            | Command::DemoApp(_)
            | Command::Verify { .. }
            | Command::Checkpoint
            | Command::Partitions { .. }
            | Command::Keygen => {}
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
        Command::Writer { .. } => {
            let shutdown = shutdown_signal();
            let app = auditline_writer::Application::build(settings).await?;
            tracing::info!(port = app.port(), "writer listening");
            app.run_until_stopped(shutdown).await
        }
        Command::Ingest { .. } => {
            let shutdown = shutdown_signal();
            let app = auditline_ingest::gateway::Application::build(settings).await?;
            tracing::info!(port = app.port(), "ingest gateway listening");
            app.run_until_stopped(shutdown).await
        }
        Command::Admin { .. } => {
            let shutdown = shutdown_signal();
            let app = auditline_admin_api::Application::build(settings).await?;
            tracing::info!(port = app.port(), "admin service listening");
            app.run_until_stopped(shutdown).await
        }
        Command::All { .. } => run_all(settings).await,
        Command::DemoApp(args) => {
            let shutdown = shutdown_signal();
            crate::demo::run(&settings, args, shutdown).await
        }
        Command::Token { action } => token(&settings, action).await,
        Command::Loadgen(args) => loadgen::run(&settings, args).await,
        Command::Verify {
            from,
            to,
            json,
            checkpoint,
        } => verify(&settings, (from, to), checkpoint.as_deref(), json).await,
        Command::Checkpoint => {
            let (storage, keys) = integrity(&settings)?;
            let pool = db::pool(&settings.database_url, 2)?;
            let (file, cp) = auditline_integrity::checkpointer::publish(
                &pool,
                &storage,
                &settings.integrity.checkpoint_destination,
                &keys,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{file}: {} chains, {}",
                cp.chains.len(),
                if cp.signature.is_some() {
                    "signed"
                } else {
                    "unsigned (no integrity.signing_key)"
                }
            );
            Ok(())
        }
        Command::Partitions { action } => partitions(&settings, action).await,
        Command::Keygen => {
            let (private, public) = checkpoint::Keys::generate()?;
            let (writer, writer_public) = checkpoint::Keys::generate()?;
            println!(
                "# [integrity]: the checkpoint key (admin service, `checkpoint`, `partitions`)\n\
                 signing_key = \"{private}\"\nverify_key = \"{public}\"\n\
                 # the writers' seal key (writer only) and what verify accepts\n\
                 writer_key = \"{writer}\"\nwriter_verify_keys = [\"{writer_public}\"]"
            );
            Ok(())
        }
    }
}

/// The storage checkpoints live in, and the installation's keys.
fn integrity(settings: &Settings) -> anyhow::Result<(Storage, checkpoint::Keys)> {
    auditline_integrity::storage::install_tls_provider();
    let storage = Storage::new(PathBuf::from(&settings.export_dir), &settings.exports)?;
    storage
        .check(&settings.integrity.checkpoint_destination)
        .map_err(|e| anyhow::anyhow!("integrity.checkpoint_destination: {e}"))?;
    Ok((
        storage,
        checkpoint::Keys::from_settings(&settings.integrity)?,
    ))
}

async fn partitions(settings: &Settings, action: PartitionAction) -> anyhow::Result<()> {
    use auditline_integrity::retention;
    let (storage, keys) = integrity(settings)?;
    let destination = &settings.partitions.archive_destination;
    storage
        .check(destination)
        .map_err(|e| anyhow::anyhow!("partitions.archive_destination: {e}"))?;
    let pool = db::pool(&settings.database_url, 2)?;
    match action {
        PartitionAction::List => {
            let (partitions, drops) = retention::list(&pool).await?;
            println!("{:<16} {:>12} {:>12}", "partition", "rows (est.)", "bytes");
            for p in partitions {
                let rows = p
                    .rows_estimate
                    .map_or_else(|| "not analyzed".to_owned(), |n| n.to_string());
                println!("{:<16} {:>12} {:>12}", p.table, rows, p.bytes);
            }
            for d in drops {
                println!(
                    "dropped {} at {}: {} rows archived in {} (sha256 {}){}",
                    d.day,
                    d.dropped_at,
                    d.rows,
                    d.archive,
                    d.archive_sha256,
                    if d.signature.is_some() {
                        ", signed"
                    } else {
                        ", unsigned"
                    }
                );
            }
        }
        PartitionAction::Archive { day } => {
            let a = retention::archive(&pool, &storage, destination, &keys, day).await?;
            println!(
                "{day}: {} rows archived in {} (sha256 {}), manifest {}; verified",
                a.rows, a.file, a.sha256, a.manifest
            );
        }
        PartitionAction::Drop { day, expired } => {
            let days = match (day, expired) {
                (Some(day), _) => vec![day],
                (None, _) => {
                    let Some(keep) = settings.partitions.retention_days else {
                        anyhow::bail!("--expired needs partitions.retention_days");
                    };
                    retention::expired(&pool, keep).await?
                }
            };
            for day in days {
                let d = retention::drop_day(&pool, &storage, destination, &keys, day).await?;
                println!(
                    "{day}: {} rows archived in {} and verified; partition dropped",
                    d.rows, d.archive
                );
            }
        }
    }
    Ok(())
}

type TimeRange = (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

async fn verify(
    settings: &Settings,
    range: TimeRange,
    start: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (storage, keys) = integrity(settings)?;
    let pool = db::pool(&settings.database_url, 2)?;
    let report = auditline_integrity::verify::verify(
        &pool,
        &storage,
        &settings.integrity.checkpoint_destination,
        &keys,
        range,
        start,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", auditline_integrity::verify::render(&report));
    }
    if report.ok {
        Ok(())
    } else {
        Err(Findings(report.total()).into())
    }
}

/// Every service in one process, sharing one metrics registry; one signal
/// stops them all.
async fn run_all(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let registry = prometheus::Registry::new();
    let writer =
        auditline_writer::Application::build_with_registry(settings.clone(), registry.clone())
            .await?;
    let ingest = auditline_ingest::gateway::Application::build_with_registry(
        settings.clone(),
        registry.clone(),
    )
    .await?;
    let admin = auditline_admin_api::Application::build_with_registry(settings, registry).await?;
    tracing::info!(
        writer_port = writer.port(),
        ingest_port = ingest.port(),
        admin_port = admin.port(),
        "auditline all: services listening"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
        Ok(())
    };
    tokio::try_join!(
        signal,
        writer.run_until_stopped(wait(stopped.clone())),
        ingest.run_until_stopped(wait(stopped.clone())),
        admin.run_until_stopped(wait(stopped)),
    )?;
    Ok(())
}

/// `auditline token …`
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token; its secret is printed once, on standard output.
    Create {
        /// A name saying who or what uses the token.
        #[arg(long)]
        name: String,
        /// Scopes: publish, read, export, admin (repeat or separate with commas).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<Scope>,
        /// The service a publish token speaks for (stamped on its events).
        #[arg(long)]
        service: Option<String>,
        /// Lifetime, e.g. 90d, 12h, 30m (default: no expiry).
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<chrono::Duration>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id (the part after `alt_`).
    Revoke { token_id: String },
}

fn parse_lifetime(text: &str) -> Result<chrono::Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d)"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => Err(format!("{text:?}: the unit must be s, m, h or d")),
    }
}

async fn token(settings: &Settings, action: TokenAction) -> anyhow::Result<()> {
    let pool = db::pool(&settings.database_url, 1)?;
    match action {
        TokenAction::Create {
            name,
            scopes,
            service,
            expires_in,
        } => {
            let (info, secret) = auth::create(
                &pool,
                auth::NewToken {
                    name,
                    scopes,
                    service,
                    expires_at: expires_in.map(|d| chrono::Utc::now() + d),
                },
            )
            .await?;
            eprintln!(
                "token {} ({}) created with scopes {}; copy the secret now, it is not shown again:",
                info.token_id,
                info.name,
                info.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            println!("{secret}");
        }
        TokenAction::List => {
            println!(
                "{:<14} {:<24} {:<28} {:<16} {:<22} STATE",
                "ID", "NAME", "SCOPES", "SERVICE", "EXPIRES"
            );
            let now = chrono::Utc::now();
            for t in auth::list(&pool).await? {
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(at), _) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    (None, Some(at)) if at <= now => "expired".to_owned(),
                    _ => "active".to_owned(),
                };
                println!(
                    "{:<14} {:<24} {:<28} {:<16} {:<22} {state}",
                    t.token_id,
                    t.name,
                    t.scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    t.service.as_deref().unwrap_or("-"),
                    t.expires_at
                        .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_else(|| "never".into()),
                );
            }
        }
        TokenAction::Revoke { token_id } => {
            if auth::revoke(&pool, &token_id).await? {
                println!("token {token_id} revoked");
            } else {
                anyhow::bail!("no active token with id {token_id}");
            }
        }
    }
    Ok(())
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
