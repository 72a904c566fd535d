//! `auditline loadgen`: publishes realistic events through the confirmed
//! [`Publisher`], waits until every one is committed, and prints throughput and
//! publish→committed latency.
//!
//! With `--bare` it measures the reference the writer is judged against: the
//! same events published the same way to a separate namespace, consumed by a
//! bare loop (two consumers, each its own AMQP and PostgreSQL connection, text
//! COPY straight into `auditline.events`, ack `multiple` after commit) with no
//! actors, no staging table, no dedup and no batch records.

use anyhow::{Context, bail};
use auditline_client::Publisher;
use auditline_shared::{
    AuditEvent, Settings,
    amqp::{self, Topology},
    db,
    event::parse_ndjson,
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use rand::{Rng, seq::IndexedRandom};
use serde_json::json;
use sqlx::{Connection, PgPool};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use uuid::Uuid;

/// Options of `auditline loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Events to publish.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per AMQP message: 1 publishes one JSON event per message, more
    /// publishes NDJSON batch messages.
    #[arg(long, default_value_t = 100)]
    pub per_message: usize,
    /// Concurrent publishing tasks.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Distinct users in the generated events.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Give up waiting when no new event was committed for this long.
    #[arg(long, default_value_t = 60)]
    pub stall_secs: u64,
    /// Spread `occurred_at` evenly, in order, over this many days before now
    /// (0: now), e.g. to load a month of history for the admin benchmarks.
    #[arg(long, default_value_t = 0)]
    pub spread_days: u32,
    /// Measure the bare publish → consume → COPY reference loop instead of the writer.
    #[arg(long)]
    pub bare: bool,
    /// Bare loop: events per COPY.
    #[arg(long, default_value_t = 5_000)]
    pub bare_flush: usize,
    /// Bare loop: consumers.
    #[arg(long, default_value_t = 2)]
    pub bare_consumers: usize,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub events: usize,
    pub publish_secs: f64,
    pub total_secs: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// An HTTP method, a route template and the path prefix it is called with.
type Route = (&'static str, &'static str, &'static str);

const ACTIONS: [(&str, &[Route]); 6] = [
    (
        "file",
        &[
            ("GET", "/files/{id}", "/files/"),
            ("PUT", "/files/{id}", "/files/"),
            ("DELETE", "/files/{id}", "/files/"),
        ],
    ),
    (
        "code_exec",
        &[("POST", "/notebooks/{id}/run", "/notebooks/")],
    ),
    (
        "admin",
        &[("POST", "/admin/users/{id}/roles", "/admin/users/")],
    ),
    (
        "auth",
        &[("POST", "/login", "/login"), ("POST", "/logout", "/logout")],
    ),
    (
        "data",
        &[
            ("GET", "/datasets/{id}/rows", "/datasets/"),
            ("POST", "/datasets/{id}/query", "/datasets/"),
        ],
    ),
    (
        "other",
        &[
            ("GET", "/health/deep", "/health/deep"),
            ("GET", "/settings", "/settings"),
        ],
    ),
];

/// A realistic event of `service` happening now.
pub fn generate(rng: &mut impl Rng, service: &str, users: usize) -> AuditEvent {
    let (action, routes) = ACTIONS[rng.random_range(0..ACTIONS.len())];
    let &(method, route, prefix) = routes.choose(rng).unwrap_or(&routes[0]);
    let user = rng.random_range(0..users.max(1));
    let id = rng.random_range(1..100_000);
    let endpoint = if route.contains("{id}") {
        route.replace("{id}", &id.to_string())
    } else {
        prefix.to_owned()
    };
    let roll: f64 = rng.random();
    let status: u16 = if roll < 0.85 {
        *[200u16, 200, 201, 204].choose(rng).unwrap_or(&200)
    } else if roll < 0.95 {
        *[400u16, 401, 403, 404, 409].choose(rng).unwrap_or(&400)
    } else {
        *[500u16, 502, 503].choose(rng).unwrap_or(&500)
    };
    let millis = (rng.random::<f64>().powi(3) * 800.0 + 2.0).round();
    AuditEvent {
        event_id: Uuid::now_v7(),
        occurred_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        service: service.to_owned(),
        session_id: format!("sess-{user}-{}", rng.random_range(0..4)),
        user_id: (action != "auth" || rng.random_bool(0.5)).then(|| format!("user-{user:05}")),
        client_ip: Some(std::net::IpAddr::from([10, rng.random(), rng.random(), rng.random()])),
        action_type: action.to_owned(),
        endpoint,
        route: Some(route.to_owned()),
        http_method: method.to_owned(),
        request_size: Some(rng.random_range(0..4096)),
        response_size: Some(rng.random_range(0..65_536)),
        response_time_ms: Some(millis),
        status_code: Some(status),
        success: status < 400,
        resource_usage: (action == "code_exec").then(|| {
            json!({"cpu_ms": rng.random_range(1..5000), "memory_bytes": rng.random_range(1_000_000..500_000_000_u64)})
                .as_object()
                .cloned()
                .unwrap_or_default()
        }),
        metadata: Some(
            json!({"request_id": Uuid::new_v4().simple().to_string(), "user_agent": "loadgen/1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    }
}

/// Runs `auditline loadgen` and prints its report.
pub async fn run(settings: &Settings, args: LoadgenArgs) -> anyhow::Result<()> {
    let report = measure(settings, &args).await?;
    let mode = if args.per_message <= 1 {
        "single-event messages".to_owned()
    } else {
        format!("{}-event NDJSON messages", args.per_message)
    };
    let subject = if args.bare { "bare loop" } else { "writer" };
    println!(
        "loadgen {subject}: {} events in {mode}, concurrency {}: {:.0} events/s committed ({:.2} s), publish alone {:.0} events/s",
        report.events,
        args.concurrency,
        report.events as f64 / report.total_secs,
        report.total_secs,
        report.events as f64 / report.publish_secs,
    );
    if let (Some(p50), Some(p99)) = (report.latency_p50_ms, report.latency_p99_ms) {
        println!("publish→committed latency: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    Ok(())
}

/// Publishes `args.events` events and waits until all are committed.
pub async fn measure(settings: &Settings, args: &LoadgenArgs) -> anyhow::Result<Report> {
    if args.events == 0 || args.per_message == 0 || args.concurrency == 0 {
        bail!("--events, --per-message and --concurrency must be > 0");
    }
    let mut settings = settings.clone();
    settings.publisher.events_per_message = args.per_message;
    let run_id = Uuid::new_v4().simple().to_string();
    let service = format!("loadgen-{}", &run_id[..12]);
    let pool = db::pool(&settings.database_url, 2)?;

    let bare = if args.bare {
        settings.namespace = format!("{}-bare-{}", settings.namespace, &run_id[..8]);
        Some(BareLoop::start(&settings, args, &pool).await?)
    } else {
        None
    };

    let publisher = Publisher::connect(&settings.client(), "auditline-loadgen").await?;
    let started_at = Utc::now();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let chunk = (args.per_message * 10).max(1_000);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (publisher, next, service) = (publisher.clone(), next.clone(), service.clone());
        let (total, users, single) = (args.events, args.users, args.per_message <= 1);
        let spread_secs = i64::from(args.spread_days) * 86_400;
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(chunk, Ordering::Relaxed);
                if from >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let n = chunk.min(total - from);
                let events: Vec<AuditEvent> = {
                    let mut rng = rand::rng();
                    (0..n)
                        .map(|k| {
                            let mut event = generate(&mut rng, &service, users);
                            if spread_secs > 0 {
                                // In time order, as history would have
                                // arrived: event i of n lies (n - i)/n of
                                // the span back.
                                let back = spread_secs as f64
                                    * 1e6
                                    * (1.0 - (from + k) as f64 / total as f64);
                                event.occurred_at -= chrono::Duration::microseconds(back as i64);
                            }
                            event
                        })
                        .collect()
                };
                if single {
                    publisher.publish_each(&events).await?;
                } else {
                    publisher.publish_batch(&events).await?;
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("publishing task panicked")??;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let progress = match &bare {
        Some(bare) => Progress::Counter(bare.committed.clone()),
        None => Progress::Batches,
    };
    let stall = Duration::from_secs(args.stall_secs);
    let oldest = started_at - chrono::Duration::days(i64::from(args.spread_days));
    wait_committed(
        &pool,
        &progress,
        &service,
        started_at,
        oldest,
        args.events,
        stall,
    )
    .await?;
    let total_secs = started.elapsed().as_secs_f64();
    // Publish-to-commit latency means nothing for back-dated events.
    let (p50, p99) = if bare.is_some() || args.spread_days > 0 {
        (None, None)
    } else {
        latency(&pool, &service, started_at).await?
    };
    if let Some(bare) = bare {
        bare.stop(&settings).await;
    }
    Ok(Report {
        events: args.events,
        publish_secs,
        total_secs,
        latency_p50_ms: p50,
        latency_p99_ms: p99,
    })
}

/// Events of this run in storage (exact, but a scan: used once at the end).
async fn stored(pool: &PgPool, service: &str, since: DateTime<Utc>) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM auditline.events WHERE occurred_at >= $1 AND service = $2",
    )
    .bind(since - chrono::Duration::seconds(1))
    .bind(service)
    .fetch_one(pool)
    .await?)
}

/// How the run learns its progress cheaply while it waits: the writer's batch
/// records, or the bare loop's own counter. Neither scans the events table, so
/// polling does not compete with the writes being measured.
enum Progress {
    Batches,
    Counter(Arc<AtomicUsize>),
}

impl Progress {
    async fn committed(&self, pool: &PgPool, since: DateTime<Utc>) -> anyhow::Result<i64> {
        Ok(match self {
            Self::Batches => {
                sqlx::query_scalar(
                    "SELECT coalesce(sum(inserted_count), 0)::bigint FROM auditline.batches WHERE committed_at >= $1",
                )
                .bind(since)
                .fetch_one(pool)
                .await?
            }
            Self::Counter(n) => n.load(Ordering::Relaxed) as i64,
        })
    }
}

async fn wait_committed(
    pool: &PgPool,
    progress: &Progress,
    service: &str,
    since: DateTime<Utc>,
    oldest: DateTime<Utc>,
    want: usize,
    stall: Duration,
) -> anyhow::Result<()> {
    let mut last = -1;
    let mut last_change = Instant::now();
    loop {
        let n = progress.committed(pool, since).await?;
        // The batch records may include other publishers' events: confirm with
        // an exact count before declaring the run complete.
        if n >= want as i64 && stored(pool, service, oldest).await? >= want as i64 {
            return Ok(());
        }
        if n != last {
            last = n;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            bail!(
                "only {n} of {want} events committed and nothing new for {stall:?}: is a writer running on this namespace?"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// p50 and p99 of commit time minus `occurred_at` (set when the event was made,
/// just before publishing), in milliseconds.
async fn latency(
    pool: &PgPool,
    service: &str,
    since: DateTime<Utc>,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let row: (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) \
         FROM (SELECT extract(epoch FROM b.committed_at - e.occurred_at)::float8 * 1000 AS ms \
               FROM auditline.events e JOIN auditline.batches b USING (batch_id) \
               WHERE e.occurred_at >= $1 AND e.service = $2) AS l",
    )
    .bind(since - chrono::Duration::seconds(1))
    .bind(service)
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// The reference loop (see the module doc).
struct BareLoop {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    committed: Arc<AtomicUsize>,
}

impl BareLoop {
    async fn start(
        settings: &Settings,
        args: &LoadgenArgs,
        _pool: &PgPool,
    ) -> anyhow::Result<Self> {
        let topology = Topology::new(&settings.namespace);
        let setup = amqp::connect(&settings.amqp_url, "auditline-bare-setup").await?;
        topology.declare(&setup.create_channel().await?).await?;
        let prefetch =
            u16::try_from((2 * args.bare_flush / args.per_message.max(1)).clamp(1, 65_535))
                .unwrap_or(u16::MAX);
        let mut tasks = Vec::new();
        let committed = Arc::new(AtomicUsize::new(0));
        for i in 0..args.bare_consumers {
            let committed = committed.clone();
            let (settings, queue, flush) = (
                settings.clone(),
                topology.writer_queue.clone(),
                args.bare_flush,
            );
            tasks.push(tokio::spawn(async move {
                let connection =
                    amqp::connect(&settings.amqp_url, &format!("auditline-bare-{i}")).await?;
                let channel = connection.create_channel().await?;
                channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await?;
                let mut consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        format!("bare-{i}").as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let mut db = db::connect(&settings.database_url).await?;
                let batch_id = Uuid::now_v7();
                let mut buffer = String::new();
                let mut pending = 0usize;
                let mut last_tag = 0u64;
                loop {
                    let next =
                        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
                    let flush_now = match next {
                        Ok(Some(delivery)) => {
                            let delivery = delivery?;
                            last_tag = delivery.delivery_tag;
                            let now = Utc::now();
                            let encoding = delivery.properties.content_encoding().as_ref();
                            let data =
                                amqp::decode_body(&delivery.data, encoding.map(|e| e.as_str()))
                                    .map_err(|e| anyhow::anyhow!(e))?
                                    .unwrap_or(delivery.data);
                            let lines = if data.first() == Some(&b'{') && !data.contains(&b'\n') {
                                vec![AuditEvent::parse_at(&data, now)]
                            } else {
                                parse_ndjson(&data, now)
                                    .into_iter()
                                    .map(|l| l.result)
                                    .collect()
                            };
                            for event in lines.into_iter().flatten() {
                                auditline_writer::copy_row::encode(
                                    &mut buffer,
                                    &event,
                                    now,
                                    batch_id,
                                );
                                pending += 1;
                            }
                            pending >= flush
                        }
                        Ok(None) => return Ok(()),
                        Err(_) => pending > 0,
                    };
                    if flush_now {
                        let mut tx = db.begin().await?;
                        let mut copy = tx
                            .copy_in_raw(&format!(
                                "COPY auditline.events ({}) FROM STDIN",
                                auditline_writer::copy_row::COLUMNS
                            ))
                            .await?;
                        copy.send(buffer.as_bytes()).await?;
                        copy.finish().await?;
                        tx.commit().await?;
                        committed.fetch_add(pending, Ordering::Relaxed);
                        channel
                            .basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await?;
                        buffer.clear();
                        pending = 0;
                    }
                }
            }));
        }
        Ok(Self { tasks, committed })
    }

    async fn stop(self, settings: &Settings) {
        for task in &self.tasks {
            task.abort();
        }
        // Remove the benchmark's own exchanges and queues.
        if let Ok(connection) = amqp::connect(&settings.amqp_url, "auditline-bare-cleanup").await
            && let Ok(channel) = connection.create_channel().await
        {
            Topology::new(&settings.namespace).delete(&channel).await;
        }
    }
}
