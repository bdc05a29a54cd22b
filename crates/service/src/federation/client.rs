//! Outgoing federation requests: one `reqwest` client (connection reuse,
//! rustls with the system's roots plus `federation_trusted_ca_paths`), every
//! request a ruma endpoint type signed with `X-Matrix` for its destination.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use estuary_core::{Config, Error, Result};
use estuary_events::ServerSigningKey;
use futures::StreamExt;
use ruma::{
    ServerName,
    api::{
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::NoAuthentication,
        federation::authentication::{ServerSignatures, XMatrix, XMatrixSigningInput},
        path_builder::PathBuilder,
    },
};

use super::resolve::Resolver;
use crate::media::preview::is_blocked;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read from another server (a `send_join` of a big room
/// is the largest legitimate answer).
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;

/// Why a request to another server failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation is disabled")]
    Disabled,
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error status.
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
    /// The server answered 2xx, with a body that does not parse.
    #[error("invalid answer: {0}")]
    Invalid(String),
    #[error("cannot build the request: {0}")]
    Request(String),
}

impl FederationError {
    /// Whether the destination refused the request for good (a 4xx other
    /// than rate limiting): retrying the same request will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Status { status, .. } if (400..500).contains(status) && *status != 429)
    }
}

impl From<FederationError> for Error {
    /// A refusal the other server gave for the client's request (400, 403,
    /// 404 with a Matrix error) reaches the client as it was given; any
    /// other failure is a 502. A remote 401 is never passed on: the client
    /// would take it for its own token.
    fn from(err: FederationError) -> Self {
        if let FederationError::Status { status: status @ (400 | 403 | 404), body } = &err
            && let Ok(refusal) = serde_json::from_str::<ruma::api::error::StandardErrorBody>(body)
        {
            return Error::matrix(*status, refusal.kind, refusal.message);
        }
        Error::matrix(502, ruma::api::error::ErrorKind::Unknown, format!("Federation request failed: {err}"))
    }
}

/// Resolves host names, refusing private and reserved addresses unless the
/// configuration allows them (a remote server name must not make us probe
/// our own network).
struct VettingResolver {
    allow_private: bool,
    /// Hostname → the SRV target to connect to in its place.
    srv_targets: SrvTargets,
}

/// Which hosts are reached through an SRV record's target (see `Resolver`).
type SrvTargets = Arc<std::sync::Mutex<HashMap<String, String>>>;

impl reqwest::dns::Resolve for VettingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let target = self.srv_targets.lock().expect("SRV targets").get(name.as_str()).cloned();
        let host = target.unwrap_or_else(|| name.as_str().to_owned());
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|a| allow_private || !is_blocked(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP side of federation.
pub struct FederationClient {
    pub(super) http: reqwest::Client,
    /// For `.well-known` lookups, which go to the hostname itself, never
    /// to an SRV target.
    well_known_http: reqwest::Client,
    srv_targets: SrvTargets,
    resolver: Resolver,
    server_name: ruma::OwnedServerName,
    key: Arc<ServerSigningKey>,
    allow_private: bool,
    enabled: bool,
}

impl FederationClient {
    pub fn new(config: &Config, key: Arc<ServerSigningKey>) -> Result<Self> {
        let srv_targets = SrvTargets::default();
        Ok(Self {
            http: http_client(config, srv_targets.clone(), reqwest::redirect::Policy::none())?,
            well_known_http: http_client(config, SrvTargets::default(), well_known_redirects(config))?,
            srv_targets,
            resolver: Resolver::new(),
            server_name: config.server_name.clone(),
            key,
            allow_private: config.federation_allow_private_addresses,
            enabled: config.allow_federation,
        })
    }

    pub fn signing_key(&self) -> &ServerSigningKey {
        &self.key
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// Send a signed request to `destination` and parse its answer.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let input =
            XMatrixSigningInput::new(self.server_name.clone(), destination.to_owned(), &self.key.keypair);
        let build = |url: &str| request.try_into_http_request(url, input, ()).map_err(|e| e.to_string());
        let answer = self.execute(destination, build).await?;
        parse_answer::<R::IncomingResponse>(&answer).map_err(FederationError::Invalid)
    }

    /// Send a signed `PUT` of `body` to the path of `segments` (each
    /// percent-encoded), for a request ruma's types cannot carry (the v1
    /// invite, whose body is the whole PDU); returns the answer's body.
    pub async fn put_json(
        &self,
        destination: &ServerName,
        segments: &[&str],
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, FederationError> {
        let body = serde_json::to_vec(body).map_err(|e| FederationError::Request(e.to_string()))?;
        let build = |base_url: &str| -> Result<http::Request<Vec<u8>>, String> {
            let mut url = reqwest::Url::parse(base_url).map_err(|e| e.to_string())?;
            url.path_segments_mut().map_err(|()| "a base URL without a path".to_owned())?.extend(segments);
            let mut request = http::Request::builder()
                .method(http::Method::PUT)
                .uri(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| e.to_string())?;
            let input =
                XMatrixSigningInput::new(self.server_name.clone(), destination.to_owned(), &self.key.keypair);
            let signature = XMatrix::sign_http_request(&request, input).map_err(|e| e.to_string())?;
            request.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from(&signature));
            Ok(request)
        };
        Ok(self.execute(destination, build).await?.into_body())
    }

    /// Send a request that needs no signature (key queries).
    pub async fn send_unsigned<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = NoAuthentication>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let build = |url: &str| request.try_into_http_request(url, (), ()).map_err(|e| e.to_string());
        let answer = self.execute(destination, build).await?;
        parse_answer::<R::IncomingResponse>(&answer).map_err(FederationError::Invalid)
    }

    /// Resolve `destination`, send the request `build` makes for its base
    /// URL, and return the answer (2xx only).
    async fn execute(
        &self,
        destination: &ServerName,
        build: impl FnOnce(&str) -> Result<http::Request<Vec<u8>>, String>,
    ) -> Result<http::Response<Vec<u8>>, FederationError> {
        if !self.enabled {
            return Err(FederationError::Disabled);
        }
        let target = self.resolver.resolve(&self.well_known_http, destination).await;
        {
            let mut srv_targets = self.srv_targets.lock().expect("SRV targets");
            match &target.connect_to {
                Some(connect_to) => srv_targets.insert(target.host.clone(), connect_to.clone()),
                None => srv_targets.remove(&target.host),
            };
        }
        let base_url = target.base_url();
        if !self.allow_private && url_names_blocked_ip(&base_url) {
            return Err(FederationError::Unreachable(format!("{} is a private address", target.host)));
        }
        let http_request = build(&base_url).map_err(FederationError::Request)?;
        let request =
            reqwest::Request::try_from(http_request).map_err(|e| FederationError::Request(e.to_string()))?;
        let response =
            self.http.execute(request).await.map_err(|e| FederationError::Unreachable(error_chain(&e)))?;
        read_answer(response, MAX_RESPONSE_BYTES).await.map_err(|e| match e {
            AnswerError::Body(reason) => FederationError::Unreachable(reason),
            AnswerError::Status { status, body } => FederationError::Status { status, body },
        })
    }
}

/// The HTTP client of federation requests: bounded waits, no redirects,
/// only public addresses (unless configured), the configured extra CAs.
fn http_client(
    config: &Config,
    srv_targets: SrvTargets,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(redirects)
        .user_agent(concat!("Estuary/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(VettingResolver {
            allow_private: config.federation_allow_private_addresses,
            srv_targets,
        }));
    with_trusted_roots(builder, config)?.build().map_err(Error::internal)
}

/// `.well-known` may redirect (the spec says to follow, avoiding loops): up
/// to 5 times, never to an address literal of a private network (host
/// names are vetted when resolved).
fn well_known_redirects(config: &Config) -> reqwest::redirect::Policy {
    let allow_private = config.federation_allow_private_addresses;
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if !allow_private && url_names_blocked_ip(attempt.url().as_str()) {
            attempt.error("redirect to a private address")
        } else {
            attempt.follow()
        }
    })
}

/// `builder` trusting the extra certificate authorities of
/// `federation_trusted_ca_paths` too: every outgoing client (federation,
/// appservices, push gateways) trusts the same private CAs.
pub(crate) fn with_trusted_roots(
    mut builder: reqwest::ClientBuilder,
    config: &Config,
) -> Result<reqwest::ClientBuilder> {
    for cert in trusted_roots(config)? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// The certificates of `federation_trusted_ca_paths`.
pub(crate) fn trusted_roots(config: &Config) -> Result<Vec<reqwest::Certificate>> {
    let mut roots = Vec::new();
    for path in &config.federation_trusted_ca_paths {
        let context = |e: &dyn std::fmt::Display| {
            Error::internal(format!("federation_trusted_ca_paths: {}: {e}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|e| context(&e))?;
        roots.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| context(&e))?);
    }
    Ok(roots)
}

/// Whether a URL's host is an IP address the DNS check never sees: URL
/// parsing reads forms like `0`, `127.1` or `0x7f.1` as IPv4 addresses.
fn url_names_blocked_ip(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return true };
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok_and(is_blocked)
}

/// A ruma response from an answer's status and body.
pub(crate) fn parse_answer<T: IncomingResponseExt>(answer: &http::Response<Vec<u8>>) -> Result<T, String> {
    let mut response = http::Response::new(answer.body().as_slice());
    *response.status_mut() = answer.status();
    *response.headers_mut() = answer.headers().clone();
    T::try_from_http_response(response).map_err(|e| e.to_string())
}

/// An error with its causes (reqwest's top-level message hides the reason:
/// a refused certificate, a refused connection).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why an answer could not be used.
pub(crate) enum AnswerError {
    /// Its body could not be read (or was too large).
    Body(String),
    /// A status other than 2xx, with the start of its body.
    Status { status: u16, body: String },
}

/// A 2xx answer with its status, headers (a multipart answer, as media
/// are, names its boundary there) and body of at most `limit` bytes.
pub(crate) async fn read_answer(
    response: reqwest::Response,
    limit: usize,
) -> Result<http::Response<Vec<u8>>, AnswerError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_limited(response, limit).await.map_err(AnswerError::Body)?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(AnswerError::Status { status: status.as_u16(), body });
    }
    let mut answer = http::Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(answer)
}

/// A response body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::url_names_blocked_ip;

    #[test]
    fn ip_forms_the_url_parser_normalises_are_vetted() {
        for url in [
            "https://0:8448",
            "https://127.1:8448",
            "https://0x7f.1:1",
            "https://[::1]:8448",
            "https://10.0.0.1:1",
        ] {
            assert!(url_names_blocked_ip(url), "{url} should be refused");
        }
        for url in ["https://example.org:8448", "https://1.1.1.1:8448", "https://[2606:4700::1111]:443"] {
            assert!(!url_names_blocked_ip(url), "{url} should be allowed");
        }
    }
}
