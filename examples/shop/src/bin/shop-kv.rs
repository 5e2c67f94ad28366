//! shop-kv: the shop's key-value store, a TCP line protocol over an append-only log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use shop::kv::{Command, Reply};
use shop::store::Store;
use shop::sys::Shutdown;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
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

fn main() -> anyhow::Result<()> {
    shop::sys::main_with(serve_until_signal)
}

async fn serve_until_signal(args: Args) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let store = Store::open(&args.data)?;
    let store = Arc::new(Mutex::new(store));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, data = %args.data.display(), "kv ready");
    tokio::select! {
        () = shutdown.wait() => Ok(()),
        result = accept(listener, store) => result,
    }
}

async fn accept(listener: TcpListener, store: Arc<Mutex<Store>>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accept failed")?;
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(stream, &store).await {
                debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
}

async fn serve(stream: TcpStream, store: &Mutex<Store>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut read)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
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
        line.pop();
        let reply = match std::str::from_utf8(&line) {
            Err(_) => Reply::Err("commands must be UTF-8".into()),
            Ok(text) => match Command::parse(text) {
                Err(error) => Reply::Err(error.to_string()),
                Ok(command) => match store.lock() {
                    Ok(mut store) => store.apply(command),
                    Err(_) => {
                        warn!("store lock poisoned");
                        Reply::Err("internal error".into())
                    }
                },
            },
        };
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
}
