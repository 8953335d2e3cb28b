//! Where the example binaries are, for the tests that run them.

use std::path::PathBuf;

/// `target/<profile>/examples/<name>`, built by `cargo test` alongside the test.
pub(crate) fn example(name: &str) -> PathBuf {
    // Unwrap: the test binary has a path, in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` so examples are built",
        path.display()
    );
    path
}
