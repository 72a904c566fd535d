//! API tokens, shared by the ingest gateway and the admin service.
//!
//! A token reads `alt_<token_id>_<secret>`. Only the SHA-256 of the secret is
//! stored; the id (not secret) finds the row and the hashes are compared in
//! constant time. Tokens carry scopes (`publish`, `read`, `export`, `admin`),
//! the `service` a publish token speaks for, and an optional expiry; revoking
//! keeps the row, so `auditline token list` shows the history.
//!
//! [`Caller`] is the actix-web extractor: 401 for a missing, malformed,
//! unknown, expired or revoked token, and [`Caller::require`] gives 403 for a
//! missing scope, both with the JSON error body.

use crate::error::ErrorBody;
use actix_web::{
    FromRequest, HttpRequest, HttpResponse, ResponseError, dev::Payload, http::StatusCode, web,
};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::{fmt, future::Future, pin::Pin, str::FromStr};
use subtle::ConstantTimeEq;

const PREFIX: &str = "alt_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Publish,
    Read,
    Export,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Publish, Scope::Read, Scope::Export, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Export => "export",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}: expected publish, read, export or admin"))
    }
}

/// A stored token, without its secret.
#[derive(Clone, serde::Serialize)]
pub struct TokenInfo {
    pub token_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub service: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for TokenInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenInfo")
            .field("token_id", &self.token_id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    token_id: String,
    secret_hash: Vec<u8>,
    name: String,
    scopes: Vec<String>,
    service: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    fn info(self) -> TokenInfo {
        TokenInfo {
            token_id: self.token_id,
            name: self.name,
            scopes: self.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            service: self.service,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        }
    }
}

const COLUMNS: &str =
    "token_id, secret_hash, name, scopes, service, created_at, expires_at, revoked_at";

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// The bytes of a hexadecimal string (either case); `None` when it is not one.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    ::hex::decode(text).ok()
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// What `token create` asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub service: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates a token; returns it with the secret, which is never shown again.
pub async fn create(pool: &PgPool, new: NewToken) -> anyhow::Result<(TokenInfo, String)> {
    if new.name.trim().is_empty() || new.name.len() > 255 {
        anyhow::bail!("a token needs a name of 1-255 characters");
    }
    if new.scopes.is_empty() {
        anyhow::bail!("a token needs at least one scope");
    }
    if new.scopes.contains(&Scope::Publish) {
        let Some(service) = new.service.as_deref() else {
            anyhow::bail!("a publish token needs --service: the service whose events it publishes");
        };
        crate::event::check_service(service)
            .map_err(|e| anyhow::anyhow!("service {service:?} {e}"))?;
    }
    let mut random = [0u8; 6 + 32];
    rand::rng().fill_bytes(&mut random);
    let token_id = hex(&random[..6]);
    let secret = hex(&random[6..]);
    let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
    let row: TokenRow = sqlx::query_as(
        "INSERT INTO auditline.tokens (token_id, secret_hash, name, scopes, service, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING token_id, secret_hash, name, scopes, service, created_at, expires_at, revoked_at",
    )
    .bind(&token_id)
    .bind(digest(&secret))
    .bind(new.name.trim())
    .bind(&scopes)
    .bind(&new.service)
    .bind(new.expires_at)
    .fetch_one(pool)
    .await?;
    Ok((row.info(), format!("{PREFIX}{token_id}_{secret}")))
}

/// Every token, newest first.
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<TokenInfo>> {
    let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM auditline.tokens ORDER BY created_at DESC"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(TokenRow::info).collect())
}

/// Revokes a token by id. Returns false if there is no such active token.
pub async fn revoke(pool: &PgPool, token_id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE auditline.tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed token: expected `alt_<id>_<secret>`")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("token revoked at {0}")]
    Revoked(DateTime<Utc>),
    #[error("this token lacks the `{0}` scope")]
    Forbidden(Scope),
    #[error("cannot check the token right now")]
    Unavailable(#[source] sqlx::Error),
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "unavailable",
            _ => "unauthorized",
        };
        let mut response = ErrorBody::new(code, self.to_string()).response(self.status_code());
        if self.status_code() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Checks a presented token.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<TokenInfo, AuthError> {
    let rest = presented.strip_prefix(PREFIX).ok_or(AuthError::Malformed)?;
    let (token_id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    if token_id.len() != 12 || secret.is_empty() || secret.len() > 128 {
        return Err(AuthError::Malformed);
    }
    let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM auditline.tokens WHERE token_id = $1"
    )))
    .bind(token_id)
    .fetch_optional(pool)
    .await
    .map_err(AuthError::Unavailable)?;
    // Hash even when the id is unknown, so both paths cost the same.
    let presented_hash = digest(secret);
    let Some(row) = row else {
        return Err(AuthError::Unknown);
    };
    if !bool::from(row.secret_hash.ct_eq(&presented_hash)) {
        return Err(AuthError::Unknown);
    }
    if let Some(at) = row.revoked_at {
        return Err(AuthError::Revoked(at));
    }
    if let Some(at) = row.expires_at
        && at <= Utc::now()
    {
        return Err(AuthError::Expired(at));
    }
    Ok(row.info())
}

/// The pool tokens are checked against, as actix-web app data.
#[derive(Debug, Clone)]
pub struct TokenStore(pub PgPool);

/// An authenticated caller (extractor).
#[derive(Debug, Clone)]
pub struct Caller(pub TokenInfo);

impl Caller {
    /// 403 unless the token has `scope`.
    pub fn require(&self, scope: Scope) -> Result<&TokenInfo, AuthError> {
        if self.0.scopes.contains(&scope) {
            Ok(&self.0)
        } else {
            Err(AuthError::Forbidden(scope))
        }
    }
}

impl FromRequest for Caller {
    type Error = AuthError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let store = req.app_data::<web::Data<TokenStore>>().cloned();
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            let header = header.ok_or(AuthError::Missing)?;
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .ok_or(AuthError::Missing)?
                .trim();
            let store = store.ok_or(AuthError::Unknown)?;
            authenticate(&store.0, token).await.map(Caller)
        })
    }
}
