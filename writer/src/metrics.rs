//! The writer's Prometheus metrics: per batch, never per event.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and histograms of the consume → batch → write → ack path.
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    pub messages_received: IntCounter,
    pub events_received: IntCounter,
    pub rows_written: IntCounter,
    pub duplicates: IntCounter,
    pub dead_lettered: IntCounter,
    pub batches: IntCounter,
    pub dedup_batches: IntCounter,
    pub batch_events: Histogram,
    pub flush_seconds: Histogram,
    pub retries: IntCounterVec,
    pub ack_failures: IntCounter,
    pub live_events: IntCounter,
    pub live_failures: IntCounter,
    pub pipelines_connected: IntGauge,
    pub events_held: IntGauge,
    pub partitions_ahead: IntGauge,
    pub partitions_created: IntCounter,
    pub rollup_batches: IntCounter,
    pub rollup_events: IntCounter,
    pub rollup_pending: IntGauge,
    pub queue_messages: IntGauge,
    pub dead_queue_messages: IntGauge,
    /// What the audited users did (see [`crate::audit_metrics`]).
    pub audit: std::sync::Arc<std::sync::Mutex<crate::audit_metrics::AuditMetrics>>,
}

impl WriterMetrics {
    /// Creates and registers every metric (an error only if one is
    /// registered twice in `registry`).
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| add(registry, IntCounter::new(name, help)?);
        let gauge = |name: &str, help: &str| add(registry, IntGauge::new(name, help)?);
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            add(
                registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?,
            )
        };
        Ok(Self {
            messages_received: counter(
                "auditline_writer_messages_received_total",
                "AMQP messages received by the writer.",
            )?,
            events_received: counter(
                "auditline_writer_events_received_total",
                "Valid events received by the writer.",
            )?,
            rows_written: counter(
                "auditline_writer_rows_written_total",
                "Events newly stored (duplicates excluded).",
            )?,
            duplicates: counter(
                "auditline_writer_duplicates_total",
                "Events already stored and absorbed (redeliveries, republishes).",
            )?,
            dead_lettered: counter(
                "auditline_writer_dead_lettered_total",
                "Messages or NDJSON lines sent to <ns>.dead.",
            )?,
            batches: counter("auditline_writer_batches_total", "Batches committed.")?,
            dedup_batches: counter(
                "auditline_writer_dedup_batches_total",
                "Batches written through the dedup path (redelivered messages, or a COPY that met a stored event).",
            )?,
            batch_events: histogram(
                "auditline_writer_batch_events",
                "Events per committed batch.",
                vec![
                    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0,
                ],
            )?,
            flush_seconds: histogram(
                "auditline_writer_flush_duration_seconds",
                "Time to write, commit and ack one batch.",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )?,
            retries: add(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "auditline_writer_retries_total",
                        "Transient failures retried, by stage.",
                    ),
                    &["stage"],
                )?,
            )?,
            ack_failures: counter(
                "auditline_writer_ack_failures_total",
                "Acks that failed after commit (the messages are redelivered and absorbed as duplicates).",
            )?,
            live_events: counter(
                "auditline_writer_live_events_total",
                "Committed events published to the live exchange.",
            )?,
            live_failures: counter(
                "auditline_writer_live_failures_total",
                "Commits whose live message could not be published (the stream missed them; the table has them).",
            )?,
            pipelines_connected: gauge(
                "auditline_writer_pipelines_connected",
                "Consume pipelines currently connected to the broker.",
            )?,
            events_held: gauge(
                "auditline_writer_events_held",
                "Events parsed and not yet written (each pipeline holds at most four batches' worth plus one message).",
            )?,
            partitions_ahead: gauge(
                "auditline_partitions_ahead_days",
                "Days after today covered by existing partitions (-1: today has none).",
            )?,
            partitions_created: counter(
                "auditline_partitions_created_total",
                "Daily partitions created.",
            )?,
            rollup_batches: counter(
                "auditline_rollup_batches_total",
                "Committed batches folded into the admin rollups.",
            )?,
            rollup_events: counter(
                "auditline_rollup_events_total",
                "Stored events folded into the admin rollups.",
            )?,
            rollup_pending: gauge(
                "auditline_rollup_pending_batches",
                "Committed batches not yet folded into the rollups (after the keeper's last pass).",
            )?,
            queue_messages: gauge(
                "auditline_writer_queue_messages",
                "Messages waiting in <ns>.writer (consumer lag), polled every 5 s.",
            )?,
            dead_queue_messages: gauge(
                "auditline_dead_letter_queue_messages",
                "Messages in <ns>.dead, waiting for an operator, polled every 5 s.",
            )?,
            audit: std::sync::Arc::new(std::sync::Mutex::new(
                crate::audit_metrics::AuditMetrics::new(registry)?,
            )),
        })
    }
}

/// Registers `collector` in `registry` and answers it.
fn add<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
