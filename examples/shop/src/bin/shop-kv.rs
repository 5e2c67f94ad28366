//! shop-kv: the shop's key-value store, a TCP line protocol over an append-only log.
//!
//! Under Paracloud it takes part through PaCI: it reports its load and capacity every second,
//! and when migrated it hands its whole map over (`migrate`: it stops applying commands, which
//! wait, and answers with the map; `restore`: the successor takes the map). Once drained it
//! forwards the commands still arriving on its connections to the successor, and closes each
//! connection when it is idle, so clients reconnect through the data plane to the successor.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use paracloud_paci_sdk::{Ack, EventKind, LoadReport, Paci};
use shop::kv::{Command, Reply};
use shop::store::Store;
use shop::sys::Shutdown;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Longest accepted command line; longer ones get an error and the connection is closed.
const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, Parser)]
#[command(about = "The shop's key-value store")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7000")]
    listen: SocketAddr,
    /// Directory holding the data (the log kv.log).
    #[arg(long, default_value = "/data")]
    data: PathBuf,
}

/// What a connection does with the next command.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Apply it here.
    Serving,
    /// Wait: the map is being handed over.
    Frozen,
    /// Send it to the successor at this address.
    Forwarding(SocketAddr),
}

struct Kv {
    store: Mutex<Store>,
    mode: watch::Sender<Mode>,
    /// Turns true when connections should close as soon as they are idle (drained).
    closing: watch::Sender<bool>,
    port: u16,
    in_flight: AtomicU32,
    /// Commands applied and the time spent applying them, for the capacity report.
    applied: AtomicU64,
    busy_ns: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    shop::sys::main_with(serve_until_signal)
}

async fn serve_until_signal(args: Args) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let store = Store::open(&args.data)?;
    let kv = Arc::new(Kv {
        store: Mutex::new(store),
        mode: watch::channel(Mode::Serving).0,
        closing: watch::channel(false).0,
        port: args.listen.port(),
        in_flight: AtomicU32::new(0),
        applied: AtomicU64::new(0),
        busy_ns: AtomicU64::new(0),
    });
    if let Ok(paci) = Paci::from_env() {
        // Events first, so that a successor is ready for its state as soon as it is ready.
        tokio::spawn(follow_events(paci.clone(), kv.clone()));
        tokio::spawn(report_load(paci, kv.clone()));
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, data = %args.data.display(), "kv ready");
    tokio::select! {
        () = shutdown.wait() => Ok(()),
        result = accept(listener, kv) => result,
    }
}

async fn accept(listener: TcpListener, kv: Arc<Kv>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accept failed")?;
        let kv = kv.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(stream, &kv).await {
                debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
}

async fn serve(stream: TcpStream, kv: &Kv) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut closing = kv.closing.subscribe();
    let mut upstream: Option<(SocketAddr, BufReader<TcpStream>)> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut read).take(MAX_LINE);
        let n = tokio::select! {
            n = limited.read_until(b'\n', &mut line) => n?,
            // Drained and idle: close, the client reconnects to the successor.
            _ = closing.wait_for(|c| *c) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if n as u64 == MAX_LINE {
                let reply = format!("{}\n", Reply::Err("line too long".into()));
                write.write_all(reply.as_bytes()).await?;
            }
            // Either too long or the client closed mid-line: nothing more to read sensibly.
            return Ok(());
        }
        kv.in_flight.fetch_add(1, Ordering::Relaxed);
        let reply = answer(kv, &line, &mut upstream).await;
        kv.in_flight.fetch_sub(1, Ordering::Relaxed);
        write.write_all(reply?.as_bytes()).await?;
    }
}

/// The reply line to one command line: applied here, after a handover, or by the successor.
async fn answer(
    kv: &Kv,
    line: &[u8],
    upstream: &mut Option<(SocketAddr, BufReader<TcpStream>)>,
) -> std::io::Result<String> {
    let mut mode = kv.mode.subscribe();
    loop {
        let target = {
            // The mode is read under the store's lock, so no command is applied here after the
            // map was handed over.
            let mut store = match kv.store.lock() {
                Ok(store) => store,
                Err(_) => {
                    warn!("store lock poisoned");
                    return Ok(format!("{}\n", Reply::Err("internal error".into())));
                }
            };
            match *kv.mode.borrow() {
                Mode::Serving => {
                    let began = Instant::now();
                    let reply = apply(&mut store, line);
                    kv.applied.fetch_add(1, Ordering::Relaxed);
                    kv.busy_ns
                        .fetch_add(began.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    return Ok(format!("{reply}\n"));
                }
                Mode::Frozen => None,
                Mode::Forwarding(target) => Some(target),
            }
        };
        match target {
            None => {
                if mode.changed().await.is_err() {
                    return Ok(format!("{}\n", Reply::Err("shutting down".into())));
                }
            }
            Some(target) => return forward(target, line, upstream).await,
        }
    }
}

fn apply(store: &mut Store, line: &[u8]) -> Reply {
    let line = &line[..line.len() - 1];
    match std::str::from_utf8(line) {
        Err(_) => Reply::Err("commands must be UTF-8".into()),
        Ok(text) => match Command::parse(text) {
            Err(error) => Reply::Err(error.to_string()),
            Ok(command) => store.apply(command),
        },
    }
}

/// Sends one command line to the successor over this connection's own link to it.
async fn forward(
    target: SocketAddr,
    line: &[u8],
    upstream: &mut Option<(SocketAddr, BufReader<TcpStream>)>,
) -> std::io::Result<String> {
    if upstream.as_ref().is_none_or(|(to, _)| *to != target) {
        let stream = TcpStream::connect(target).await?;
        let _ = stream.set_nodelay(true);
        *upstream = Some((target, BufReader::new(stream)));
    }
    let Some((_, link)) = upstream.as_mut() else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    link.get_mut().write_all(line).await?;
    let mut reply = String::new();
    if link.read_line(&mut reply).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(reply)
}

/// Answers the platform's events for as long as the stream lasts.
async fn follow_events(paci: Paci, kv: Arc<Kv>) {
    let mut events = match paci.events().await {
        Ok(events) => events,
        Err(error) => return warn!(%error, "no PaCI events: migration will not hand the data over"),
    };
    let mut successor = None;
    loop {
        let event = match events.next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => return warn!(%error, "the PaCI event stream broke"),
        };
        let ack = match &event.kind {
            EventKind::Migrate { to } => {
                successor = Some(SocketAddr::new(to.address.into(), kv.port));
                let entries = match kv.store.lock() {
                    Ok(store) => {
                        kv.mode.send_replace(Mode::Frozen);
                        Some(store.entries())
                    }
                    Err(_) => None,
                };
                match entries {
                    Some(entries) => {
                        info!(keys = entries.len(), to = %to.instance, "handing the data over");
                        Ack {
                            state: serde_json::to_value(entries).ok(),
                            error: None,
                        }
                    }
                    None => Ack {
                        error: Some("the store is broken (a panic while holding it)".into()),
                        state: None,
                    },
                }
            }
            EventKind::Restore { from, state } => {
                match serde_json::from_value::<BTreeMap<String, String>>(state.clone()) {
                    Ok(entries) => {
                        let keys = entries.len();
                        let replaced = kv
                            .store
                            .lock()
                            .map_err(|_| "the store is broken".to_string())
                            .and_then(|mut s| s.replace(entries).map_err(|e| e.to_string()));
                        match replaced {
                            Ok(()) => {
                                info!(keys, %from, "took the data over");
                                // Given back after an abandoned migration: serve on.
                                kv.mode.send_replace(Mode::Serving);
                                Ack::default()
                            }
                            Err(error) => Ack {
                                error: Some(format!("cannot store the data: {error}")),
                                state: None,
                            },
                        }
                    }
                    Err(error) => Ack {
                        error: Some(format!("the state is not a map of strings: {error}")),
                        state: None,
                    },
                }
            }
            EventKind::Drain { .. } => {
                // Copied out first: the watch's read lock must not be held while it is written.
                let current = *kv.mode.borrow();
                if let (Mode::Frozen, Some(to)) = (current, successor) {
                    kv.mode.send_replace(Mode::Forwarding(to));
                }
                kv.closing.send_replace(true);
                Ack::default()
            }
            EventKind::Resize { .. } | EventKind::Checkpoint { .. } => Ack::default(),
        };
        if let Err(error) = paci.ack(event.id, &ack).await {
            warn!(%error, id = event.id, "cannot answer a PaCI event");
        }
    }
}

/// Every second: requests under way, and how many a second this instance can apply (its CPU
/// over the time one command takes here).
async fn report_load(paci: Paci, kv: Arc<Kv>) {
    let cores = match paci.whoami().await {
        Ok(me) => me.resources.cpu.unwrap_or(1.0),
        Err(_) => 1.0,
    };
    let mut last = (0u64, 0u64);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let applied = kv.applied.load(Ordering::Relaxed);
        let busy = kv.busy_ns.load(Ordering::Relaxed);
        let (count, ns) = (applied - last.0, busy - last.1);
        last = (applied, busy);
        let keys = kv.store.lock().map(|s| s.len()).unwrap_or(0);
        let report = LoadReport {
            in_flight: Some(kv.in_flight.load(Ordering::Relaxed)),
            queue: None,
            capacity: (count > 0 && ns > 0).then(|| cores * 1e9 * count as f64 / ns as f64),
            custom: [("keys".to_string(), keys as f64)].into(),
        };
        if let Err(error) = paci.report_load(&report).await {
            debug!(%error, "cannot report the load");
        }
    }
}
