//! The listener: plain HTTP, or HTTPS when a certificate is configured.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::Router;
use estuary_core::Config;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tower::ServiceExt;

pub async fn serve(
    config: &Config,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = SocketAddr::new(config.address, config.port);
    let listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    match (&config.tls_certificate_path, &config.tls_private_key_path) {
        (Some(cert), Some(key)) => {
            let acceptor = tls_acceptor(cert, key)?;
            tracing::info!("listening on https://{local}");
            let federation = federation_listener(config, acceptor.clone(), app.clone()).await;
            let served = serve_tls(listener, acceptor, app, shutdown).await;
            if let Some(task) = federation {
                task.abort();
            }
            served
        }
        _ => {
            tracing::info!("listening on http://{local}");
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
            Ok(())
        }
    }
}

/// The second, federation-only HTTPS listener on `federation_port`, when
/// it differs from the main port. A port that cannot be bound is logged,
/// not fatal: the main listener serves federation too.
async fn federation_listener(
    config: &Config,
    acceptor: TlsAcceptor,
    app: Router,
) -> Option<tokio::task::JoinHandle<()>> {
    let port = config.federation_port.filter(|p| *p != 0 && *p != config.port && config.allow_federation)?;
    let address = SocketAddr::new(config.address, port);
    match TcpListener::bind(address).await {
        Ok(listener) => {
            tracing::info!("federation listening on https://{address}");
            Some(tokio::spawn(async move {
                if let Err(err) = serve_tls(listener, acceptor, app, std::future::pending()).await {
                    tracing::warn!("federation listener stopped: {err}");
                }
            }))
        }
        Err(err) => {
            tracing::warn!("cannot listen for federation on {address}: {err}; the main listener serves it");
            None
        }
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("invalid TLS certificate or key")?;
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        // The peer's address, as `axum::serve` gives it on plain HTTP.
        let with_peer = app.clone().map_request(move |mut request: axum::http::Request<_>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            request
        });
        let service = TowerToHyperService::new(with_peer);
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!(%peer, "TLS handshake failed: {err}");
                    return;
                }
            };
            let builder = Builder::new(TokioExecutor::new());
            if let Err(err) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, "connection error: {err}");
            }
        });
    }
}
