//! shop-api: the shop's JSON api; each products request does some CPU work and counts a visit in kv.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use shop::client::{KvClient, KvError};
use shop::kv::{valid_key, valid_value};
use shop::model::{catalogue, ErrorBody, KeyValue, Products};
use shop::sys::{hostname, serve_http, Shutdown};
use shop::work::{cpu_work, DEFAULT_WORK, MAX_WORK};
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(about = "The shop's JSON api")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// Address of the kv store (host:port).
    #[arg(long, default_value = "kv:7000")]
    kv: String,
}

struct App {
    kv: KvClient,
    hostname: String,
}

type Shared = State<Arc<App>>;

fn main() -> anyhow::Result<()> {
    shop::sys::main_with(serve_until_signal)
}

async fn serve_until_signal(args: Args) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let app = Arc::new(App {
        kv: KvClient::new(args.kv.clone()),
        hostname: hostname(),
    });
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/products", get(products))
        .route("/api/kv/{key}", get(get_key).put(put_key))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, None, "no such route") })
        .with_state(app);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, kv = %args.kv, "api ready");
    serve_http(listener, router, shutdown).await?;
    Ok(())
}

/// An error answer: a status and a JSON [`ErrorBody`].
struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    fn new(status: StatusCode, tier: Option<&str>, error: impl Into<String>) -> Self {
        Self(
            status,
            ErrorBody {
                error: error.into(),
                tier: tier.map(str::to_owned),
            },
        )
    }

    fn kv(error: KvError) -> Self {
        warn!(%error, "kv request failed");
        Self::new(StatusCode::BAD_GATEWAY, Some("kv"), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

#[derive(Debug, Deserialize)]
struct WorkQuery {
    work: Option<u64>,
}

async fn products(
    State(app): Shared,
    Query(query): Query<WorkQuery>,
) -> Result<Json<Products>, ApiError> {
    let work = query.work.unwrap_or(DEFAULT_WORK);
    if work > MAX_WORK {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            None,
            format!("work must be at most {MAX_WORK}"),
        ));
    }
    let visits = app.kv.incr("visits").await.map_err(ApiError::kv)?;
    // The work may take long: keep it off the threads that serve other requests.
    let checksum = tokio::task::spawn_blocking(move || cpu_work(work))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("api"),
                e.to_string(),
            )
        })?;
    Ok(Json(Products {
        products: catalogue(),
        visits,
        work,
        checksum,
        served_by: app.hostname.clone(),
    }))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            None,
            "keys must be one word without spaces or control characters",
        ))
    }
}

async fn get_key(State(app): Shared, Path(key): Path<String>) -> Result<Json<KeyValue>, ApiError> {
    check_key(&key)?;
    match app.kv.get(&key).await.map_err(ApiError::kv)? {
        Some(value) => Ok(Json(KeyValue { key, value })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            None,
            format!("no value for key {key}"),
        )),
    }
}

async fn put_key(
    State(app): Shared,
    Path(key): Path<String>,
    value: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_key(&key)?;
    if !valid_value(&value) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            None,
            "values must fit on one line",
        ));
    }
    app.kv.set(&key, &value).await.map_err(ApiError::kv)?;
    Ok(Json(serde_json::json!({ "ok": true })))
}
