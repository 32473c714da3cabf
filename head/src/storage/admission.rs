//! Admission control for the transfers a boot storm makes: at most `local_files.max_transfers`
//! root images (any file that is not a kernel or initramfs image: firmware cannot wait and try
//! again, the agent can) go to nodes at once, all of them together at most
//! `local_files.max_rate` MiB/s. A request past the limit is answered at once (503 with a
//! `Retry-After` hint) before anything is opened or read, so a head never starts a transfer it has
//! no room for; the agent then asks another head, or waits with jittered, capped backoff.
//! Requests from other heads (`peer=1`) and `HEAD` requests are not counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The seconds a refused node is told to wait before it asks this head again.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A token bucket: bytes per second, with a burst of a quarter second's worth.
struct Bucket {
    rate: f64,
    /// Bytes available (negative: owed) and when that was computed.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// How long the caller must wait before sending `n` bytes (the bytes are taken now).
    fn take(&self, n: usize) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = self.rate / 4.0;
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(burst);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-s.0 / self.rate) }
    }
}

pub struct Admission {
    limit: u32,
    slots: std::sync::Arc<Semaphore>,
    bucket: Option<Bucket>,
    refused: AtomicU64,
}

/// One admitted transfer; its slot is free again when this is dropped (the response body ended,
/// or the node went away).
pub struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// `limit` transfers at once (0: no limit), `rate` bytes per second for all of them (0: no
    /// limit).
    pub fn new(limit: u32, rate: u64) -> Admission {
        Admission {
            limit,
            slots: std::sync::Arc::new(Semaphore::new(if limit == 0 { 0 } else { limit as usize })),
            bucket: (rate > 0)
                .then(|| Bucket { rate: rate as f64, state: Mutex::new((rate as f64 / 4.0, Instant::now())) }),
            refused: AtomicU64::new(0),
        }
    }

    /// A slot for one transfer, or `None` (counted) when every slot is taken.
    pub fn admit(&self) -> Option<Permit> {
        if self.limit == 0 {
            return Some(Permit { _slot: None });
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(Permit { _slot: Some(p) }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Transfers in progress now.
    pub fn active(&self) -> u64 {
        if self.limit == 0 { 0 } else { (self.limit as usize).saturating_sub(self.slots.available_permits()) as u64 }
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits until `n` more bytes may be sent under `local_files.max_rate`.
    pub async fn pace(&self, n: usize) {
        if let Some(b) = &self.bucket {
            let d = b.take(n);
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
    }

    pub fn paced(&self) -> bool {
        self.bucket.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_and_given_back() {
        let a = Admission::new(2, 0);
        let p1 = a.admit().unwrap();
        let _p2 = a.admit().unwrap();
        assert!(a.admit().is_none());
        assert_eq!((a.active(), a.refused()), (2, 1));
        drop(p1);
        assert!(a.admit().is_some());
        let unlimited = Admission::new(0, 0);
        let held: Vec<_> = (0..1000).map(|_| unlimited.admit().unwrap()).collect();
        assert_eq!((held.len(), unlimited.refused()), (1000, 0));
    }

    #[tokio::test]
    async fn the_rate_holds_for_all_transfers_together() {
        let a = std::sync::Arc::new(Admission::new(0, 4 << 20));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..8 {
                    a.pace(64 << 10).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 2 MiB at 4 MiB/s with a burst of 1 MiB: at least a quarter second.
        assert!(started.elapsed() >= Duration::from_millis(240), "{:?}", started.elapsed());
    }
}
