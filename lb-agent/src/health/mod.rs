//! Health checking, shared by real-server checks and VRRP track scripts: `tracker` is the
//! rise/fall hysteresis without I/O; `exec` runs a check command with a timeout.

pub mod exec;
pub mod tracker;
