//! Content digests of streams: a reader and a writer that hash what passes through them. The
//! digest type itself is pure and lives in `paracloud-image-spec`; it is re-exported here.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

pub use paracloud_image_spec::digest::{Digest, DigestError};

fn finished(hasher: Sha256) -> Digest {
    Digest::from_sha256(hasher.finalize().into())
}

/// Hashes and counts the bytes read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left (so that the digest covers the whole stream), then returns the digest
    /// and the byte count.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((finished(self.hasher), self.count))
    }

    /// The digest and count of what has been read so far.
    pub fn so_far(&self) -> (Digest, u64) {
        (finished(self.hasher.clone()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes and counts the bytes written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, finished(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashing_reader_sees_the_whole_stream() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        let (digest, count) = r.finish().unwrap();
        assert_eq!((digest, count), (Digest::of(&data), 100_000));
    }
}
