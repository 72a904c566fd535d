//! `GET /admin/audit/export`: a streamed export (see [`crate::query::export`]).
//!
//! A streamed export holds a pooled connection and a snapshot while it
//! runs, so an instance serves at most `exports.max_streams` at once (then
//! 503 with `Retry-After`), a reader that takes nothing for
//! `exports.stream_send_timeout_secs` is cut (the transfer ends unfinished,
//! the snapshot is rolled back, the connection returns to the pool), and
//! PostgreSQL itself ends the snapshot's session should it sit idle much
//! longer than that (`idle_in_transaction_session_timeout`).

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{ContentDisposition, DispositionParam, DispositionType},
    web::{self, Bytes},
};
use auditline_shared::db;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::ApiError,
    extract::Exporter,
    query::{export::*, params::Params},
    state::State,
};

/// Export the events matching a search, streamed.
#[utoipa::path(
    get,
    path = "/admin/audit/export",
    tag = "export",
    params(crate::query::filters::Filters, ExportParams),
    responses(
        (status = 200, description = "The export file, streamed",
            content(
                (String = "text/csv"),
                (Vec<auditline_shared::stored::StoredEvent> = "application/json"),
                (String = "application/x-ndjson"),
                (String = "application/zstd"),
            )),
        crate::error::ReadErrors,
        (status = 503, description = "This instance streams `exports.max_streams` exports already (or the database is unavailable); retry after `Retry-After` seconds", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn export(
    req: HttpRequest,
    _exporter: Exporter,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse_from(req.query_string(), EXPORT_PARAMS)?;
    let export = Export::parse(&params)?;
    let permit = state
        .export_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Refused {
            status: actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "too_many_exports",
            message: format!(
                "this instance streams {} exports already (exports.max_streams); retry \
                 later, or start an export job (POST /admin/audit/exports)",
                state.exports.max_streams
            ),
        })?;
    let send_timeout = Duration::from_secs(state.exports.stream_send_timeout_secs.max(1));
    // The snapshot is opened before answering: a database that cannot be
    // reached is a clean 503, not a 200 cut short.
    let mut snapshot = db::snapshot(&state.pool).await?;
    // The backstop if anything but a stalled reader (which is cut after
    // `send_timeout`) kept the snapshot open and idle.
    sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
        .bind(format!(
            "{}s",
            send_timeout.as_secs() + IDLE_SNAPSHOT_MARGIN_SECS
        ))
        .execute(&mut *snapshot)
        .await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (failed_tx, failed) = oneshot::channel::<String>();
    let (content_type, file_name) = (export.content_type(), export.file_name());
    let (format, compression) = (export.format, export.compression);
    let reader = ReadAhead::start(export, snapshot);
    actix_web::rt::spawn(async move {
        let outcome = stream_rows(format, compression, reader, &tx, send_timeout).await;
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "export stream ended early");
            // The response ends with an error once what is queued was sent:
            // the client sees a cut transfer, never a short file that looks
            // whole. (Not through the queue: a stalled reader keeps it full.)
            let _ = failed_tx.send(e.to_string());
        }
        // The snapshot (the reader, dropped above) and the slot go now,
        // whatever the client does next.
        drop(permit);
    });
    let body = futures_util::stream::unfold(Some((rx, failed)), |state| async move {
        let (mut rx, failed) = state?;
        match rx.recv().await {
            Some(item) => Some((item, Some((rx, failed)))),
            None => match failed.await {
                Ok(error) => Some((Err(std::io::Error::other(error)), None)),
                Err(_) => None,
            },
        }
    });
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(file_name)],
        })
        .streaming(body))
}

/// Seconds past `exports.stream_send_timeout_secs` that a streamed export's
/// snapshot may sit idle before PostgreSQL ends its session.
const IDLE_SNAPSHOT_MARGIN_SECS: u64 = 30;

/// Why a stream stopped early.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("encoding: {0}")]
    Encoding(#[from] std::io::Error),
    #[error("the client went away")]
    Gone,
    #[error("the client took nothing for {0:?}; cut")]
    Stalled(Duration),
}

async fn stream_rows(
    format: Format,
    compression: Compression,
    mut reader: ReadAhead,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    send_timeout: Duration,
) -> Result<(), StreamError> {
    let send = |bytes: Vec<u8>| async move {
        match tokio::time::timeout(send_timeout, tx.send(Ok(Bytes::from(bytes)))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamError::Gone),
            Err(_) => Err(StreamError::Stalled(send_timeout)),
        }
    };
    let mut encoder = Encoder::new(format, compression)?;
    while let Some(chunk) = reader.next().await? {
        encoder.write_rows(&chunk)?;
        if encoder.ready() {
            send(encoder.take()).await?;
        }
    }
    let rest = encoder.finish()?;
    if !rest.is_empty() {
        send(rest).await?;
    }
    Ok(())
}

/// Registers `/admin/audit/export` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    cfg.service(get("/export", web::get().to(export)));
}
