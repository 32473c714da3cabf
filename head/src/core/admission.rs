//! Admission control for requests that cost a head more than an answer: at most `limit` of them
//! run at once. A request past the limit waits in line for a slot that a finishing request hands
//! straight on (first come, first served: no slot sits idle while clients are waiting out their
//! backoff), at most `wait` and with at most `line` others; then it is refused, before it did
//! anything, and its client is answered 503 with a `Retry-After` hint
//! ([`busy`](crate::core::http::busy)). A head thus never starts work it has no room to finish in
//! the time its client waits.
//!
//! Two capabilities use it: `storage` for root images in a boot storm (`local_files.
//! max_transfers` at once, waiting at most [`QUEUE_WAIT`], all transfers together paced to
//! `local_files.max_rate`) and `registry` for enrollments (a rack booting at once trades its
//! tokens one slot at a time, so that each trade finishes well within the agent's limit).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The seconds a refused client is told to wait before it asks this head again.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The longest a request past the limit waits in line for a slot, unless told otherwise
/// ([`Admission::with_line`]).
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);

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

/// A place in line: the count of waiting requests goes down when it is dropped.
struct InLine<'a>(&'a AtomicU64);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Admission {
    limit: u32,
    slots: std::sync::Arc<Semaphore>,
    bucket: Option<Bucket>,
    refused: AtomicU64,
    /// Requests waiting in line for a slot now.
    waiting: AtomicU64,
    /// At most this many wait in line.
    line: u64,
    /// The longest one waits.
    wait: Duration,
}

/// One admitted request; its slot is free again when this is dropped (for a transfer: the
/// response body ended, or the node went away).
pub struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// `limit` requests at once (0: no limit), `rate` bytes per second for all of them (0: no
    /// limit); past the limit, at most `limit` requests wait in line, each at most [`QUEUE_WAIT`].
    pub fn new(limit: u32, rate: u64) -> Admission {
        Admission::with_line(limit, rate, limit, QUEUE_WAIT)
    }

    /// As [`new`](Admission::new), with at most `line` requests waiting, each at most `wait`.
    pub fn with_line(limit: u32, rate: u64, line: u32, wait: Duration) -> Admission {
        Admission {
            limit,
            slots: std::sync::Arc::new(Semaphore::new(if limit == 0 { 0 } else { limit as usize })),
            bucket: (rate > 0)
                .then(|| Bucket { rate: rate as f64, state: Mutex::new((rate as f64 / 4.0, Instant::now())) }),
            refused: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            line: u64::from(line),
            wait,
        }
    }

    /// A slot for one request, or `None` (counted) when every slot stayed taken for the longest
    /// wait or the line was full. Slots go to waiting requests in their order.
    pub async fn admit(&self) -> Option<Permit> {
        if self.limit == 0 {
            return Some(Permit { _slot: None });
        }
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(Permit { _slot: Some(p) });
        }
        let refuse = || {
            self.refused.fetch_add(1, Ordering::Relaxed);
            None
        };
        // Out of line when this ends, however it ends: a client that goes away while waiting
        // drops this future.
        let in_line = InLine(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.line {
            drop(in_line);
            return refuse();
        }
        let got = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        drop(in_line);
        match got {
            Ok(Ok(p)) => Some(Permit { _slot: Some(p) }),
            _ => refuse(),
        }
    }

    /// Requests waiting in line for a slot now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Requests admitted and not finished now.
    pub fn active(&self) -> u64 {
        if self.limit == 0 { 0 } else { (self.limit as usize).saturating_sub(self.slots.available_permits()) as u64 }
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// One chunk of a transfer under `local_files.max_rate`: waits out `owed` (what the
    /// transfer's previous chunk cost), then charges the `n` bytes about to be handed over and
    /// returns what they cost, to pass with the next chunk. A transfer's first chunk thus leaves
    /// at once: a node whose transfer is cut short (its head died) always has bytes to resume
    /// from, and time to first byte does not grow with the number of transfers.
    pub async fn pace(&self, owed: Duration, n: usize) -> Duration {
        let Some(b) = &self.bucket else { return Duration::ZERO };
        if !owed.is_zero() {
            tokio::time::sleep(owed).await;
        }
        b.take(n)
    }

    pub fn paced(&self) -> bool {
        self.bucket.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_taken_waited_for_and_given_back() {
        let a = std::sync::Arc::new(Admission::new(2, 0));
        let p1 = a.admit().await.unwrap();
        let _p2 = a.admit().await.unwrap();
        // Full: a request waits its time in line, then is refused.
        let t = tokio::time::Instant::now();
        assert!(a.admit().await.is_none());
        assert_eq!(t.elapsed(), QUEUE_WAIT);
        assert_eq!((a.active(), a.refused(), a.waiting()), (2, 1, 0));
        // A slot given back goes to the first in line, at once.
        let (first, second) = (a.clone(), a.clone());
        let w1 = tokio::spawn(async move { first.admit().await.map(|p| (p, tokio::time::Instant::now())) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let w2 = tokio::spawn(async move { second.admit().await.is_some() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.waiting(), 2);
        // The line holds at most `limit` requests: the next one is refused without waiting.
        let t = tokio::time::Instant::now();
        assert!(a.admit().await.is_none());
        assert_eq!(t.elapsed(), Duration::ZERO);
        let freed = tokio::time::Instant::now();
        drop(p1);
        let (_kept, at) = w1.await.unwrap().expect("the first in line got a slot");
        assert_eq!(at, freed, "the first in line got the slot as it was freed");
        assert!(!w2.await.unwrap(), "the second waited out its time");
        assert_eq!((a.refused(), a.waiting()), (3, 0));
        let unlimited = Admission::new(0, 0);
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(unlimited.admit().await.unwrap());
        }
        assert_eq!((held.len(), unlimited.refused()), (1000, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_line_waits_longer() {
        let a = std::sync::Arc::new(Admission::with_line(1, 0, 3, Duration::from_secs(10)));
        let held = a.admit().await.unwrap();
        // Three wait (more than the one slot), the fourth is refused at once.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.admit().await.map(|_| tokio::time::Instant::now()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.waiting(), 3);
        let t = tokio::time::Instant::now();
        assert!(a.admit().await.is_none());
        assert_eq!(t.elapsed(), Duration::ZERO);
        // Past the default wait, the line still holds; a slot freed at 5 s goes to the first.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(a.waiting(), 3);
        drop(held);
        let mut got = Vec::new();
        for w in waiters {
            got.push(w.await.unwrap());
        }
        // The first got the slot at once and dropped it, and so on down the line.
        assert!(got.iter().all(Option::is_some), "{got:?}");
        assert_eq!((a.refused(), a.waiting(), a.active()), (1, 0, 0));
        // A client that goes away while waiting leaves the line.
        let held = a.admit().await.unwrap();
        let gone = {
            let a = a.clone();
            tokio::spawn(async move { a.admit().await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.waiting(), 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(a.waiting(), 0);
        drop(held);
    }

    #[tokio::test]
    async fn the_rate_holds_for_all_transfers_together() {
        let a = std::sync::Arc::new(Admission::new(0, 4 << 20));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let mut owed = Duration::ZERO;
                for _ in 0..8 {
                    owed = a.pace(owed, 64 << 10).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 2 MiB at 4 MiB/s with a burst of 1 MiB, each transfer's last 64 KiB handed over
        // before its cost is waited out: at least (2 - 1 - 0.25) MiB / 4 MiB/s.
        assert!(started.elapsed() >= Duration::from_millis(180), "{:?}", started.elapsed());
        // The bucket is owed now; a new transfer's first chunk still leaves at once, and what
        // it cost is waited out before its second.
        let t = Instant::now();
        let owed = a.pace(Duration::ZERO, 64 << 10).await;
        assert!(t.elapsed() < Duration::from_millis(20) && !owed.is_zero(), "{:?} {owed:?}", t.elapsed());
        a.pace(owed, 64 << 10).await;
        assert!(t.elapsed() >= owed, "{:?} {owed:?}", t.elapsed());
    }
}
