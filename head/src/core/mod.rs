//! The head's core: what every capability builds on.
pub mod db;
pub mod follow;
pub mod heads;
pub mod http;
pub mod schema;
pub mod supervisor;
pub mod view;

/// Seconds since the Unix epoch (0 if the clock is before it), for record timestamps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
