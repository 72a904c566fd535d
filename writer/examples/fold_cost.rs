//! What the free-text index adds to the rollup keeper's fold, side by side on
//! the same stored rows, in a read-only transaction (nothing is changed):
//!
//! - rollups only: read the rollup columns, fold them (the keeper before the index);
//! - with the index: read `lower(endpoint)`, `lower(metadata::text)` as well,
//!   sort by time and build the Bloom blocks.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1/auditline_bench_admin BATCHES=40 \
//!  cargo run --release -p auditline-writer --example fold_cost`
use auditline_writer::fold::{self as rollup, RollupBatch, RollupRow};
use futures_util::TryStreamExt;
use sqlx::{Connection, PgConnection};
use std::time::Instant;
use uuid::Uuid;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let batches: i64 = std::env::var("BATCHES").map_or(Ok(40), |b| b.parse())?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query("SET jit = off").execute(&mut conn).await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT batch_id FROM auditline.batches WHERE inserted_count >= 1000 \
         ORDER BY committed_at DESC LIMIT $1",
    )
    .bind(batches)
    .fetch_all(&mut conn)
    .await?;
    for round in 1..=3 {
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        let started = Instant::now();
        let mut rollup = RollupBatch::default();
        let mut rows = 0u64;
        {
            let mut stream = sqlx::query_as::<_, RollupRow>(
                "SELECT occurred_at, user_id, action_type, success, response_time_ms \
                 FROM auditline.events WHERE batch_id = ANY($1)",
            )
            .bind(&ids)
            .fetch(&mut *tx);
            while let Some(row) = stream.try_next().await? {
                rollup.add(&row);
                rows += 1;
            }
        }
        let plain = started.elapsed();

        let started = Instant::now();
        let (_, texts) = rollup::read_batches(&mut tx, &ids).await?;
        let read = started.elapsed();
        let blocks = rollup::search_blocks(texts);
        let indexed = started.elapsed();
        tx.rollback().await?;
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / rows as f64;
        println!(
            "round {round}: {rows} rows, {} blocks ({} bytes of filter per row): \
             rollups only {:.2} µs/row, with the index {:.2} µs/row (reading texts {:.2}, blocks {:.2}): +{:.2} µs/row",
            blocks.len(),
            blocks.len() * 3968 / rows.max(1) as usize,
            us(plain),
            us(indexed),
            us(read),
            us(indexed - read),
            us(indexed) - us(plain),
        );
    }
    Ok(())
}
