//! Log lines about what remote parties keep doing (refused requests, malformed packets), in
//! bounded number and memory, whatever the network sends.
//!
//! Each subject (a MAC, an address, a kind of refusal) is logged at most once per period, and
//! all subjects together at most [`BUDGET`] lines a minute: past that, refusals are only
//! counted, and the next line logged after the minute says how many were left out. A flood of
//! distinct subjects clears the table rather than growing it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a minute, all subjects together.
pub const BUDGET: u32 = 30;
/// Subjects remembered at once.
const SUBJECTS: usize = 10_000;
const MINUTE: Duration = Duration::from_secs(60);

struct State {
    last: HashMap<String, Instant>,
    window: Instant,
    logged: u32,
    left_out: u64,
}

/// See the module's documentation.
pub struct Complaints(Mutex<State>);

impl Default for Complaints {
    fn default() -> Self {
        Complaints(Mutex::new(State { last: HashMap::new(), window: Instant::now(), logged: 0, left_out: 0 }))
    }
}

impl Complaints {
    /// Runs `f` (a log line) unless one ran for `key` less than a minute ago or the budget of
    /// the minute is spent.
    pub fn complain(&self, key: String, f: impl FnOnce()) {
        self.complain_every(key, MINUTE, f)
    }

    /// [`Complaints::complain`] with a period of `every` for this subject.
    pub fn complain_every(&self, key: String, every: Duration, f: impl FnOnce()) {
        let left_out = {
            let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if matches!(s.last.get(&key), Some(t) if now.duration_since(*t) < every) {
                return;
            }
            if now.duration_since(s.window) >= MINUTE {
                s.window = now;
                s.logged = 0;
            }
            if s.logged >= BUDGET {
                s.left_out += 1;
                return;
            }
            s.logged += 1;
            if s.last.len() >= SUBJECTS {
                s.last.clear();
            }
            s.last.insert(key, now);
            std::mem::take(&mut s.left_out)
        };
        if left_out > 0 {
            tracing::warn!(left_out, "{left_out} more refusals were not logged (at most {BUDGET} lines a minute)");
        }
        f();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn once_per_subject_and_a_budget_for_all() {
        let c = Complaints::default();
        let n = Cell::new(0);
        for _ in 0..5 {
            c.complain("same".into(), || n.set(n.get() + 1));
        }
        assert_eq!(n.get(), 1, "one subject logs once a minute");
        for i in 0..10_000 {
            c.complain(format!("mac {i}"), || n.set(n.get() + 1));
        }
        assert_eq!(n.get(), BUDGET, "distinct subjects share the budget");
        let s = c.0.lock().unwrap();
        assert_eq!(s.left_out, 10_000 - u64::from(BUDGET) + 1);
        assert!(s.last.len() <= SUBJECTS);
    }

    #[test]
    fn the_next_minute_logs_again_and_says_what_was_left_out() {
        let c = Complaints::default();
        for i in 0..BUDGET + 7 {
            c.complain(format!("k{i}"), || {});
        }
        let mut s = c.0.lock().unwrap();
        s.window = s.window.checked_sub(MINUTE).expect("a minute after boot");
        drop(s);
        let n = Cell::new(0);
        c.complain("later".into(), || n.set(1));
        assert_eq!(n.get(), 1);
        assert_eq!(c.0.lock().unwrap().left_out, 0, "the count was reported with the line");
    }
}
