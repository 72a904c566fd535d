//! The writer service: its HTTP listener (`/metrics`, `/healthz`, `/readyz`)
//! and `writer.consumers` consume pipelines, each Consumer → Batcher → DbWriter
//! on its own AMQP connection and its own database connection.
//!
//! A pipeline whose broker connection fails is torn down and rebuilt with
//! backoff. Its unacked messages go back to the queue; whatever of them was
//! already committed is absorbed as duplicates. The basic.qos prefetch is set on
//! every new channel, so a reconnect never runs without it.

use crate::{
    batcher::{Batcher, Drain},
    consumer::{Consumer, Held},
    db_writer::{DbWriter, DbWriterConfig},
    metrics::WriterMetrics,
    partitions::PartitionKeeper,
    rollups::{RollupKeeper, Stop},
};
use actix::prelude::*;
use actix_web::{App, HttpResponse, HttpServer, dev::Server, web};
use anyhow::Context;
use auditline_shared::{
    Settings,
    amqp::{self, Topology},
    db,
    error::ErrorBody,
    metrics::metrics_handler,
    signing::SigningKey,
};
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use prometheus::Registry;
use std::{
    future::Future,
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{oneshot, watch};

/// A built, not yet running writer.
pub struct Application {
    port: u16,
    server: Server,
    slots: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    keeper: Addr<PartitionKeeper>,
    rollups: Addr<RollupKeeper>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Shared {
    settings: Settings,
    topology: Topology,
    metrics: WriterMetrics,
    keeper: Addr<PartitionKeeper>,
    writer_id: String,
    /// Signs every seal (see `auditline_shared::seal`); `None`: unsigned.
    seal_key: Option<Arc<SigningKey>>,
}

impl Application {
    /// Checks the database (partitions ahead exist or are created), declares the
    /// broker topology, binds the listener and starts consuming. Must run inside
    /// an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_registry(settings, Registry::new()).await
    }

    /// [`Application::build`] with a registry shared with other services of the
    /// same process (`auditline all`).
    pub async fn build_with_registry(
        settings: Settings,
        registry: Registry,
    ) -> anyhow::Result<Self> {
        let seal_key = SigningKey::load(
            settings.integrity.writer_key.as_ref(),
            settings.integrity.writer_key_file.as_deref(),
            "integrity.writer_key",
        )?
        .map(Arc::new);
        match &seal_key {
            Some(key) => tracing::info!(
                public_key = %auditline_shared::auth::hex(&key.public()),
                "seals are signed"
            ),
            None => tracing::warn!(
                "no integrity.writer_key: seals are unsigned, so a database superuser can forge them"
            ),
        }
        let metrics = WriterMetrics::new(&registry)?;
        let pool = db::pool(&settings.database_url, 3)?;
        PartitionKeeper::ensure_runway(&pool, &settings.partitions, &metrics)
            .await
            .context("cannot prepare partitions (has `auditline migrate` been run?)")?;
        let rollups = RollupKeeper::new(pool.clone(), metrics.clone()).start();
        let keeper =
            PartitionKeeper::new(pool, settings.partitions.clone(), metrics.clone()).start();

        let topology = Topology::new(&settings.namespace);
        {
            let connection = amqp::connect(&settings.amqp_url, "auditline-writer-setup").await?;
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            let _ = connection.close(200, "topology declared".into()).await;
        }

        let listener = TcpListener::bind(&settings.writer_listen)
            .with_context(|| format!("cannot listen on {}", settings.writer_listen))?;
        let port = listener.local_addr()?.port();
        let ready = web::Data::new(ReadyState {
            metrics: metrics.clone(),
            wanted: settings.writer.consumers as i64,
        });
        let registry = web::Data::new(registry);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(registry.clone())
                .app_data(ready.clone())
                .route("/metrics", web::get().to(metrics_handler))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();

        let (stop, stop_rx) = watch::channel(false);
        let writer_id = settings.writer_id();
        let shared = Shared {
            settings,
            topology,
            metrics,
            keeper: keeper.clone(),
            writer_id,
            seal_key,
        };
        let mut slots: Vec<_> = (0..shared.settings.writer.consumers)
            .map(|slot| actix::spawn(run_slot(slot, shared.clone(), stop_rx.clone())))
            .collect();
        slots.push(actix::spawn(watch_queues(shared.clone(), stop_rx.clone())));
        Ok(Self {
            port,
            server,
            slots,
            stop,
            keeper,
            rollups,
        })
    }

    /// The port of the `/metrics` listener (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until `shutdown` resolves, then stops consuming, writes and acks
    /// what was received, and closes its connections.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::select! {
            result = server => { result.context("writer HTTP server failed")?; }
            () = shutdown => {}
        }
        tracing::info!("writer shutting down: draining pipelines");
        let _ = self.stop.send(true);
        for slot in self.slots {
            let _ = slot.await;
        }
        handle.stop(true).await;
        let _ = self.rollups.send(Stop).await;
        let _ = self.keeper.send(Stop).await;
        tracing::info!("writer stopped");
        Ok(())
    }
}

struct ReadyState {
    metrics: WriterMetrics,
    wanted: i64,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<ReadyState>) -> HttpResponse {
    let connected = state.metrics.pipelines_connected.get();
    if connected >= state.wanted {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready", "pipelines": connected}))
    } else {
        ErrorBody::new(
            "not_ready",
            format!(
                "{connected} of {} consume pipelines connected to the broker",
                state.wanted
            ),
        )
        .response(actix_web::http::StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// How long shutdown waits for a pipeline to write and ack what it holds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Batches' worth of parsed events (and of their bytes) a pipeline holds at
/// most, plus one message: one being written, one filling, and room to parse
/// ahead of them.
const HELD_BATCHES: usize = 4;

/// Keeps one pipeline running until stopped.
async fn run_slot(slot: usize, shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    while !*stop.borrow() {
        let pipeline = match Pipeline::start(slot, &shared).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(slot, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "cannot start consume pipeline");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        shared.metrics.pipelines_connected.inc();
        tracing::info!(slot, "consume pipeline running");
        let Pipeline {
            connection,
            channel,
            consumer_tag,
            batcher,
            cancelled,
            mut down,
        } = pipeline;
        tokio::select! {
            reason = &mut down => {
                shared.metrics.pipelines_connected.dec();
                cancelled.store(true, Ordering::Relaxed);
                let reason = reason.unwrap_or_else(|_| "consumer stopped".into());
                tracing::warn!(slot, %reason, "consume pipeline down; unacked messages return to the queue");
                let _ = connection.close(200, "pipeline restarting".into()).await;
            }
            _ = stop.changed() => {
                let _ = channel.basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default()).await;
                // Bounded: with the database down a drain could wait forever;
                // whatever is not acked by then is redelivered.
                if tokio::time::timeout(DRAIN_TIMEOUT, batcher.send(Drain)).await.is_err() {
                    tracing::warn!(slot, "drain timed out; unacked messages return to the queue");
                }
                cancelled.store(true, Ordering::Relaxed);
                shared.metrics.pipelines_connected.dec();
                let _ = connection.close(200, "writer shutting down".into()).await;
                tracing::info!(slot, "consume pipeline drained");
            }
        }
    }
}

struct Pipeline {
    connection: lapin::Connection,
    channel: lapin::Channel,
    consumer_tag: String,
    batcher: Addr<Batcher>,
    cancelled: Arc<AtomicBool>,
    down: oneshot::Receiver<String>,
}

impl Pipeline {
    async fn start(slot: usize, shared: &Shared) -> anyhow::Result<Self> {
        let s = &shared.settings;
        let name = format!("auditline-writer-{}-{slot}", shared.writer_id);
        let connection = amqp::connect(&s.amqp_url, &name).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(s.writer.prefetch_count, BasicQosOptions::default())
            .await
            .context("cannot set the prefetch count")?;
        let dead_channel = connection.create_channel().await?;
        dead_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let live_channel = connection.create_channel().await?;
        let consumer_tag = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let stream = channel
            .basic_consume(
                shared.topology.writer_queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume from {}", shared.topology.writer_queue))?;
        let cancelled = Arc::new(AtomicBool::new(false));
        let db_writer = DbWriter::new(DbWriterConfig {
            database_url: s.database_url.clone(),
            writer_id: shared.writer_id.clone(),
            chain: format!("{}/{slot}", shared.writer_id),
            seal_key: shared.seal_key.clone(),
            dead_exchange: shared.topology.dead_exchange.clone(),
            ack_channel: channel.clone(),
            dead_channel,
            keeper: shared.keeper.clone(),
            live: Some(crate::db_writer::Live {
                channel: live_channel,
                exchange: shared.topology.live_exchange.clone(),
            }),
            cancelled: cancelled.clone(),
            metrics: shared.metrics.clone(),
        })
        .start();
        let held = Held::new(
            HELD_BATCHES * s.writer.batch.max_events,
            HELD_BATCHES * s.writer.batch.max_bytes,
            shared.metrics.events_held.clone(),
        );
        let batcher = Batcher::new(s.writer.batch.clone(), db_writer, held.clone()).start();
        let (down_tx, down) = oneshot::channel();
        Consumer::new(
            stream,
            channel.clone(),
            batcher.clone(),
            held,
            shared.metrics.clone(),
            down_tx,
            s.partitions.max_event_age(),
        )
        .start();
        Ok(Self {
            connection,
            channel,
            consumer_tag,
            batcher,
            cancelled,
            down,
        })
    }
}

/// Keeps the queue-depth gauges current (consumer lag, dead letters), every
/// 5 s, until stopped.
async fn watch_queues(shared: Shared, mut stop: watch::Receiver<bool>) {
    let topology = &shared.topology;
    loop {
        let polled = async {
            let connection =
                amqp::connect(&shared.settings.amqp_url, "auditline-writer-queues").await?;
            let channel = connection.create_channel().await?;
            loop {
                for (queue, gauge) in [
                    (&topology.writer_queue, &shared.metrics.queue_messages),
                    (&topology.dead_queue, &shared.metrics.dead_queue_messages),
                ] {
                    let declared = channel
                        .queue_declare(
                            queue.as_str().into(),
                            lapin::options::QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    gauge.set(i64::from(declared.message_count()));
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            result = polled => {
                if let Err(e) = result {
                    tracing::debug!(error = %format!("{e:#}"), "cannot read queue depths; retrying");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}
