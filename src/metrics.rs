//! The Prometheus endpoint: the recorder every crate's `metrics` calls reach,
//! process figures, and the scrape handler that refreshes the gauges read
//! from the services before rendering.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::{Router, routing::get};
use estuary_core::Config;
use estuary_service::Services;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Response-time buckets in seconds (Prometheus' defaults, which Synapse uses).
const RESPONSE_TIME_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Install the recorder (once, at startup, when metrics are enabled).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(RESPONSE_TIME_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    metrics_process::Collector::default().describe();
    let version = env!("CARGO_PKG_VERSION");
    metrics::gauge!("estuary_build_info", "version" => version).set(1.0);
    // Synapse's dashboard reads its version panel from this name.
    metrics::gauge!("synapse_build_info", "version" => version, "osversion" => std::env::consts::OS).set(1.0);
    Ok(handle)
}

/// The scrape endpoint's routes (`/metrics` and `/_synapse/metrics`).
pub fn routes(services: Arc<Services>, handle: PrometheusHandle) -> Router {
    let collector = Arc::new(metrics_process::Collector::default());
    let scrape = move || {
        let (services, handle, collector) = (services.clone(), handle.clone(), collector.clone());
        async move {
            collector.collect();
            services.record_metrics();
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
        }
    };
    Router::new().route("/_synapse/metrics", get(scrape.clone())).route("/metrics", get(scrape))
}

/// The separate metrics listener, when `metrics_port` is set.
pub async fn serve_separately(
    config: &Config,
    routes: Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let port = config.metrics_port.context("no metrics_port")?;
    let address = SocketAddr::new(config.metrics_address, port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for metrics on {address}"))?;
    tracing::info!("metrics listening on http://{}", listener.local_addr()?);
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, routes).await {
            tracing::warn!("the metrics listener stopped: {err}");
        }
    }))
}
