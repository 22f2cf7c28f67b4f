//! VRRP (RFC 3768 v2, RFC 5798 v3). `packet`: advertisements on the wire. The state machine
//! and its I/O come next.

pub mod packet;
