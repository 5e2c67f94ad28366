//! The browser dashboard's files (`assets/`), built into the binary: the daemon serves them at
//! `/` and `/assets/{name}`, and nothing is fetched at run time.
//!
//! The front end is plain ES modules, HTML and CSS: charts are drawn on a canvas by `chart.js`,
//! so the first load stays small; the debug terminal is xterm.js, an npm package installed from
//! the lockfile by `build.rs` and loaded only when a terminal is opened. Each file carries an entity
//! tag made from its bytes at compile time, so a browser revalidates with `If-None-Match` and
//! gets `304 Not Modified` while the binary is unchanged.

/// One file of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its name under `/assets/` (`index.html` is the page at `/`).
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    /// A strong entity tag of its bytes, quoted as HTTP writes it.
    pub etag: &'static str,
}

/// FNV-1a over the bytes: a content hash computed at compile time, for entity tags only.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 hex digits of the hash + `"`, as a static string.
const fn etag_bytes(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! assets {
    ($($name:literal from $path:expr => $type:literal),* $(,)?) => {
        /// Every file of the dashboard.
        pub const ASSETS: &[Asset] = &[$({
            const BYTES: &[u8] = include_bytes!($path);
            const TAG: [u8; 18] = etag_bytes(BYTES);
            Asset {
                name: $name,
                content_type: $type,
                bytes: BYTES,
                etag: match std::str::from_utf8(&TAG) {
                    Ok(tag) => tag,
                    Err(_) => panic!("an entity tag is ASCII"),
                },
            }
        }),*];
    };
}

assets! {
    "index.html" from "../assets/index.html" => "text/html; charset=utf-8",
    "app.js" from "../assets/app.js" => "text/javascript; charset=utf-8",
    "api.js" from "../assets/api.js" => "text/javascript; charset=utf-8",
    "chart.js" from "../assets/chart.js" => "text/javascript; charset=utf-8",
    "style.css" from "../assets/style.css" => "text/css; charset=utf-8",
    "favicon.svg" from "../assets/favicon.svg" => "image/svg+xml",
    // npm's @xterm/xterm (package-lock.json), installed by build.rs: the debug terminal, loaded
    // when one is opened.
    "xterm.js" from concat!(env!("OUT_DIR"), "/xterm.js") => "text/javascript; charset=utf-8",
    "xterm.css" from concat!(env!("OUT_DIR"), "/xterm.css") => "text/css; charset=utf-8",
}

/// The files the page loads only when they are needed (the debug terminal's), not at its
/// first load.
pub const ON_DEMAND: &[&str] = &["xterm.js", "xterm.css"];

/// The page served at `/`.
pub fn page() -> &'static Asset {
    asset("index.html").unwrap_or(&ASSETS[0])
}

/// The file named `name` under `/assets/`, if the dashboard has one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// Whether a request's `If-None-Match` value names the asset's current entity tag.
pub fn matches(asset: &Asset, if_none_match: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == asset.etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_and_scripts_name_is_built_in() {
        for asset in ASSETS {
            let Ok(text) = std::str::from_utf8(asset.bytes) else {
                continue;
            };
            for quote in ['"', '\''] {
                for part in text.split(quote) {
                    let Some(name) = part
                        .strip_prefix("/assets/")
                        .or_else(|| part.strip_prefix("./"))
                    else {
                        continue;
                    };
                    if name.ends_with(".js") || name.ends_with(".css") || name.ends_with(".svg") {
                        assert!(
                            self::asset(name).is_some(),
                            "{} names {name}, which is not built in",
                            asset.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn entity_tags_follow_the_bytes() {
        assert_eq!(etag_bytes(b"a"), etag_bytes(b"a"));
        assert_ne!(etag_bytes(b"a"), etag_bytes(b"b"));
        let page = page();
        assert_eq!(page.name, "index.html");
        assert!(matches(page, page.etag));
        assert!(matches(page, &format!("W/{}, \"x\"", page.etag)));
        assert!(!matches(page, "\"0000000000000000\""));
    }
}
