//! VRRP (RFC 3768 v2, RFC 5798 v3). `packet`: advertisements on the wire; `instance`: one
//! virtual router as a state machine without I/O; `socket`: raw IP protocol 112; `router`:
//! one instance with its socket, VIPs and tracks; `scripts`: the track scripts; `status`:
//! what `status` shows of an instance; `driver`: the routers by name, track
//! scripts, sync groups and reloads, for the daemon.

pub mod driver;
pub mod event;
pub mod instance;
pub mod packet;
pub mod router;
pub mod scripts;
pub mod socket;
pub mod status;
pub mod track;

#[cfg(test)]
mod tests;
