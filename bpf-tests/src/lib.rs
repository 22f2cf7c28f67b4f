//! Test support for the XDP program: a frame builder, one fixed provisioning, a harness that
//! runs the real object in the kernel, and the fixture tables.

pub mod builder;
pub mod fixtures;
pub mod provision;
