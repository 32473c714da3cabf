//! Calls to the other heads, through the one API client (`clusterware-client`): a client per
//! head URL, kept so that connections are reused, each with the admin token and the timeouts of
//! the capability that calls.

use clusterware_client::{Client, Config, Timeouts};
use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many clients are kept (head URLs come from the database and the peers file;
/// a cluster has a handful of heads, so more means stale URLs, and the table starts afresh).
const MAX_KEPT: usize = 64;

/// Clients of the other heads for one purpose (see the module's documentation).
pub struct Peers {
    /// The admin token; `None` for the endpoints that need none (boot file contents).
    token: Option<String>,
    timeouts: Timeouts,
    clients: Mutex<HashMap<String, Client>>,
}

impl Peers {
    pub fn new(token: Option<&str>, timeouts: Timeouts) -> Peers {
        Peers { token: token.map(str::to_string), timeouts, clients: Mutex::new(HashMap::new()) }
    }

    /// The client of the head at `base` (`https://HOST:PORT`, trusting the cluster CA).
    pub fn to(&self, base: &str) -> Result<Client, clusterware_client::Error> {
        let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = c.get(base) {
            return Ok(client.clone());
        }
        if c.len() >= MAX_KEPT {
            c.clear();
        }
        let mut cfg = Config::new(base).timeouts(self.timeouts);
        if let Some(t) = &self.token {
            cfg = cfg.token(t);
        }
        if let Some(ca) = crate::core::tls::cluster_ca() {
            cfg = cfg.ca_pem(ca);
        }
        let client = Client::new(cfg)?;
        c.insert(base.to_string(), client.clone());
        Ok(client)
    }
}

/// [`Timeouts::secs`], with connecting cut to at most 3 s (a peer on the same network answers
/// at once or not at all).
pub fn timeouts(secs: u64) -> Timeouts {
    let t = Timeouts::secs(secs);
    Timeouts { connect: t.connect.min(std::time::Duration::from_secs(3)), ..t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_head_and_a_bounded_table() {
        assert!(Peers::new(Some("t"), timeouts(5)).to("http://10.0.0.1:80").is_err(), "a token over plain http");
        let p = Peers::new(None, timeouts(5));
        let a = p.to("http://10.0.0.1:80").unwrap();
        assert_eq!(a.base(), "http://10.0.0.1:80");
        p.to("http://10.0.0.1:80").unwrap();
        assert_eq!(p.clients.lock().unwrap().len(), 1);
        for i in 0..(MAX_KEPT + 5) {
            p.to(&format!("http://10.0.1.{}:80", i % 250)).unwrap();
        }
        assert!(p.clients.lock().unwrap().len() <= MAX_KEPT);
        assert!(p.to("ftp://x").is_err());
    }
}
