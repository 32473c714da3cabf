//! The web console: one page, one script and one style sheet, embedded in the binary and served
//! by every head at `/console/` (HTTPS only), and the live-update stream the page reads.
//!
//! The page and its assets carry no data and need no credential. Everything the page shows
//! comes from the JSON API (`/api/v1/...`) with the token the administrator typed into its login
//! form, and every action it offers is an existing API call: the console is a client of the API
//! like the CLIs, not a second way into the database.
//!
//! Live updates: `GET /api/v1/console/updates` (admin credential) is a server-sent-events stream
//! that says *what* changed (`heads`, `nodes`, `status`) and never the data itself; the page
//! then refetches that part. Changes come from the watch-backed tables the head keeps anyway
//! (the cluster view's head and liveness mirrors, the node table, the status records), so an
//! open console costs no database reads. Events are coalesced (one every [`COALESCE`] at most),
//! a comment keeps idle streams open through proxies ([`KEEP_ALIVE`]), a head holds at most
//! [`MAX_STREAMS`] streams (503 beyond), and every stream ends when the head stops serving.

pub mod routes;

use crate::agent_channel::Hub;
use crate::core::Ctx;
use crate::core::complaints::Complaints;
use crate::core::supervisor::Stage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Update streams one head holds open at once.
pub const MAX_STREAMS: usize = 32;
/// Shortest time between two update events of one stream.
pub const COALESCE: Duration = Duration::from_millis(400);
/// Longest silence on a stream: a comment line is sent then.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the console's stream needs.
pub struct Console {
    pub hub: Arc<Hub>,
    /// Places for open update streams.
    streams: Arc<Semaphore>,
    /// Turns true when the head stops serving (the supervisor's `Serve` stage).
    stop: watch::Receiver<bool>,
    complaints: Complaints,
    /// The credential check of the API, asked again before each event: a stream whose token
    /// was revoked ends (and the page, reconnecting, returns to its login form).
    creds: crate::core::http::Credentials,
    tokens: crate::core::tokens::Tokens,
}

/// Serves the console's page and its update stream.
pub fn start(ctx: &Ctx, hub: &Arc<Hub>) {
    let console = Arc::new(Console {
        hub: hub.clone(),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        stop: ctx.sup.stop_signal(Stage::Serve),
        complaints: Complaints::default(),
        creds: ctx.creds.clone(),
        tokens: ctx.tokens.clone(),
    });
    ctx.serve(routes::routes(console));
    ctx.serve_site(routes::site());
}
