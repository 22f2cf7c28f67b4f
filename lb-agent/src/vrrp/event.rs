//! What the VRRP background tasks (socket readers, track scripts) report to the daemon's
//! loop, which hands it to the driver.

use super::packet::Received;

pub enum Event {
    /// A received advert: instance name, IP facts, VRRP message.
    Advert(String, Received, Vec<u8>),
    /// A track script ran: script name, exit 0 or not.
    Script(String, bool),
}
