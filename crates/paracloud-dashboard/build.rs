//! Installs the npm packages the dashboard embeds (`package.json`, pinned by
//! `package-lock.json`) into the build's output directory with `npm ci`, and puts the files the
//! browser loads beside them for `include_bytes!`. Nothing is fetched at run time; the packages
//! are fetched once per build directory, from the npm registry npm is configured with.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the page loads from each package: (file in the package, name under `/assets/`).
const FILES: &[(&str, &str)] = &[
    ("@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("@xterm/xterm/css/xterm.css", "xterm.css"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=package.json");
    println!("cargo:rerun-if-changed=package-lock.json");
    let npm_dir = out.join("npm");
    let lock = std::fs::read(manifest_dir.join("package-lock.json")).unwrap();
    let installed_lock = npm_dir.join("package-lock.json");
    let installed = std::fs::read(&installed_lock).ok() == Some(lock.clone())
        && FILES
            .iter()
            .all(|(file, _)| npm_dir.join("node_modules").join(file).is_file());
    if !installed {
        std::fs::create_dir_all(&npm_dir).unwrap();
        for name in ["package.json", "package-lock.json"] {
            std::fs::copy(manifest_dir.join(name), npm_dir.join(name)).unwrap();
        }
        npm_ci(&npm_dir);
    }
    for (file, name) in FILES {
        let from = npm_dir.join("node_modules").join(file);
        std::fs::copy(&from, out.join(name))
            .unwrap_or_else(|e| panic!("{} is not in the installed packages: {e}", from.display()));
    }
}

fn npm_ci(dir: &Path) {
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| {
            panic!("the dashboard embeds npm packages, and npm cannot run ({e}): install Node.js with npm (Debian: apt-get install nodejs npm)")
        });
    assert!(
        status.success(),
        "npm ci failed in {} ({status}): the dashboard's packages could not be installed from the npm registry",
        dir.display()
    );
}
