//! Types shared by the XDP program and userspace: map names, keys, values, flags and the
//! flow hash.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the kernel, the BPF program
//! and `lb-agent` agree on every byte, and so that `bpftool map dump` can print the fields by
//! name (the program is built with BTF). Booleans are `u32` flag words, never `bool`.
//!
//! Addresses are stored as four `u32` words in network byte order, exactly as they are read
//! from the packet: an IPv4 address fills word 0 and leaves the others zero. Ports are kept in
//! network byte order as well, so the data plane never swaps bytes.
#![no_std]

pub mod hash;
pub mod maps;

pub use hash::{flow_hash, vip_filter_slot};
pub use maps::*;
