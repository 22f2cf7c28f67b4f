//! What `status` and the metrics show of a VRRP instance.

use std::net::IpAddr;

use super::instance::State;

/// What `status` shows of one instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RouterStatus {
    pub name: String,
    pub state: StateName,
    /// The current master's address, as far as this host knows.
    #[serde(default)]
    pub master: Option<IpAddr>,
    pub priority: u8,
    /// The virtual addresses it holds while master.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub became_master: u64,
    pub discards: Vec<(String, u64)>,
}

/// An instance's state as `status` and the metrics show it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StateName {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            StateName::Initialize => "initialize",
            StateName::Backup => "backup",
            StateName::Master => "master",
            StateName::Fault => "fault",
        })
    }
}

impl From<State> for StateName {
    fn from(s: State) -> StateName {
        match s {
            State::Initialize => StateName::Initialize,
            State::Backup => StateName::Backup,
            State::Master => StateName::Master,
            State::Fault => StateName::Fault,
        }
    }
}
