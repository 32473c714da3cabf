//! This head's TLS: the cluster CA (in `tls.dir`, and in the database at
//! [`schema::CLUSTER_CA`] so that every head has the same), this head's certificate issued from
//! it at every start (its name, its addresses, `localhost`), and the rustls configuration of the
//! HTTPS listener.
//!
//! Where the CA comes from: the first head of a cluster creates it; a head that joins gets the
//! certificate from `scyld-install --join` / `managedb join` (checked against the database
//! password, see [`clusterware_shared::pki::ca_proof`]) and the key from the database once its
//! member has caught up. A head whose CA is not the cluster's refuses to start.

use crate::core::db::{Compare, Database, DbError, Txn, TxnOp};
use crate::core::schema::{self, CaRecord};
use clusterware_shared::config::Config;
use clusterware_shared::pki::{self, Ca, PkiError};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio_rustls::rustls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS set-up: {0}")]
    Setup(String),
    #[error(
        "this head's cluster CA ({local}, in {dir}) is not its cluster's ({cluster}): this head belongs to another \
         cluster. Join this cluster with `managedb join <IP_HEAD>` (which brings its CA), or remove {dir} to take the \
         cluster's"
    )]
    Mismatch { local: String, cluster: String, dir: String },
    #[error("cluster database: {0}")]
    Db(#[from] DbError),
}

/// The cluster CA's certificate and this head's server configuration.
#[derive(Clone)]
pub struct HeadTls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

/// The cluster CA of this process, once known: what calls to other heads trust. A head's CA
/// never changes while it runs (a different one is an error at start).
static CLUSTER_CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the cluster CA's certificate for calls to other heads ([`cluster_ca`]).
pub fn set_cluster_ca(cert_pem: &str) {
    let _ = CLUSTER_CA.set(cert_pem.to_string());
}

/// The cluster CA's certificate, once [`set_cluster_ca`] ran.
pub fn cluster_ca() -> Option<&'static str> {
    CLUSTER_CA.get().map(String::as_str)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA in `tls.dir`, if there is one (a certificate alone, which a join leaves, is not).
pub fn local_ca(cfg: &Config) -> Result<Option<Ca>, TlsError> {
    let dir = &cfg.tls_dir;
    if !dir.join(pki::CA_KEY).exists() {
        return Ok(None);
    }
    Ok(Ca::load(dir)?)
}

/// The certificate alone that a join left in `tls.dir` (the key comes from the database).
pub fn local_ca_cert(cfg: &Config) -> Option<String> {
    std::fs::read_to_string(cfg.tls_dir.join(pki::CA_CERT)).ok()
}

/// Settles the cluster's CA with the database: this head's if the cluster has none yet, the
/// cluster's if this head has none (checked against a certificate a join left), an error if
/// they differ. The CA ends up in `tls.dir`.
/// Returns the CA and the heads' credential ([`CaRecord::head_token`]).
pub async fn settle_ca(db: &Database, cfg: &Config) -> Result<(Ca, String), TlsError> {
    let dir = cfg.tls_dir.display().to_string();
    let local = local_ca(cfg)?;
    for _ in 0..3 {
        if let Some(kv) = db.get(schema::CLUSTER_CA).await? {
            let rec: CaRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| TlsError::Setup(format!("the cluster's CA record cannot be read: {e}")))?;
            let cluster = Ca::from_pem(&rec.cert_pem, &rec.key_pem)
                .map_err(|e| TlsError::Setup(format!("the cluster's CA record: {e}")))?;
            let mine =
                local.as_ref().map(|c| c.fingerprint()).or_else(|| local_ca_cert(cfg).map(|p| pki::fingerprint(&p)));
            match mine {
                Some(f) if f != cluster.fingerprint() => {
                    return Err(TlsError::Mismatch { local: f, cluster: cluster.fingerprint(), dir });
                }
                _ => {}
            }
            if local.is_none() {
                cluster.write(&cfg.tls_dir)?;
                tracing::info!(fingerprint = %cluster.fingerprint(), dir = %dir, "took the cluster's CA");
            }
            return Ok((cluster, rec.head_token));
        }
        let ca = match &local {
            Some(c) => c.clone(),
            None => {
                if let Some(p) = local_ca_cert(cfg) {
                    return Err(TlsError::Setup(format!(
                        "{dir} holds the CA certificate {} from a join but the cluster database has no CA: was this \
                         head joined to another cluster?",
                        pki::fingerprint(&p)
                    )));
                }
                Ca::create()?
            }
        };
        let rec = CaRecord {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem().to_string(),
            head_token: random_token().map_err(|e| TlsError::Setup(format!("cannot read /dev/urandom: {e}")))?,
        };
        let body = serde_json::to_vec(&rec).map_err(|e| TlsError::Setup(e.to_string()))?;
        let created = db
            .txn(
                Txn::new().when([Compare::absent(schema::CLUSTER_CA)]).and_then([TxnOp::put(schema::CLUSTER_CA, body)]),
            )
            .await?
            .succeeded;
        if created {
            if local.is_none() {
                ca.write(&cfg.tls_dir)?;
                tracing::info!(fingerprint = %ca.fingerprint(), dir = %dir, "created the cluster CA");
            }
            return Ok((ca, rec.head_token));
        }
        // Another head wrote one meanwhile: read it.
    }
    Err(TlsError::Setup("the cluster's CA record keeps changing".into()))
}

/// 32 random bytes, hex.
fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(hex::encode(b))
}

/// Issues this head's certificate (its name, `head.ip`, every address of this machine,
/// `localhost`) from `ca`, writes it into `tls.dir`, and makes the server configuration.
pub fn for_head(cfg: &Config, ca: Ca, name: &str, ip: Ipv4Addr) -> Result<HeadTls, TlsError> {
    let mut ips: Vec<IpAddr> = vec![IpAddr::V4(ip)];
    if !cfg.head_bind.is_unspecified() {
        ips.push(cfg.head_bind);
    }
    ips.extend(clusterware_shared::sys::ipv4_addrs().into_iter().map(|(_, a, _)| IpAddr::V4(a)));
    let issued = ca.issue(name, &pki::head_names(name, &ips), pki::HEAD_DAYS)?;
    pki::write_issued(&cfg.tls_dir, pki::HEAD_CERT, pki::HEAD_KEY, &issued)?;
    let server = server_config(&issued, &ca.cert_pem)?;
    Ok(HeadTls { ca_pem: ca.cert_pem, server })
}

/// What a head has of TLS before its database is open, which its etcd member needs to reach its
/// peers: a certificate issued now from its CA; or, on a head that is joining, the one the
/// cluster gave it; or, for the first head of a new cluster, a new CA. `None` for a head on an
/// external etcd that has no CA yet (it takes the cluster's from the database).
pub fn at_start(cfg: &Config, name: &str, ip: Ipv4Addr) -> Result<Option<HeadTls>, TlsError> {
    use clusterware_shared::config::DatabaseType;
    if let Some(ca) = local_ca(cfg)? {
        return Ok(Some(for_head(cfg, ca, name, ip)?));
    }
    let dir = &cfg.tls_dir;
    let read =
        |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|source| PkiError::Io { path: dir.join(f), source });
    if [pki::CA_CERT, pki::HEAD_CERT, pki::HEAD_KEY].iter().all(|f| dir.join(f).exists()) {
        let issued = pki::Issued { cert_pem: read(pki::HEAD_CERT)?, key_pem: read(pki::HEAD_KEY)? };
        let ca_pem = read(pki::CA_CERT)?;
        let server = server_config(&issued, &ca_pem)?;
        return Ok(Some(HeadTls { ca_pem, server }));
    }
    let member = cfg.database_type == DatabaseType::Etcd && cfg.etcd_endpoints.is_empty();
    let several = cfg.etcd_initial_cluster.as_deref().is_some_and(|c| c.contains(','));
    let new_cluster = cfg.database_type == DatabaseType::Embedded
        || (member && cfg.etcd_initial_cluster_state == "new" && !cfg.recover && !several);
    if new_cluster && !dir.join(pki::CA_CERT).exists() {
        let ca = Ca::create()?;
        ca.write(dir)?;
        tracing::info!(fingerprint = %ca.fingerprint(), dir = %dir.display(), "created the cluster CA");
        return Ok(Some(for_head(cfg, ca, name, ip)?));
    }
    if member {
        return Err(TlsError::Setup(format!(
            "{} holds no cluster CA and no certificate for this head's etcd member, whose peers accept none without \
             one: a head joins with `scyld-install --join` or `managedb join`, which bring them{}",
            dir.display(),
            if several {
                "; the heads of a cluster created at once (database.initial_cluster naming several) need the same CA \
                 (ca.pem and ca.key) in each one's tls.dir first"
            } else {
                ""
            }
        )));
    }
    Ok(None)
}

/// A server configuration presenting `issued` (and the CA above it), HTTP/1.1.
fn server_config(issued: &pki::Issued, ca_pem: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| bad(&e))?;
    chain
        .extend(CertificateDer::pem_slice_iter(ca_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?);
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    // Every client is asked for a certificate; one the cluster CA did not issue fails the
    // handshake, none at all is fine here (administrators and heads use credentials; the agent
    // routes want a node's, see `registry::identity`).
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(&e))?;
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad(&e))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless session tickets (keys in this process's memory only, rotated every 6 hours): a
    // node that reconnects, as one told to come back later in a boot storm does, resumes without
    // another certificate signature and check. A resumed session keeps the client certificate
    // of its first handshake, and every request is still judged against the node's current
    // certificate record, so a revoked node gets no further by resuming.
    c.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| bad(&e))?;
    Ok(Arc::new(c))
}

/// The proof of the CA for joining heads ([`pki::ca_proof`]): computed once per process, since
/// anyone may ask for it and it costs 100,000 hashes.
pub struct CaProof {
    ca_pem: String,
    pass: String,
    proof: tokio::sync::OnceCell<String>,
}

impl CaProof {
    pub fn new(ca_pem: String, pass: String) -> CaProof {
        CaProof { ca_pem, pass, proof: tokio::sync::OnceCell::new() }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub async fn proof(&self) -> String {
        self.proof
            .get_or_init(|| async {
                let (pass, pem) = (self.pass.clone(), self.ca_pem.clone());
                tokio::task::spawn_blocking(move || pki::ca_proof(&pass, &pem)).await.unwrap_or_default()
            })
            .await
            .clone()
    }
}
