//! Where a chunked HTTP/1.1 body ends: a byte-at-a-time state machine over the raw bytes, so a proxy can forward them unchanged and still know the message boundary.
//!
//! The grammar is RFC 9112 section 7.1: `size [; ext] CRLF data CRLF`, repeated, then a zero
//! size, optional trailer lines and an empty line. Spaces and tabs are tolerated after the size
//! (as most servers do); line ends must be CRLF, which leaves no room for the ambiguities request
//! smuggling lives on.

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size too large")]
    TooLarge,
    #[error("missing CRLF after chunk data")]
    DataEnd,
    #[error("invalid trailer section")]
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a size.
    SizeStart,
    /// In the hex digits of a size.
    Size,
    /// After the size: whitespace before `;` or CR.
    SizeSpace,
    /// In a chunk extension, until CR.
    Extension,
    /// CR of the size line seen; LF expected.
    SizeLf,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Data done; CR expected.
    DataCr,
    /// Data done, CR seen; LF expected.
    DataLf,
    /// After the last chunk, at the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line, until CR.
    Trailer,
    /// CR of a trailer line seen; LF expected.
    TrailerLf,
    /// CR of the final empty line seen; LF expected.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Tracks a chunked body fed in pieces of any size.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedTracker {
    state: State,
    size: u64,
    size_digits: u32,
    /// Payload bytes (chunk data) seen so far.
    data: u64,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            size_digits: 0,
            data: 0,
        }
    }
}

impl ChunkedTracker {
    /// Payload bytes seen so far (the chunk framing excluded).
    pub(crate) fn data_bytes(&self) -> u64 {
        self.data
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes of the body. Returns `Some(n)` when the body ends after the first
    /// `n` bytes of `bytes` (what follows belongs to the next message), `None` when all of
    /// `bytes` belongs to the body and more is to come.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        if self.is_done() {
            return Ok(Some(0));
        }
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let take = left.min((bytes.len() - i) as u64);
                self.data += take;
                i += take as usize;
                let left = left - take;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                continue;
            }
            let byte = bytes[i];
            i += 1;
            self.state = self.step(byte)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        Ok(match (self.state, byte) {
            (State::SizeStart | State::Size, _) if byte.is_ascii_hexdigit() => {
                if self.size_digits == 16 {
                    return Err(ChunkError::TooLarge);
                }
                let digit = (byte as char).to_digit(16).unwrap_or(0);
                self.size = self.size << 4 | u64::from(digit);
                self.size_digits += 1;
                State::Size
            }
            (State::Size | State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
            (State::Size | State::SizeSpace, b';') => State::Extension,
            (State::Size | State::SizeSpace | State::Extension, b'\r') => State::SizeLf,
            (State::Extension, b'\n') => return Err(ChunkError::Size),
            (State::Extension, _) => State::Extension,
            (State::SizeLf, b'\n') => {
                let size = std::mem::take(&mut self.size);
                self.size_digits = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            (State::SizeStart | State::Size | State::SizeSpace | State::SizeLf, _) => {
                return Err(ChunkError::Size)
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::SizeStart,
            (State::DataCr | State::DataLf, _) => return Err(ChunkError::DataEnd),
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::TrailerStart, b'\n') => return Err(ChunkError::Trailer),
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::Trailer, b'\n') => return Err(ChunkError::Trailer),
            (State::TrailerStart | State::Trailer, _) => State::Trailer,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::FinalLf, b'\n') => State::Done,
            (State::TrailerLf | State::FinalLf, _) => return Err(ChunkError::Trailer),
            (State::Data(_) | State::Done, _) => {
                unreachable!("data is consumed in bulk and feeding stops at the end")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Encodes chunks (empty ones skipped: a zero size ends the body) with optional extensions
    /// and trailers, as a sender would.
    fn encode(chunks: &[Vec<u8>], extension: bool, trailers: &[String], upper: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            let size = if upper {
                format!("{:X}", chunk.len())
            } else {
                format!("{:x}", chunk.len())
            };
            out.extend_from_slice(size.as_bytes());
            if extension {
                out.extend_from_slice(b" ;name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for trailer in trailers {
            out.extend_from_slice(trailer.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Feeds `wire` cut at `cuts`; returns where the body ended, as an offset into `wire`.
    fn end_of(wire: &[u8], cuts: &[usize]) -> Result<Option<usize>, ChunkError> {
        let mut tracker = ChunkedTracker::default();
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (wire.len() + 1)).collect();
        bounds.push(0);
        bounds.push(wire.len());
        bounds.sort_unstable();
        bounds.dedup();
        for pair in bounds.windows(2) {
            if let Some(n) = tracker.feed(&wire[pair[0]..pair[1]])? {
                return Ok(Some(pair[0] + n));
            }
        }
        Ok(None)
    }

    #[test]
    fn a_simple_body_ends_at_its_last_crlf() {
        let wire = b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let mut tracker = ChunkedTracker::default();
        assert_eq!(tracker.feed(wire), Ok(Some(15)));
        assert_eq!(tracker.data_bytes(), 5);
        assert!(tracker.is_done());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for wire in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloXX",
            b"0\r\n\n",
            b"11111111111111111\r\n",
            b"\r\n",
            b"5;ext\n",
        ] {
            assert!(ChunkedTracker::default().feed(wire).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        let mut tracker = ChunkedTracker::default();
        assert_eq!(tracker.feed(b"a\r\n0123"), Ok(None));
        assert_eq!(tracker.feed(b"456789\r\n0\r\n"), Ok(None));
        assert_eq!(tracker.feed(b"\r\n"), Ok(Some(2)));
    }

    proptest! {
        #[test]
        fn any_split_of_any_chunking_ends_exactly_at_the_message_end(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            extension: bool,
            upper: bool,
            trailers in prop::collection::vec("[a-z]{1,8}: [ -~]{0,20}", 0..3),
            next in prop::collection::vec(any::<u8>(), 0..40),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let body = encode(&chunks, extension, &trailers, upper);
            let mut wire = body.clone();
            wire.extend_from_slice(&next);
            prop_assert_eq!(end_of(&wire, &cuts), Ok(Some(body.len())));
            let mut tracker = ChunkedTracker::default();
            tracker.feed(&wire).unwrap();
            let payload: usize = chunks.iter().map(Vec::len).sum();
            prop_assert_eq!(tracker.data_bytes(), payload as u64);
        }

        #[test]
        fn a_truncated_body_never_ends(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..5),
            cut in any::<usize>(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let body = encode(&chunks, false, &[], false);
            let truncated = &body[..cut % body.len()];
            prop_assert_eq!(end_of(truncated, &cuts), Ok(None));
        }
    }
}
