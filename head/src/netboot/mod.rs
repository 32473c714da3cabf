//! Network boot: DHCP answers from memory, iPXE binaries over TFTP, IPv6 router advertisements.

pub mod dhcp;
pub mod ra;
pub mod routes;
pub mod tftp;
