//! Health checking, shared by real-server checks and VRRP track scripts.
//!
//! - `tracker`: rise/fall hysteresis, without I/O;
//! - `tcp`, `exec`, `mysql`: the kinds of check;
//! - `gtid`: MariaDB and MySQL GTID positions, for the `caught-up` failback;
//! - `monitor`: one task per distinct check, results through the trackers;
//! - `verdict`: what the checks, roles and failback gates make of each service, without I/O;
//! - `state`: the daemon's view of all that, fed with reports and time.

pub mod exec;
pub mod gtid;
pub mod monitor;
pub mod mysql;
pub mod state;
pub mod tcp;
pub mod tracker;
pub mod verdict;
