//! The task supervisor: every background task of the head is started through it, and shutdown
//! stops them stage by stage, so that work finishes in an order that loses nothing:
//!
//! 1. [`Stage::Serve`]: request servers (HTTP, DHCP, TFTP, router advertisements) stop taking
//!    new requests;
//! 2. [`Stage::Work`]: periodic work (rebalancing, failover, storage audits, membership);
//! 3. [`Stage::Flush`]: writers of what is only in memory (node status, script outcomes) write
//!    it a last time;
//! 4. [`Stage::Views`]: database follows (in-memory tables);
//! 5. [`Stage::Liveness`]: the liveness keeper, which revokes the head's lease as it ends, so
//!    that other heads see this head gone only once its last status is written.
//!
//! Each stage has its own stop signal; a task gets the receiver of its stage and ends when it
//! turns true. A stage's tasks get [`STAGE_LIMIT`] to end; a task that does not is aborted
//! (logged), and a task that panicked is logged by name.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The order in which tasks stop (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serve,
    Work,
    Flush,
    Views,
    Liveness,
}

const STAGES: [Stage; 5] = [Stage::Serve, Stage::Work, Stage::Flush, Stage::Views, Stage::Liveness];

/// Lowercase, for logs (`stage=flush`).
impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Serve => "serve",
            Stage::Work => "work",
            Stage::Flush => "flush",
            Stage::Views => "views",
            Stage::Liveness => "liveness",
        })
    }
}

/// How long one stage's tasks may take to end after their stop signal.
pub const STAGE_LIMIT: Duration = Duration::from_secs(10);

struct Task {
    name: &'static str,
    stage: Stage,
    handle: JoinHandle<()>,
}

/// Owns the head's background tasks (see the module's documentation).
pub struct Supervisor {
    stops: Vec<(Stage, watch::Sender<bool>)>,
    tasks: Mutex<Vec<Task>>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            stops: STAGES.iter().map(|s| (*s, watch::channel(false).0)).collect(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The stop signal of a stage (for work that is not a task of its own, such as a server's
    /// graceful shutdown).
    pub fn stop_signal(&self, stage: Stage) -> watch::Receiver<bool> {
        self.stops.iter().find(|(s, _)| *s == stage).map(|(_, tx)| tx.subscribe()).expect("every stage has a signal")
    }

    /// Starts `f(stop)` as a task of `stage`; `stop` turns true when the stage stops.
    pub fn spawn<F, Fut>(&self, stage: Stage, name: &'static str, f: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(f(self.stop_signal(stage)));
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Tasks that ended by themselves (a server that failed) are forgotten here.
        tasks.retain(|t| !t.handle.is_finished());
        tasks.push(Task { name, stage, handle });
    }

    /// How many tasks run now (inspection and tests).
    pub fn running(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|t| !t.handle.is_finished()).count()
    }

    /// Stops every task, stage by stage, each stage within `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        for (stage, tx) in &self.stops {
            let _ = tx.send(true);
            let mine: Vec<Task> = {
                let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
                let (mine, rest) = std::mem::take(&mut *tasks).into_iter().partition(|t| t.stage == *stage);
                *tasks = rest;
                mine
            };
            let deadline = tokio::time::Instant::now() + limit;
            for mut t in mine {
                match tokio::time::timeout_at(deadline, &mut t.handle).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.is_panic() => tracing::error!(task = %t.name, "task panicked"),
                    Ok(Err(_)) => {}
                    Err(_) => {
                        tracing::warn!(task = %t.name, stage = %stage, secs = limit.as_secs(), "task did not stop in time; aborted");
                        t.handle.abort();
                    }
                }
            }
        }
    }
}

/// Tasks still running when the supervisor goes (a start-up that failed half-way) are aborted,
/// so that a head restarting in place never runs two copies of a task.
impl Drop for Supervisor {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Each stage stops only after every task of the stages before it ended.
    #[tokio::test]
    async fn stages_stop_in_order() {
        let sup = Supervisor::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (stage, name) in [
            (Stage::Liveness, "live"),
            (Stage::Flush, "flush"),
            (Stage::Serve, "serve"),
            (Stage::Views, "views"),
            (Stage::Work, "work"),
        ] {
            let log = log.clone();
            sup.spawn(stage, name, move |mut stop| async move {
                let _ = stop.wait_for(|s| *s).await;
                // A slow final step: the next stage must still wait for it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.lock().unwrap().push(name);
            });
        }
        assert_eq!(sup.running(), 5);
        sup.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*log.lock().unwrap(), ["serve", "work", "flush", "views", "live"]);
        assert_eq!(sup.running(), 0);
    }

    /// Dropping the supervisor aborts what runs.
    #[tokio::test]
    async fn dropping_aborts() {
        let sup = Supervisor::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        sup.spawn(Stage::Work, "holder", move |_stop| async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(sup);
        // The task's sender goes with the aborted task.
        assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().is_none());
    }

    /// A task that ignores its stop signal is aborted after the limit; later stages still stop.
    #[tokio::test]
    async fn a_stuck_task_is_aborted() {
        let sup = Supervisor::new();
        let ended = Arc::new(Mutex::new(false));
        sup.spawn(Stage::Work, "stuck", |_stop| async move {
            std::future::pending::<()>().await;
        });
        let e = ended.clone();
        sup.spawn(Stage::Liveness, "live", move |mut stop| async move {
            let _ = stop.wait_for(|s| *s).await;
            *e.lock().unwrap() = true;
        });
        sup.shutdown(Duration::from_millis(50)).await;
        assert!(*ended.lock().unwrap());
        assert_eq!(sup.running(), 0);
    }
}
