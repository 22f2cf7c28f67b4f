//! The writer decision shared by the agents of a pair (DESIGN §7, I1 and I2): `shared` is
//! the decision and its rules without I/O, `wire` its authenticated datagram. One agent —
//! the VRRP master of the service's address — decides; the others follow, in their data
//! planes too; the decision, with its epoch and the failback gate it implies, moves with the
//! master role. `maintenance` shares the operators' maintenance words the same ways.

pub mod maintenance;
pub mod quorum;
pub mod shared;
pub mod wire;
