//! The extractors that authenticate a caller and require a scope:
//! [`Reader`], [`Exporter`], [`JobViewer`], [`Administrator`]. Each names the
//! token as the user of the request's own audit event before the scope is
//! checked, so refusals are attributed too.

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload};
use auditline_client::AuditUser;
use auditline_shared::auth::{Caller, Scope, TokenInfo};
use futures_util::future::LocalBoxFuture;

use crate::error::ApiError;

/// Authenticates the caller, names it as the user of the request's own audit
/// event (before the scope is checked, so that refusals are attributed too),
/// then requires one of `scopes` (403 naming the first when it has none);
/// answers the token.
fn authorize(
    req: &HttpRequest,
    payload: &mut Payload,
    scopes: &'static [Scope],
) -> LocalBoxFuture<'static, Result<TokenInfo, ApiError>> {
    let caller = Caller::from_request(req, payload);
    let req = req.clone();
    Box::pin(async move {
        let caller = caller.await?;
        req.extensions_mut()
            .insert(AuditUser(caller.0.name.clone()));
        if !scopes.iter().any(|scope| caller.0.scopes.contains(scope)) {
            caller.require(scopes[0])?;
        }
        Ok(caller.0)
    })
}

/// An authenticated caller with the `read` scope (extractor).
#[derive(Debug)]
pub struct Reader(pub TokenInfo);

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Read]);
        Box::pin(async move { authorized.await.map(Reader) })
    }
}

/// An authenticated caller with the `export` scope (extractor): streamed
/// exports, and new export jobs and schedules, which belong to its token.
#[derive(Debug)]
pub struct Exporter(pub TokenInfo);

impl FromRequest for Exporter {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Export]);
        Box::pin(async move { authorized.await.map(Exporter) })
    }
}

/// A caller looking at export jobs and schedules (extractor): an `export`
/// token sees its own, an `admin` token every one.
#[derive(Debug)]
pub struct JobViewer(pub TokenInfo);

impl JobViewer {
    /// Whether it sees every job and schedule, not only its own.
    pub fn sees_all(&self) -> bool {
        self.0.scopes.contains(&Scope::Admin)
    }

    /// The owner to filter on: `None` for an admin (everything).
    pub fn owner(&self) -> Option<&str> {
        (!self.sees_all()).then_some(self.0.token_id.as_str())
    }
}

impl FromRequest for JobViewer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Export, Scope::Admin]);
        Box::pin(async move { authorized.await.map(JobViewer) })
    }
}

/// An authenticated caller with the `admin` scope (extractor).
#[derive(Debug)]
pub struct Administrator(pub TokenInfo);

impl FromRequest for Administrator {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = authorize(req, payload, &[Scope::Admin]);
        Box::pin(async move { authorized.await.map(Administrator) })
    }
}
