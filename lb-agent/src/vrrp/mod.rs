//! VRRP (RFC 3768 v2, RFC 5798 v3). `packet`: advertisements on the wire; `instance`: one
//! virtual router as a state machine without I/O; `socket`: raw IP protocol 112; `driver`:
//! instances, sockets, timers, virtual addresses and sync groups for the daemon.

pub mod driver;
pub mod instance;
pub mod packet;
pub mod socket;
pub mod track;

#[cfg(test)]
mod tests;
