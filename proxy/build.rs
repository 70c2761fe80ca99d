//! Link flags for the `zen-proxy` program only (not the library, tests or benches).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Relative relocations packed as DT_RELR: the PIE keeps its address randomization, but its
    // ~790 KiB `.rela.dyn` table, which the loader reads whole at every start and which then
    // stays resident, shrinks to a few KiB (bench/README.md "Idle memory": ~1.7 MB less RSS).
    // A binary linked so needs glibc >= 2.36 to run (GNU ld >= 2.38 to link; Debian bookworm has
    // both). Used only when building natively against such a glibc, so that the program runs
    // where it was built; elsewhere the default relocations are kept.
    if relr_supported() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

fn relr_supported() -> bool {
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("HOST") != var("TARGET")
    {
        return false;
    }
    // "glibc 2.36"
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut version = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    out.status.success() && (major, minor) >= (2, 36)
}
