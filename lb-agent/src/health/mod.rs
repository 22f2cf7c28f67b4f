//! Health checking, shared by real-server checks and VRRP track scripts.
//!
//! - `tracker`: rise/fall hysteresis, without I/O;
//! - `tcp`, `exec`, `mysql`: the kinds of check; `failure`: the server's failure or the
//!   agent's own;
//! - `gtid`: MariaDB and MySQL GTID positions, for the `caught-up` failback;
//! - `monitor`: the table of distinct checks, results through the trackers, without I/O;
//! - `follow`: replicas re-pointed to the server that has the writes, when safe, without
//!   I/O;
//! - `risk`: whether a writer change may lose transactions, without I/O;
//! - `switchover`: a planned move of the writes to the sorry server, without I/O;
//! - `verdict`: what the checks, roles and failback gates make of each service, without I/O;
//! - `state`: the daemon's view of all that, fed with reports and time, returning the MySQL
//!   side effects (fence, handover) as actions, without I/O;
//! - `runner`: the tasks: checks, and the actions of `state`.

pub mod exec;
pub mod failure;
pub mod follow;
pub mod gtid;
pub mod monitor;
pub mod mysql;
pub mod risk;
pub mod runner;
pub mod state;
pub mod switchover;
pub mod tcp;
pub mod tracker;
pub mod verdict;
