//! `lb-agent`: the control plane of an XDP direct-routing load balancer.
//!
//! - `config`: the TOML schema and its validation;
//! - `balancer`: pure logic of pools (Maglev tables) and the desired data-plane state;
//! - `dataplane`: the embedded XDP object, loading/attaching, and writing the maps;
//! - `decision`: the writer decision shared by the agents (epoch, rules, wire format);
//! - `netlink`: what the kernel knows (interfaces, local addresses, neighbours);
//! - `control`: the control socket, `status`, and metrics;
//! - `health`: check commands and rise/fall hysteresis;
//! - `realserver`: a DR real server's VIPs on `lo` and ARP settings;
//! - `secret`: files that hold secrets (owner and mode rules), and no echo of secret values;
//! - `vrrp`: VRRP: packet codec, sans-IO state machine, socket and driver.

pub mod balancer;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod decision;
pub mod health;
pub mod netlink;
pub mod notify;
pub mod realserver;
pub mod secret;
pub mod vrrp;
