//! The actix-web `Transform` and `Service`: the session id, the client IP,
//! the timing, and the future that records the request when it answers (or
//! is dropped).

use super::*;

impl<S, B> Transform<S, ServiceRequest> for AuditMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = AuditService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuditService {
            service,
            pending: Rc::new(Pending::new(self.clone())),
        }))
    }
}

/// The per-worker service [`AuditMiddleware`] wraps around the app.
pub struct AuditService<S> {
    service: S,
    pending: Rc<Pending>,
}

impl<S> std::fmt::Debug for AuditService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService").finish_non_exhaustive()
    }
}

/// A session id that breaks the event's rules, or is shaped like an
/// Auditline token, is replaced by a generated one.
pub(super) fn usable_session(id: &str) -> bool {
    check_session_id(id).is_ok() && !redact::holds_token(id)
}

/// Where a request's session id came from.
#[derive(Debug)]
pub(super) enum Session {
    Header(HeaderValue),
    Cookie(String),
    /// Generated (32 hex digits), and returned in the session header.
    New([u8; 32]),
}

impl Session {
    pub(super) fn as_str(&self) -> &str {
        match self {
            // Checked to be text when taken.
            Self::Header(value) => value.to_str().unwrap_or_default(),
            Self::Cookie(id) => id,
            Self::New(id) => std::str::from_utf8(id).unwrap_or_default(),
        }
    }
}

/// What is taken from a request before the app sees it (the rest is read
/// from the response, which still holds the request; an error holds none).
#[derive(Debug)]
pub(super) struct Started {
    pub(super) at: Instant,
    pub(super) session: Session,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) uri: Uri,
    pub(super) method: Method,
    pub(super) request_size: Option<u64>,
}

impl Started {
    /// What is known of the request at `ended` without its response.
    pub(super) fn observed<'a>(&'a self, pending: &Pending, ended: Instant) -> Observed<'a> {
        let config = &pending.middleware.shared.config;
        let path_and_query = self.uri.path_and_query().map_or("/", |p| p.as_str());
        Observed {
            occurred_at: pending.wall_time(self.at),
            session_id: self.session.as_str(),
            user_id: None,
            client_ip: self.client_ip,
            rule: config.rule(self.uri.path()),
            endpoint: path_and_query.strip_suffix('?').unwrap_or(path_and_query),
            route: None,
            method: &self.method,
            request_size: self.request_size,
            response_size: None,
            response_time_ms: (ended - self.at).as_secs_f64() * 1000.0,
            status: None,
            resources: None,
            metadata: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// An audited request: the app's future, then the event.
    pub struct AuditFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
        pending: Rc<Pending>,
    }

    /// A request dropped before it answered (a forced shutdown, a
    /// connection torn down) is recorded too: no status, not a success.
    impl<F> PinnedDrop for AuditFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(started) = this.started.take() {
                let observed = started.observed(this.pending, Instant::now());
                this.pending.record(&observed, false);
            }
        }
    }
}

impl<F> std::fmt::Debug for AuditFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditFuture").finish_non_exhaustive()
    }
}

impl<F, B> Future for AuditFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        let ended = Instant::now();
        let Some(started) = this.started.take() else {
            return Poll::Ready(result);
        };
        let pending = &*this.pending;
        let mut observed = started.observed(pending, ended);
        match &result {
            Ok(res) => {
                let request = res.request();
                let extensions = request.extensions();
                let route = request.match_pattern();
                observed.status = Some(res.status().as_u16());
                observed.route = route.as_deref();
                observed.user_id = extensions.get::<AuditUser>().map(|u| u.0.as_str());
                observed.resources = extensions
                    .get::<AuditResources>()
                    .map(|r| &r.0)
                    .filter(|m| !m.is_empty());
                observed.metadata = extensions
                    .get::<AuditMetadata>()
                    .map(|m| &m.0)
                    .filter(|m| !m.is_empty());
                observed.response_size = match res.response().body().size() {
                    BodySize::Sized(n) => Some(n),
                    BodySize::None => Some(0),
                    BodySize::Stream => None,
                };
                pending.record(&observed, true);
            }
            Err(e) => {
                observed.status = Some(e.as_response_error().status_code().as_u16());
                pending.record(&observed, true);
            }
        }
        // A generated session id is returned to the client in the header.
        if let (Ok(res), Session::New(id)) = (&mut result, &started.session)
            && let Ok(value) = HeaderValue::from_bytes(id)
        {
            res.headers_mut()
                .insert(pending.middleware.shared.session_header.clone(), value);
        }
        Poll::Ready(result)
    }
}

impl<S, B> Service<ServiceRequest> for AuditService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = AuditFuture<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let at = Instant::now();
        let shared = &self.pending.middleware.shared;
        let config = &shared.config;
        let session = match req
            .headers()
            .get(&shared.session_header)
            .filter(|v| v.to_str().is_ok_and(usable_session))
        {
            Some(value) => Session::Header(value.clone()),
            None => match config
                .session_cookie
                .as_deref()
                .and_then(|name| cookie(&req, name))
                .filter(|s| usable_session(s))
            {
                Some(id) => Session::Cookie(id),
                None => {
                    let mut id = [0u8; 32];
                    Uuid::new_v4().simple().encode_lower(&mut id);
                    Session::New(id)
                }
            },
        };
        let started = Started {
            at,
            session,
            client_ip: client_ip(&req, &config.trusted_proxies),
            uri: req.uri().clone(),
            method: req.method().clone(),
            request_size: req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        };
        AuditFuture {
            inner: self.service.call(req),
            started: Some(started),
            pending: self.pending.clone(),
        }
    }
}

/// The value of cookie `name` (`Cookie: a=1; b=2`).
pub(super) fn cookie(req: &ServiceRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

pub(super) fn client_ip(req: &ServiceRequest, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    // Walk X-Forwarded-For from the right: the first address that is not a
    // trusted proxy is the client as far as can be trusted.
    let forwarded: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
        .or(forwarded.first())
        .copied()
        .or(Some(peer))
}
