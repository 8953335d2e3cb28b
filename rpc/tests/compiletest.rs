//! Compile-time tests of `#[register]` and `declare!`: `ui/pass` must compile (and run),
//! `ui/fail` must fail with exactly the error in the `.stderr` next to each file.
//!
//! Regenerate the snapshots after changing a message:
//!
//! ```text
//! TRYBUILD=overwrite cargo test -p easyrpc --test compiletest
//! ```
//!
//! then read every changed `.stderr`: the error must point at the user's own token and say
//! what is allowed.

use std::process::Command;

/// The toolchain the `.stderr` snapshots were written with. Compiler messages change between
/// releases, so the snapshots are only checked on this one; the pass cases run on any.
const SNAPSHOT_TOOLCHAIN: &str = "rustc 1.95.";

fn snapshot_toolchain() -> bool {
    let version = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.starts_with(SNAPSHOT_TOOLCHAIN) {
        return true;
    }
    eprintln!(
        "skipping tests/ui/fail: the snapshots are for {SNAPSHOT_TOOLCHAIN}x, this is {:?}",
        version.trim()
    );
    false
}

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    if snapshot_toolchain() {
        t.compile_fail("tests/ui/fail/*.rs");
    }
}
