//! Pool logic without I/O: Maglev tables and the desired state of the data plane.

pub mod desired;
pub mod failback;
pub mod ids;
pub mod maglev;
