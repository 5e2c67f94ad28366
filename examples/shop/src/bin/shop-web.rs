//! shop-web: the shop's HTML page, built from the api's answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use shop::model::{ErrorBody, Products};
use shop::page;
use shop::sys::{hostname, serve_http, Shutdown};
use tokio::net::TcpListener;
use tracing::{info, warn};

const API_TIMEOUT: Duration = Duration::from_secs(10);
/// The share of its requests a new instance takes (percent) while it warms up.
const WARMING_WEIGHT: u32 = 10;
/// Pages a new instance serves at its low share before it takes its full one: its pooled
/// connections to the api are open by then.
const WARM_UP_PAGES: u64 = 20;
/// The longest a new instance stays at its low share (it may see no traffic at all).
const WARM_UP_MAX: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(about = "The shop's web page")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Base URL of the api.
    #[arg(long, default_value = "http://api:8000")]
    api: String,
}

struct App {
    client: Client<HttpConnector, Empty<Bytes>>,
    api: String,
    hostname: String,
    /// Pages served, for the warm-up.
    served: std::sync::atomic::AtomicU64,
}

fn main() -> anyhow::Result<()> {
    shop::sys::main_with(serve_until_signal)
}

async fn serve_until_signal(args: Args) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let api = args.api.trim_end_matches('/').to_owned();
    api.parse::<hyper::Uri>()
        .with_context(|| format!("--api {api:?} is not a URL such as http://api:8000"))?;
    let app = Arc::new(App {
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http(),
        api: api.clone(),
        hostname: hostname(),
        served: std::sync::atomic::AtomicU64::new(0),
    });
    // Under Paracloud: a small share of the traffic until warmed up, then the full one.
    let paci = paracloud_paci_sdk::Paci::from_env().ok();
    if let Some(paci) = &paci {
        if let Err(error) = paci.set_weight(Some(WARMING_WEIGHT)).await {
            warn!(%error, "cannot lower the weight while warming up");
        }
    }
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(index))
        .with_state(app.clone());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, %api, "web ready");
    if let Some(paci) = paci {
        tokio::spawn(async move {
            let began = std::time::Instant::now();
            while app.served.load(std::sync::atomic::Ordering::Relaxed) < WARM_UP_PAGES
                && began.elapsed() < WARM_UP_MAX
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let served = app.served.load(std::sync::atomic::Ordering::Relaxed);
            info!(served, "warmed up; taking the full share of requests");
            if let Err(error) = paci.set_weight(None).await {
                warn!(%error, "cannot restore the full weight");
            }
        });
    }
    serve_http(listener, router, shutdown).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct WorkQuery {
    work: Option<u64>,
}

async fn index(State(app): State<Arc<App>>, Query(query): Query<WorkQuery>) -> Response {
    match fetch_products(&app, query.work).await {
        Ok(products) => {
            app.served
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Html(page::render(&app.hostname, &products)).into_response()
        }
        Err((tier, message)) => {
            warn!(tier, %message, "cannot build the page");
            (
                StatusCode::BAD_GATEWAY,
                Html(page::render_error(&app.hostname, tier, &message)),
            )
                .into_response()
        }
    }
}

/// Asks the api for the products; on failure names the tier at fault and why.
async fn fetch_products(app: &App, work: Option<u64>) -> Result<Products, (&'static str, String)> {
    let url = match work {
        Some(n) => format!("{}/api/products?work={n}", app.api),
        None => format!("{}/api/products", app.api),
    };
    let api_error = |message: String| ("api", message);
    let request = hyper::Request::get(&url)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| api_error(format!("bad request to {url}: {e}")))?;
    let response = tokio::time::timeout(API_TIMEOUT, app.client.request(request))
        .await
        .map_err(|_| api_error(format!("{url} did not answer within {API_TIMEOUT:?}")))?
        .map_err(|e| api_error(format!("cannot reach {url}: {}", error_chain(&e))))?;
    let status = response.status();
    let body = tokio::time::timeout(API_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| api_error(format!("{url} did not finish its answer")))?
        .map_err(|e| api_error(format!("reading the answer of {url}: {e}")))?
        .to_bytes();
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| api_error(format!("{url} answered unexpected JSON: {e}")));
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody {
            error,
            tier: Some(tier),
        }) if tier == "kv" => Err(("kv", error)),
        Ok(ErrorBody { error, .. }) => Err(api_error(format!("{url} answered {status}: {error}"))),
        Err(_) => Err(api_error(format!("{url} answered {status}"))),
    }
}

/// The error with its sources, since hyper's top-level message alone ("client error") says little.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
