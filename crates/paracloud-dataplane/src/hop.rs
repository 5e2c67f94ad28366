//! Headers that describe one hop (RFC 9110, section 7.6.1): neither HTTP path forwards them, in requests or responses.

/// Headers that describe one hop, never forwarded (RFC 9110, section 7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
