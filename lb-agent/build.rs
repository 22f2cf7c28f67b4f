//! Embeds the XDP object that `cargo xtask build-ebpf` leaves in `target/bpf/lb-xdp.o` (or
//! the file named by `LB_XDP_OBJECT`). Without it the agent still builds, and says at run time
//! how to get the object.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LB_XDP_OBJECT");
    let source = env::var_os("LB_XDP_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target/bpf/lb-xdp.o")
        });
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("lb-xdp.o");
    match fs::read(&source) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=no XDP object at {}: run `cargo xtask build-ebpf` first; this \
                 lb-agent will refuse to load a data plane",
                source.display()
            );
            fs::write(&out, b"").unwrap();
        }
    }
}
