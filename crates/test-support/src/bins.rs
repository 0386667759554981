//! The workspace's binaries, as built by `cargo build --workspace`.

use std::path::PathBuf;

/// `target/<profile>/<name>`, found beside the running test executable (which cargo puts
/// in `target/<profile>/deps/`). Panics with the fix when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}
