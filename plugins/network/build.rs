//! Compiles the eBPF program with clang and generates its Rust skeleton (libbpf-cargo).
//! Needs `clang` at build time; the program is CO-RE, so one build runs on every kernel
//! with BTF.

use std::path::PathBuf;

const SOURCE: &str = "src/bpf/network.bpf.c";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let result = libbpf_cargo::SkeletonBuilder::new()
        .source(SOURCE)
        .clang_args(["-Isrc/bpf", "-Wall", "-Werror"])
        .build_and_generate(out.join("network.skel.rs"));
    if let Err(e) = result {
        panic!(
            "building {SOURCE} failed: {e:#}\n\
             The network plugin's eBPF program needs clang (Debian: apt-get install clang)."
        );
    }
    println!("cargo:rerun-if-changed=src/bpf");
}
