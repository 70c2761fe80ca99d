//! Link flags for the `zen-proxy` program only (not the library, tests or benches).

fn main() {
    // Relative relocations packed as DT_RELR (glibc >= 2.36, GNU ld >= 2.38; Debian bookworm has
    // both): the PIE keeps its address randomization, but its ~790 KiB `.rela.dyn` table, which
    // the loader reads whole at every start and which then stays resident, shrinks to a few KiB.
    // Measured: see bench/README.md "Idle memory". Only on Linux with the GNU toolchain, where
    // the flag is known; elsewhere the default relocations are kept.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
