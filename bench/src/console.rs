//! The web console's node page with many nodes, in headless chromium (the tests' WebDriver
//! client): from a reload to the rows drawn, against fetching the same data without a browser.

use crate::{Report, secs};
use clusterware_shared::agent::StatusQuery;
use clusterware_tests::Cluster;
use clusterware_tests::webdriver::Browser;
use std::time::{Duration, Instant};

/// The bound `tests/tests/console.rs` states for 10,000 nodes.
const TEST_BOUND_SECS: u64 = 10;

pub fn bench_console(r: &mut Report, nodes: usize) {
    let c = Cluster::solo();
    let h = &c.heads[0];
    h.cli("scyld-nodectl", &["create", "--count", &nodes.to_string(), "mac=02:01:00:00:00:00", "ip=10.160.0.1"]).ok();
    let token = h.cli("scyld-clusterctl", &["tokens", "create", "bench"]).ok().trim().to_string();
    let b = Browser::start();
    b.console_login(&h.url(), &token);
    b.click("button[data-tab=nodes]");
    let mut page = Duration::MAX;
    for _ in 0..3 {
        page = page.min(b.console_node_page_load(nodes));
    }
    drop(b);
    // The peer: the node list and the status the page fetches, through the typed client.
    let client = clusterware_client::BlockingClient::new(
        clusterware_client::Config::new(&h.url()).ca_pem(&h.ca()).token(&token).timeout_secs(60),
    )
    .expect("client");
    let mut data = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let n = client.nodes().expect("nodes");
        let s = client.node_status(&StatusQuery::default()).expect("status");
        data = data.min(t.elapsed());
        assert_eq!((n.nodes.len(), s.nodes.len()), (nodes, nodes));
    }
    r.section(
        "Web console: the node page",
        "make bench (target/release/cw-bench)",
        &format!(
            "{nodes} nodes on a solo head; headless chromium (Debian `chromium` driven by `chromedriver` over WebDriver) \
             reloads the console's node page with a token in its tab, until every node is in the page's table and the \
             visible rows are drawn (best of 3). Peer: fetching the same node list and status through the typed API \
             client, without a browser (best of 3); ratio = data time / page time (the share of the page's time that \
             is the data). `tests/tests/console.rs` asserts the page within {TEST_BOUND_SECS} s."
        ),
    );
    r.table(
        &["measurement", "console page", "data alone (peer)", "ratio"],
        vec![vec![
            format!("load {nodes} nodes"),
            secs(page),
            secs(data),
            format!("{:.2}", data.as_secs_f64() / page.as_secs_f64()),
        ]],
    );
}
