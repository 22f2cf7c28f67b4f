//! VRRP (RFC 3768 v2, RFC 5798 v3). `packet`: advertisements on the wire; `instance`: one
//! virtual router as a state machine without I/O. Sockets, timers and addresses (the driver)
//! come next.

pub mod driver;
pub mod instance;
pub mod packet;
pub mod socket;

#[cfg(test)]
mod tests;
