//! The root filesystem every runtime under test serves from: a static busybox, its symlinks,
//! /www/index.html and a minimal /etc, built in a directory of the bench's own.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where busybox-static installs its binary (Debian), and other usual places.
const BUSYBOX_CANDIDATES: [&str; 3] =
    ["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"];
/// Applets linked into /bin, for a person who looks inside an instance.
const APPLETS: [&str; 6] = ["sh", "httpd", "ls", "cat", "ps", "sleep"];
pub const INDEX_HTML: &str = "<html><body>paracloud-bench</body></html>\n";

/// Builds `dir` (which must not exist yet) and returns it.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let busybox = find_static_busybox()?;
    for sub in ["bin", "www", "etc", "proc", "dev", "sys", "tmp", "root"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    fs::copy(&busybox, dir.join("bin/busybox"))
        .with_context(|| format!("cannot copy {}", busybox.display()))?;
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet))?;
    }
    fs::write(dir.join("www/index.html"), INDEX_HTML)?;
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(dir.to_path_buf())
}

fn find_static_busybox() -> Result<PathBuf> {
    for candidate in BUSYBOX_CANDIDATES {
        let path = Path::new(candidate);
        let Ok(bytes) = fs::read(path) else {
            continue;
        };
        if is_static_elf(&bytes) {
            return Ok(path.to_path_buf());
        }
    }
    bail!(
        "no statically linked busybox in {}: install it with `apt-get install busybox-static`",
        BUSYBOX_CANDIDATES.join(", ")
    )
}

/// A 64-bit little-endian ELF without a PT_INTERP program header needs no dynamic loader, so it
/// runs in a root filesystem that holds nothing else.
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // Magic, 64-bit class, little endian.
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at).is_some_and(|kind| kind != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(program_header_types: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(program_header_types.len() as u16).to_le_bytes());
        for kind in program_header_types {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            bytes.extend(header);
        }
        bytes
    }

    #[test]
    fn an_elf_with_an_interpreter_is_not_static() {
        assert!(is_static_elf(&elf(&[1, 1, 4])));
        assert!(!is_static_elf(&elf(&[6, 3, 1])));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        let mut truncated = elf(&[1, 1]);
        truncated.truncate(100);
        assert!(!is_static_elf(&truncated));
    }
}
