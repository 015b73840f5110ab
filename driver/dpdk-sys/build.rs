//! Generates bindings to the system DPDK with bindgen and compiles the wrappers for DPDK's
//! `static inline` functions (bindgen's `wrap_static_fns`). DPDK is found through pkg-config.

use std::env;
use std::path::PathBuf;
use std::process::{exit, Command};

/// Oldest DPDK whose ABI these bindings are written for.
const MIN_DPDK: &str = "22.11";

/// Packed structs nested inside packed structs, which Rust cannot represent; treated as opaque.
const OPAQUE: &[&str] = &[
    "rte_l2tpv2_combined_msg_hdr",
    "rte_gtp_psc_generic_hdr",
    "rte_arp_hdr",
];

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

/// `pkg-config --cflags libdpdk`, split into words: DPDK needs `-include rte_config.h` and a
/// `-march` that the pkg-config crate does not hand out.
fn dpdk_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| {
            fail(&format!(
                "cannot run {pkg_config}: {e}; install it with `apt-get install pkg-config`"
            ))
        });
    if !out.status.success() {
        fail("pkg-config --cflags libdpdk failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let lib = match pkg_config::Config::new()
        .atleast_version(MIN_DPDK)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            let why = e
                .to_string()
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            fail(&format!(
                "DPDK >= {MIN_DPDK} not found through pkg-config (libdpdk): install it with \
                 `apt-get install libdpdk-dev dpdk-dev dpdk`{why}"
            ))
        }
    };
    println!("cargo:version={}", lib.version);

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR not set")));
    let manifest = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| fail("CARGO_MANIFEST_DIR not set")),
    );
    let header = manifest.join("wrapper.h");
    let cflags = dpdk_cflags();
    let wrappers = out_dir.join("static_fns");

    let mut builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_args(&cflags)
        .allowlist_function("rte_.*|nemflow_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*|rte_.*")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate_comments(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for ty in OPAQUE {
        builder = builder.opaque_type(*ty);
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        fail(&format!(
            "bindgen over the DPDK headers failed: {e}; is libclang-dev installed?"
        ))
    });
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings: {e}")));

    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c"))
        .include(&manifest)
        .warnings(false);
    for flag in &cflags {
        cc.flag(flag);
    }
    cc.compile("nemflow_dpdk_static_fns");
}
