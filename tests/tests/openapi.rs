//! The OpenAPI document against a running head: every method of every route pattern the head
//! serves is in the document, and nothing in the document is missing from the head.

use clusterware_shared::api::path;
use clusterware_tests::Cluster;
use std::collections::BTreeSet;

#[test]
fn the_openapi_document_lists_exactly_what_the_head_serves() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let (status, doc) = h.api("GET", path::OPENAPI, None, None);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true), "{doc}");
    let mut documented = BTreeSet::new();
    for (p, item) in doc["paths"].as_object().expect("paths") {
        for m in item.as_object().unwrap().keys() {
            documented.insert((m.to_uppercase(), p.clone()));
        }
    }
    // Every method of every pattern, asked with the credential, path parameters that name
    // nothing and a body that is not what any route takes, so that nothing is changed: a route
    // answers (400, 404 for the missing thing, ...), a path without that method 405, no route
    // the JSON 404 "no such endpoint". (Asked without a credential, an admin path answers 401
    // to every method.) `leave` and `recover` take no body and would act: they are only asked
    // whether their path is routed; so is the console's update stream, which never ends.
    let acts = [path::CLUSTER_LEAVE, path::CLUSTER_RECOVER, path::CONSOLE_UPDATES];
    let mut served = BTreeSet::new();
    let not_a_request = serde_json::json!("not an object");
    for p in path::ALL {
        let filled: String =
            p.split('/').map(|s| if s.starts_with('{') { "no-such-thing" } else { s }).collect::<Vec<_>>().join("/");
        for m in ["GET", "POST", "PUT", "DELETE"] {
            let (status, body) = if acts.contains(p) {
                if !documented.contains(&(m.to_string(), p.to_string())) {
                    continue;
                }
                h.api(m, &filled, None, None)
            } else {
                h.api(m, &filled, Some(&c.token), Some(&not_a_request))
            };
            let unrouted = status == 405 || (status == 404 && body["message"] == "no such endpoint");
            if !unrouted {
                served.insert((m.to_string(), p.to_string()));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in the OpenAPI document: {undocumented:?}");
    assert!(unserved.is_empty(), "in the OpenAPI document but not served: {unserved:?}");
    assert!(served.len() > 60, "{served:?}");
    // And an unknown path is told apart (the check above can fail).
    assert_eq!(h.api("GET", "/no-such-thing", None, None).1["message"], "no such endpoint");
}
