//! The node registry: compute nodes in the cluster database.
//!
//! Keys: `nodes/<uid>` holds the node (JSON [`Node`]); `index/mac/<mac>`, `index/ip/<ip>` and
//! `index/node/<index>` hold the uid that owns each MAC, IP and index. Every change claims the
//! index keys it needs with "key absent" compares inside the same transaction that writes the
//! node, so two heads racing for one MAC cannot both win, whatever the backend.
//!
//! Requests larger than one transaction may hold (etcd's `--max-txn-ops`) are split into
//! several. Input is validated against one snapshot before anything is written, so bad input
//! writes nothing; a creation that loses a race in a later transaction removes what its earlier
//! ones wrote.

pub mod routes;

pub mod cache;
pub mod identity;
pub mod refs;

use crate::core::db::{Compare, Database, KeyValue, Piece, Txn, TxnOp, batch, commit_all, undo_puts};
use crate::core::schema;
use crate::core::schema::NODES;
use crate::core::unix_now as now;
use clusterware_shared::api::{NODE_FIELDS, Node, NodeSpec};
use clusterware_shared::ids::{MacAddr, ipv4_offset, node_name, validate_attr, validate_attr_key};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

/// Largest number of nodes one request may create.
pub const MAX_BATCH: usize = 100_000;

/// The index keys a node owns.
fn claims(n: &Node) -> Vec<String> {
    let mut c: Vec<String> = n.macs.iter().map(schema::mac_index).collect();
    c.push(schema::ip_index(&n.ip));
    c.push(schema::node_index(n.index));
    c
}

/// What an index key stands for, for messages.
fn describe(claim: &str) -> String {
    if let Some(m) = claim.strip_prefix(schema::MAC_INDEX) {
        format!("MAC {m}")
    } else if let Some(ip) = claim.strip_prefix(schema::IP_INDEX) {
        format!("IP {ip}")
    } else if let Some(i) = claim.strip_prefix(schema::NODE_INDEX) {
        format!("index {i} (name n{i})")
    } else {
        claim.to_string()
    }
}

/// See [`RecordError`](crate::core::error::RecordError).
pub type RegistryError = crate::core::error::RecordError;

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

fn decode(kv: &KeyValue) -> Result<Node> {
    serde_json::from_slice(&kv.value).map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), reason: e.to_string() })
}

fn encode(n: &Node) -> Vec<u8> {
    serde_json::to_vec(n).expect("a Node always serialises")
}

/// Every node, by index, with each record's revision.
pub async fn list_with_revisions(db: &Database) -> Result<Vec<(Node, i64)>> {
    let (kvs, _) = db.range(NODES).await?;
    let mut nodes = kvs.iter().map(|kv| Ok((decode(kv)?, kv.mod_revision))).collect::<Result<Vec<_>>>()?;
    nodes.sort_by_key(|(n, _)| n.index);
    Ok(nodes)
}

/// The node with this uid, if any.
pub async fn get(db: &Database, uid: &str) -> Result<Option<Node>> {
    match db.get(&schema::node(uid)).await? {
        Some(kv) => Ok(Some(decode(&kv)?)),
        None => Ok(None),
    }
}

/// Every node, by index.
pub async fn list(db: &Database) -> Result<Vec<Node>> {
    Ok(list_with_revisions(db).await?.into_iter().map(|(n, _)| n).collect())
}

fn new_uid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Tells who owns the first of `keys` that is taken by someone other than `me`.
async fn find_conflict(db: &Database, keys: &[String], me: &HashMap<String, String>) -> Result<Option<String>> {
    for k in keys {
        if let Some(kv) = db.get(k).await? {
            let owner = String::from_utf8_lossy(&kv.value).to_string();
            if me.get(k) != Some(&owner) {
                let name = match db.get(&schema::node(&owner)).await? {
                    Some(n) => decode(&n)?.name,
                    None => format!("node {owner}"),
                };
                return Ok(Some(format!("{} is already used by {name}", describe(k))));
            }
        }
    }
    Ok(None)
}

fn validate_attrs(attrs: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in attrs {
        if NODE_FIELDS.contains(&k.as_str()) {
            return Err(RegistryError::Invalid(format!("{k} is a node field, not an attribute")));
        }
        validate_attr(k, v).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// Creates nodes: all of them, or none. Missing indices take the lowest free ones; missing IPs
/// continue after the highest IP in use. Attributes naming a boot config, head or secret that
/// does not exist are refused unless `force` ([`refs`]).
pub async fn create(db: &Database, specs: Vec<NodeSpec>, force: bool) -> Result<Vec<Node>> {
    if specs.is_empty() {
        return Err(RegistryError::Invalid("no nodes to create".into()));
    }
    if specs.len() > MAX_BATCH {
        return Err(RegistryError::Invalid(format!("{} nodes in one request; at most {MAX_BATCH}", specs.len())));
    }
    let existing = list(db).await?;
    let mut owner: HashMap<String, String> = HashMap::new();
    for n in &existing {
        for c in claims(n) {
            owner.insert(c, n.name.clone());
        }
    }
    // Explicit values first, so that allocation steps around them.
    let mut taken = |key: String, who: String| -> Result<()> {
        match owner.get(&key) {
            Some(o) => Err(RegistryError::Conflict(format!("{} is already used by {o}", describe(&key)))),
            None => {
                owner.insert(key, who);
                Ok(())
            }
        }
    };
    for (i, s) in specs.iter().enumerate() {
        let who = format!("node {} of this request", i + 1);
        if s.macs.is_empty() {
            return Err(RegistryError::Invalid(format!("{who} has no MAC address")));
        }
        validate_attrs(&s.attributes)?;
        for m in &s.macs {
            taken(schema::mac_index(m), who.clone())?;
        }
        if let Some(ip) = s.ip {
            taken(schema::ip_index(&ip), who.clone())?;
        }
        if let Some(ix) = s.index {
            taken(schema::node_index(ix), who.clone())?;
        }
    }
    let named: Vec<(&str, &str)> =
        specs.iter().flat_map(|s| s.attributes.iter()).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    refs::check(db, &named, force).await?;
    drop(named);
    let mut next_index = 0u32;
    let mut last_ip: Option<Ipv4Addr> = existing.iter().map(|n| n.ip).chain(specs.iter().filter_map(|s| s.ip)).max();
    let created = now();
    let mut nodes = Vec::with_capacity(specs.len());
    for s in specs {
        let index = match s.index {
            Some(i) => i,
            None => {
                while owner.contains_key(&schema::node_index(next_index)) {
                    next_index = next_index
                        .checked_add(1)
                        .ok_or_else(|| RegistryError::Invalid("no free node index left".into()))?;
                }
                owner.insert(schema::node_index(next_index), "this request".into());
                next_index
            }
        };
        let ip = match s.ip {
            Some(ip) => ip,
            None => {
                let mut cand = last_ip.ok_or_else(|| {
                    RegistryError::Invalid(
                        "ip= is required for the first node (there is no node IP to continue from)".into(),
                    )
                })?;
                loop {
                    cand = ipv4_offset(cand, 1).map_err(|e| RegistryError::Invalid(e.to_string()))?;
                    if !owner.contains_key(&schema::ip_index(&cand)) {
                        break;
                    }
                }
                owner.insert(schema::ip_index(&cand), "this request".into());
                last_ip = Some(cand);
                cand
            }
        };
        nodes.push(Node {
            uid: new_uid(),
            index,
            name: node_name(index),
            macs: s.macs,
            ip,
            attributes: s.attributes,
            created,
        });
    }

    let pieces = nodes
        .iter()
        .map(|n| {
            let cl = claims(n);
            Piece {
                compares: std::iter::once(Compare::absent(schema::node(&n.uid)))
                    .chain(cl.iter().map(Compare::absent))
                    .collect(),
                ops: std::iter::once(TxnOp::put(schema::node(&n.uid), encode(n)))
                    .chain(cl.into_iter().map(|c| TxnOp::put(c, n.uid.clone())))
                    .collect(),
            }
        })
        .collect();
    let mine: HashMap<String, String> =
        nodes.iter().flat_map(|n| claims(n).into_iter().map(|c| (c, n.uid.clone()))).collect();
    let mut done: Vec<Txn> = Vec::new();
    for txn in batch(pieces, db.max_txn_ops()) {
        let keys: Vec<String> = txn.compares.iter().map(|c| c.key.clone()).collect();
        let result = db.txn(txn.clone()).await;
        let reason = match result {
            Ok(r) if r.succeeded => {
                done.push(txn);
                continue;
            }
            Ok(_) => match find_conflict(db, &keys, &mine).await {
                Ok(Some(msg)) => RegistryError::Conflict(msg),
                Ok(None) => {
                    RegistryError::Conflict("another head changed the same nodes at the same time; try again".into())
                }
                Err(e) => e,
            },
            Err(e) => RegistryError::Db(e),
        };
        undo_puts(db, &done).await;
        return Err(reason);
    }
    Ok(nodes)
}

/// A parsed `set` request.
struct Changes {
    macs: Option<Vec<MacAddr>>,
    ip: Option<Ipv4Addr>,
    index: Option<u32>,
    attrs: BTreeMap<String, String>,
    clear: Vec<String>,
}

fn parse_changes(n_nodes: usize, set: BTreeMap<String, String>, clear: Vec<String>) -> Result<Changes> {
    let inv = |m: String| RegistryError::Invalid(m);
    if set.is_empty() && clear.is_empty() {
        return Err(inv("nothing to set or clear".into()));
    }
    let mut c = Changes { macs: None, ip: None, index: None, attrs: BTreeMap::new(), clear: Vec::new() };
    for (k, v) in set {
        if NODE_FIELDS.contains(&k.as_str()) && n_nodes > 1 {
            return Err(inv(format!("{k} can be set on one node at a time (it must be unique)")));
        }
        match k.as_str() {
            "mac" => {
                let macs = v
                    .split(',')
                    .map(|m| m.trim().parse::<MacAddr>().map_err(|e| inv(e.to_string())))
                    .collect::<Result<Vec<_>>>()?;
                if macs.iter().collect::<HashSet<_>>().len() != macs.len() {
                    return Err(inv(format!("MAC listed twice in {v:?}")));
                }
                c.macs = Some(macs);
            }
            "ip" => c.ip = Some(v.parse().map_err(|_| inv(format!("malformed IPv4 address {v:?}")))?),
            "index" => c.index = Some(v.parse().map_err(|_| inv(format!("index {v:?} is not a whole number")))?),
            _ => {
                validate_attr(&k, &v).map_err(|e| inv(e.to_string()))?;
                c.attrs.insert(k, v);
            }
        }
    }
    for k in clear {
        if NODE_FIELDS.contains(&k.as_str()) {
            return Err(inv(format!("{k} cannot be cleared (set another value instead)")));
        }
        validate_attr_key(&k).map_err(|e| inv(e.to_string()))?;
        c.clear.push(k);
    }
    Ok(c)
}

/// Looks up nodes by uid in a snapshot; every uid must exist.
fn pick<'a>(all: &'a [(Node, i64)], uids: &[String]) -> Result<Vec<&'a (Node, i64)>> {
    let by_uid: HashMap<&str, &(Node, i64)> = all.iter().map(|e| (e.0.uid.as_str(), e)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for u in uids {
        if !seen.insert(u.as_str()) {
            continue;
        }
        out.push(*by_uid.get(u.as_str()).ok_or_else(|| RegistryError::NotFound(format!("no node with uid {u}")))?);
    }
    Ok(out)
}

const RETRIES: usize = 5;

/// Sets and clears attributes (and `mac`, `ip`, `index` on a single node). Applies to every
/// node or, on bad input, to none. Attributes naming a boot config, head or secret that does
/// not exist are refused unless `force` ([`refs`]).
pub async fn update(
    db: &Database,
    uids: Vec<String>,
    set: BTreeMap<String, String>,
    clear: Vec<String>,
    force: bool,
) -> Result<Vec<Node>> {
    if uids.is_empty() {
        return Err(RegistryError::Invalid("no nodes selected".into()));
    }
    let ch = parse_changes(uids.len(), set, clear)?;
    for attempt in 0..RETRIES {
        let all = list_with_revisions(db).await?;
        let targets = pick(&all, &uids)?;
        if attempt == 0 {
            let named: Vec<(&str, &str)> = ch.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            refs::check(db, &named, force).await?;
        }
        let mut updated = Vec::new();
        let mut pieces = Vec::new();
        let mut mine = HashMap::new();
        for (old, rev) in targets {
            let mut n = old.clone();
            if let Some(m) = &ch.macs {
                n.macs = m.clone();
            }
            if let Some(ip) = ch.ip {
                n.ip = ip;
            }
            if let Some(ix) = ch.index {
                n.index = ix;
                n.name = node_name(ix);
            }
            n.attributes.extend(ch.attrs.clone());
            for k in &ch.clear {
                n.attributes.remove(k);
            }
            let (before, after): (HashSet<String>, HashSet<String>) =
                (claims(old).into_iter().collect(), claims(&n).into_iter().collect());
            let mut p = Piece {
                compares: vec![Compare::unchanged(schema::node(&n.uid), *rev)],
                ops: vec![TxnOp::put(schema::node(&n.uid), encode(&n))],
            };
            for c in after.difference(&before) {
                p.compares.push(Compare::absent(c.clone()));
                p.ops.push(TxnOp::put(c.clone(), n.uid.clone()));
                mine.insert(c.clone(), n.uid.clone());
            }
            for c in before.difference(&after) {
                p.ops.push(TxnOp::delete(c.clone()));
            }
            pieces.push(p);
            updated.push(n);
        }
        // Pre-check new claims against the snapshot for a clear message.
        let new_claims: Vec<String> = mine.keys().cloned().collect();
        if let Some(msg) = find_conflict(db, &new_claims, &mine).await? {
            return Err(RegistryError::Conflict(msg));
        }
        if commit_all(db, pieces).await? {
            return Ok(updated);
        }
        if let Some(msg) = find_conflict(db, &new_claims, &mine).await? {
            return Err(RegistryError::Conflict(msg));
        }
        // A node changed under us: read again and reapply (setting is idempotent).
    }
    Err(RegistryError::Conflict("the nodes kept changing while being updated; try again".into()))
}

/// Deletes nodes and their MAC, IP and index claims.
pub async fn delete(db: &Database, uids: Vec<String>) -> Result<Vec<Node>> {
    if uids.is_empty() {
        return Err(RegistryError::Invalid("no nodes selected".into()));
    }
    let all = list_with_revisions(db).await?;
    let targets: Vec<(Node, i64)> = pick(&all, &uids)?.into_iter().cloned().collect();
    let mut pending = targets.clone();
    for _ in 0..RETRIES {
        let pieces = pending
            .iter()
            .map(|(n, rev)| Piece {
                compares: vec![Compare::unchanged(schema::node(&n.uid), *rev)],
                ops: std::iter::once(TxnOp::delete(schema::node(&n.uid)))
                    .chain(std::iter::once(TxnOp::delete(schema::status(&n.uid))))
                    .chain(claims(n).into_iter().map(TxnOp::delete))
                    .collect(),
            })
            .collect();
        if commit_all(db, pieces).await? {
            return Ok(targets.into_iter().map(|(n, _)| n).collect());
        }
        // Some node changed (or went) meanwhile: delete what is still there, as it is now.
        let now: HashMap<String, (Node, i64)> =
            list_with_revisions(db).await?.into_iter().map(|(n, r)| (n.uid.clone(), (n, r))).collect();
        pending = targets.iter().filter_map(|(n, _)| now.get(&n.uid).cloned()).collect();
        if pending.is_empty() {
            return Ok(targets.into_iter().map(|(n, _)| n).collect());
        }
    }
    Err(RegistryError::Conflict("the nodes kept changing while being deleted; try again".into()))
}

/// Starts the registry: the node table (returned for the capabilities that read nodes) and the
/// node routes.
pub fn start(ctx: &crate::core::Ctx) -> std::sync::Arc<cache::NodeCache> {
    ctx.serve(routes::routes(std::sync::Arc::new(routes::Api { db: ctx.db.clone() })));
    cache::NodeCache::spawn(ctx.db.clone(), ctx.sup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;

    fn spec(mac: &str, ip: Option<&str>) -> NodeSpec {
        NodeSpec { macs: vec![mac.parse().unwrap()], ip: ip.map(|i| i.parse().unwrap()), ..Default::default() }
    }

    async fn db() -> Database {
        Database::Embedded(Embedded::open_in_memory().unwrap())
    }

    #[tokio::test]
    async fn allocates_index_and_ip() {
        let db = db().await;
        let e = create(&db, vec![spec("52:54:00:00:00:01", None)], false).await.unwrap_err();
        assert!(e.to_string().contains("ip= is required"), "{e}");
        let a = create(&db, vec![spec("52:54:00:00:00:01", Some("10.0.0.1")), spec("52:54:00:00:00:02", None)], false)
            .await
            .unwrap();
        assert_eq!((a[0].name.as_str(), a[1].name.as_str()), ("n0", "n1"));
        assert_eq!(a[1].ip.to_string(), "10.0.0.2");
        let mut s = spec("52:54:00:00:00:03", None);
        s.index = Some(7);
        let b = create(&db, vec![s, spec("52:54:00:00:00:04", None)], false).await.unwrap();
        assert_eq!((b[0].index, b[1].index), (7, 2));
        assert_eq!((b[0].ip.to_string(), b[1].ip.to_string()), ("10.0.0.3".into(), "10.0.0.4".into()));
        assert_eq!(list(&db).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn duplicates_write_nothing() {
        let db = db().await;
        create(&db, vec![spec("52:54:00:00:00:01", Some("10.0.0.1"))], false).await.unwrap();
        let (_, rev) = db.range("").await.unwrap();
        let e = create(
            &db,
            vec![spec("52:54:00:00:00:09", Some("10.0.0.9")), spec("52:54:00:00:00:01", Some("10.0.0.5"))],
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RegistryError::Conflict(_)));
        assert_eq!(e.to_string(), "MAC 52:54:00:00:00:01 is already used by n0");
        let e = create(&db, vec![spec("52:54:00:00:00:02", Some("10.0.0.1"))], false).await.unwrap_err();
        assert_eq!(e.to_string(), "IP 10.0.0.1 is already used by n0");
        let e = create(
            &db,
            vec![spec("52:54:00:00:00:02", Some("10.0.0.2")), spec("52:54:00:00:00:02", Some("10.0.0.3"))],
            false,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("node 1 of this request"), "{e}");
        assert_eq!(db.range("").await.unwrap().1, rev, "nothing written");
    }

    #[tokio::test]
    async fn racing_creates_one_wins() {
        let db = db().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                create(&db, vec![spec("52:54:00:00:00:01", Some(&format!("10.0.0.{}", i + 1)))], false).await.is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as u32;
        }
        assert_eq!(wins, 1);
        assert_eq!(db.range("index/mac/").await.unwrap().0.len(), 1);
    }

    /// Attribute names and values with control characters are refused on create and update,
    /// the attribute named, nothing written (node names are `n<index>`, made here, never given).
    #[tokio::test]
    async fn control_characters_in_attributes_are_refused() {
        let db = db().await;
        let n = create(&db, vec![spec("52:54:00:00:00:01", Some("10.0.0.1"))], false).await.unwrap();
        let (_, rev) = db.range("").await.unwrap();
        let set = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let mut s = spec("52:54:00:00:00:02", None);
        s.attributes = set("rack", "r1\u{1b}[2J");
        let e = create(&db, vec![s], false).await.unwrap_err();
        assert!(e.to_string().contains("the value of rack contains the control character U+001B at byte 2"), "{e}");
        for (k, v) in [("rack", "a\nb"), ("rack", "\u{9b}"), ("_boot_config", "c1\r"), ("ra\nck", "x")] {
            let e = update(&db, vec![n[0].uid.clone()], set(k, v), vec![], false).await.unwrap_err();
            assert!(matches!(e, RegistryError::Invalid(_)), "{k:?}={v:?}: {e}");
        }
        assert_eq!(db.range("").await.unwrap().1, rev, "nothing written");
    }

    #[tokio::test]
    async fn update_moves_claims() {
        let db = db().await;
        let n = create(&db, vec![spec("52:54:00:00:00:01", Some("10.0.0.1")), spec("52:54:00:00:00:02", None)], false)
            .await
            .unwrap();
        let set = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        update(&db, vec![n[0].uid.clone()], set("ip", "10.0.0.9"), vec![], false).await.unwrap();
        assert!(db.get("index/ip/10.0.0.1").await.unwrap().is_none());
        assert!(db.get("index/ip/10.0.0.9").await.unwrap().is_some());
        let e = update(&db, vec![n[1].uid.clone()], set("ip", "10.0.0.9"), vec![], false).await.unwrap_err();
        assert_eq!(e.to_string(), "IP 10.0.0.9 is already used by n0");
        let e = update(&db, vec![n[0].uid.clone(), n[1].uid.clone()], set("ip", "10.0.0.20"), vec![], false)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Invalid(_)));
        let both = vec![n[0].uid.clone(), n[1].uid.clone()];
        let (_, rev) = db.range("").await.unwrap();
        let e = update(&db, both.clone(), set("_boot_config", "x"), vec![], false).await.unwrap_err();
        assert!(matches!(e, RegistryError::Invalid(_)) && e.to_string().contains("give --force"), "{e}");
        assert_eq!(db.range("").await.unwrap().1, rev, "nothing written");
        let u = update(&db, both, set("_boot_config", "x"), vec![], true).await.unwrap();
        assert!(u.iter().all(|n| n.attributes["_boot_config"] == "x"));
        let u =
            update(&db, vec![n[1].uid.clone()], set("index", "5"), vec!["_boot_config".into()], false).await.unwrap();
        assert_eq!(u[0].name, "n5");
        assert!(u[0].attributes.is_empty());
        assert!(db.get("index/node/1").await.unwrap().is_none());
        let e = update(&db, vec!["nope".into()], set("a", "b"), vec![], false).await.unwrap_err();
        assert!(matches!(e, RegistryError::NotFound(_)));
        let e = update(&db, vec![n[0].uid.clone()], BTreeMap::new(), vec!["ip".into()], false).await.unwrap_err();
        assert!(e.to_string().contains("cannot be cleared"));
    }

    /// A create naming a boot config, head or secret that does not exist writes nothing unless
    /// forced; one naming existing ones goes through.
    #[tokio::test]
    async fn references_are_checked_on_create() {
        let db = db().await;
        let attrs = |k: &str, v: &str| {
            let mut s = spec("52:54:00:00:00:01", Some("10.0.0.1"));
            s.attributes.insert(k.into(), v.into());
            s
        };
        for (k, v) in [("_boot_config", "base"), ("_preferred_head", "head1"), ("_bmc_pass_ref", "ipmi")] {
            let e =
                create(&db, vec![spec("52:54:00:00:00:02", Some("10.0.0.2")), attrs(k, v)], false).await.unwrap_err();
            assert!(e.to_string().starts_with(&format!("{k}={v} names no ")), "{e}");
            assert!(db.range("").await.unwrap().0.is_empty(), "nothing written");
        }
        db.put(&schema::bootconfig("base"), b"{}".to_vec()).await.unwrap();
        create(&db, vec![attrs("_boot_config", "base")], false).await.unwrap();
        let mut s = spec("52:54:00:00:00:03", None);
        s.attributes.insert("_bmc_pass_ref".into(), "ipmi".into());
        let n = create(&db, vec![s], true).await.unwrap();
        assert_eq!(n[0].attributes["_bmc_pass_ref"], "ipmi");
    }

    #[tokio::test]
    async fn delete_releases_claims() {
        let db = db().await;
        let n = create(&db, vec![spec("52:54:00:00:00:01", Some("10.0.0.1"))], false).await.unwrap();
        delete(&db, vec![n[0].uid.clone()]).await.unwrap();
        assert!(db.range("index/").await.unwrap().0.is_empty());
        assert!(list(&db).await.unwrap().is_empty());
        create(&db, vec![spec("52:54:00:00:00:01", Some("10.0.0.1"))], false).await.unwrap();
    }

    #[tokio::test]
    async fn batches_respect_the_transaction_limit() {
        // A tiny limit through the etcd path is not available here; exercise `batch` directly.
        let pieces = (0..10)
            .map(|i| Piece {
                compares: vec![Compare::absent(format!("k{i}"))],
                ops: vec![TxnOp::put(format!("k{i}"), "v"), TxnOp::put(format!("j{i}"), "v")],
            })
            .collect();
        let txns = batch(pieces, 5);
        assert_eq!(txns.len(), 5);
        assert!(txns.iter().all(|t| t.size() <= 5));
    }
}
