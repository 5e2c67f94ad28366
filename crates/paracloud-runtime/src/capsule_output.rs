//! What a capsule's function leaves the caller: its output as text, relayed as it comes, and the
//! files it wrote to its output directory. Shared by the daemon and the node agent.

use std::path::Path;

use tokio::io::AsyncReadExt;

/// At most this much of a stream is kept for the caller (the rest is only relayed).
pub const KEPT_BYTES: usize = 64 * 1024;

/// Reads a pipe to its end, handing each piece of text to `send` as it comes (whole UTF-8
/// sequences only: a character split between reads waits for the next); returns the bytes read
/// and the first [`KEPT_BYTES`] of the text.
pub async fn relay_text(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    mut send: impl FnMut(String),
) -> (u64, String) {
    let mut total = 0u64;
    let mut kept = String::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n as u64;
        pending.extend_from_slice(&buffer[..n]);
        let cut = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => pending.len(),
        };
        let text = String::from_utf8_lossy(&pending[..cut]).into_owned();
        pending.drain(..cut);
        if kept.len() < KEPT_BYTES {
            kept.push_str(&text);
        }
        send(text);
    }
    if !pending.is_empty() {
        send(String::from_utf8_lossy(&pending).into_owned());
    }
    (total, kept)
}

/// The plain files of a directory, by name, with their sizes.
pub fn files_in(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), meta.len()))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_character_split_between_reads_comes_whole() {
        let (mut writer, reader) = tokio::io::duplex(8);
        let text = "héllo wörld ✓";
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in text.as_bytes() {
                writer.write_all(&[*byte]).await.unwrap();
            }
        });
        let mut pieces = Vec::new();
        let (total, kept) = relay_text(reader, |t| pieces.push(t)).await;
        assert_eq!(total as usize, text.len());
        assert_eq!(kept, text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')));
    }
}
