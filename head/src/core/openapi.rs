//! The OpenAPI document of `/api/v1` (`GET /api/v1/openapi.json`, no credential: it describes
//! the API, it holds no data).
//!
//! Every operation is listed once in [`operations`] with the wire types it takes and answers,
//! the same types the head parses and the client sends (`clusterware_shared`); their JSON
//! schemas are generated from the types' definitions by utoipa (`ToSchema`, derived in
//! `clusterware_shared` behind its `openapi` feature). `tests/tests/openapi.rs` asks a running
//! head every method of every path in `shared::api::path::ALL` and fails when one the head
//! serves is not here, or one here is not served.

use crate::core::http::Routes;
use clusterware_shared::agent::*;
use clusterware_shared::api::*;
use clusterware_shared::power::*;
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, ResponseBuilder,
    ServerBuilder,
};

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// The admin credential (a named token, the heads' own, or the password's on the head).
    Admin,
    /// No credential: nodes, firmware, peers, joining heads (each route checks what it needs).
    Open,
}

/// A body: JSON of a schema, or bytes of a media type.
enum Body {
    None,
    Json(RefOr<Schema>),
    Bytes(&'static str),
    Text(&'static str),
}

/// One operation of the API.
struct Op {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    query: &'static [(&'static str, &'static str)],
    request: Body,
    answer: Body,
    status: &'static str,
}

/// The document's schemas, gathered as operations name them.
#[derive(Default)]
struct Schemas(Vec<(String, RefOr<Schema>)>);

impl Schemas {
    /// A reference to `T`'s schema, which (and what it refers to) goes into the components.
    fn of<T: ToSchema>(&mut self) -> Body {
        let name = T::name().to_string();
        if !self.0.iter().any(|(n, _)| *n == name) {
            self.0.push((name.clone(), T::schema()));
            T::schemas(&mut self.0);
        }
        Body::Json(RefOr::Ref(Ref::from_schema_name(name)))
    }

    /// An object whose values are `T`s (keyed by node uid).
    fn map_of<T: ToSchema>(&mut self) -> Body {
        let Body::Json(inner) = self.of::<T>() else { unreachable!("of gives JSON") };
        Body::Json(ObjectBuilder::new().schema_type(Type::Object).additional_properties(Some(inner)).into())
    }
}

/// Every operation of `/api/v1`.
fn operations(s: &mut Schemas) -> Vec<Op> {
    use Auth::{Admin, Open};
    use HttpMethod::{Delete, Get, Post, Put};
    let op = |method, path, summary, auth, request, answer| Op {
        method,
        path,
        summary,
        auth,
        query: &[],
        request,
        answer,
        status: "200",
    };
    let force: &'static [(&str, &str)] = &[("force", "1 or true: delete even when something still uses it")];
    vec![
        op(
            Get,
            path::HEALTH,
            "The head's name, version, database and state (no credential)",
            Open,
            Body::None,
            s.of::<Health>(),
        ),
        op(
            Get,
            path::HEADS,
            "The heads: records, liveness, etcd membership, storage",
            Admin,
            Body::None,
            s.of::<HeadList>(),
        ),
        Op {
            query: &[("select", "only the nodes a selector names, as -i takes it (n[0-99], lists, MACs, uids)")],
            ..op(Get, path::NODES, "Every node", Admin, Body::None, s.of::<NodeList>())
        },
        op(
            Get,
            path::CONSOLE_UPDATES,
            "The console's live updates: server-sent events saying what changed (heads, nodes, status)",
            Admin,
            Body::None,
            Body::Text("text/event-stream"),
        ),
        Op {
            status: "201",
            ..op(Post, path::NODES, "Create nodes (all or none)", Admin, s.of::<CreateNodes>(), s.of::<NodeList>())
        },
        op(Get, path::NODE, "One node by uid", Admin, Body::None, s.of::<Node>()),
        op(
            Post,
            path::NODES_UPDATE,
            "Set and clear attributes of nodes",
            Admin,
            s.of::<UpdateNodes>(),
            s.of::<NodeList>(),
        ),
        op(
            Post,
            path::NODES_DELETE,
            "Delete nodes; answers what was deleted",
            Admin,
            s.of::<DeleteNodes>(),
            s.of::<NodeList>(),
        ),
        op(
            Post,
            path::NODES_STATUS,
            "Nodes' state, parent, last report",
            Admin,
            s.of::<StatusQuery>(),
            s.of::<NodeStatusList>(),
        ),
        op(
            Post,
            path::NODES_REPORTS,
            "The latest reports of the nodes this head parents (for peers)",
            Admin,
            s.of::<DeleteNodes>(),
            s.map_of::<StatusReport>(),
        ),
        op(
            Post,
            path::NODES_SCRIPT,
            "Run fetch_hosts or update_keys on nodes and wait for their outcomes",
            Admin,
            s.of::<RunScript>(),
            s.of::<ScriptResults>(),
        ),
        op(
            Get,
            path::NODES_COUNTERS,
            "This head's agent channel counters",
            Admin,
            Body::None,
            s.of::<StatusCounters>(),
        ),
        op(
            Post,
            path::NODES_POWER,
            "Power status, on, off, cycle, reset through the nodes' BMCs",
            Admin,
            s.of::<PowerRequest>(),
            s.of::<PowerResults>(),
        ),
        op(
            Post,
            path::NODES_ENROLL,
            "One-time enrollment tokens for nodes",
            Admin,
            s.of::<DeleteNodes>(),
            s.of::<EnrollTokens>(),
        ),
        op(Post, path::NODES_REVOKE, "Take back nodes' certificates", Admin, s.of::<DeleteNodes>(), s.of::<NodeList>()),
        op(
            Post,
            path::REBALANCE,
            "A rebalancing round now, or its moves (dry run)",
            Admin,
            s.of::<RebalanceRequest>(),
            s.of::<RebalanceReport>(),
        ),
        op(Get, path::SECRETS, "Secrets' names (never values)", Admin, Body::None, s.of::<SecretList>()),
        op(Put, path::SECRET, "Set a secret", Admin, s.of::<SetSecret>(), s.of::<SecretInfo>()),
        op(Delete, path::SECRET, "Remove a secret", Admin, Body::None, s.of::<SecretInfo>()),
        op(Get, path::TOKENS, "Named admin tokens (never the tokens)", Admin, Body::None, s.of::<TokenList>()),
        Op {
            status: "201",
            ..op(
                Post,
                path::TOKENS,
                "Create a named admin token (shown once)",
                Admin,
                s.of::<CreateToken>(),
                s.of::<NewToken>(),
            )
        },
        op(Delete, path::TOKEN, "Revoke a named admin token", Admin, Body::None, s.of::<TokenInfo>()),
        Op {
            query: &[
                ("since", "only events at or after this time (ms since the epoch)"),
                ("after", "only events after this id (a cursor: `next` of the last answer)"),
                ("limit", "at most this many (1 to 10000; default 100)"),
                ("wait", "with after: wait up to this many seconds (at most 55) for an event"),
                ("kind", "admin, head, node, file or import"),
            ],
            ..op(Get, path::EVENTS, "The event log", Admin, Body::None, s.of::<EventList>())
        },
        op(Get, path::KEYS, "Cluster SSH keys for root on every node", Admin, Body::None, s.of::<SshKeyList>()),
        Op {
            status: "201",
            ..op(Post, path::KEYS, "Add a cluster SSH key", Admin, s.of::<AddKey>(), s.of::<SshKey>())
        },
        op(Delete, path::KEY, "Remove a cluster SSH key", Admin, Body::None, s.of::<SshKey>()),
        op(Get, path::FILES, "Boot files and which heads hold verified copies", Admin, Body::None, s.of::<FileList>()),
        Op {
            status: "201",
            query: &[
                ("name", "the file's name"),
                ("kind", "kernel, initramfs, rootfs or other"),
                ("size", "its size in bytes"),
                ("sha256", "its SHA-256, checked when given"),
            ],
            ..op(
                Put,
                path::FILES,
                "Upload a boot file (the body is its content)",
                Admin,
                Body::Bytes("application/octet-stream"),
                s.of::<FileRecord>(),
            )
        },
        Op { query: force, ..op(Delete, path::FILE, "Delete a boot file", Admin, Body::None, s.of::<FileRecord>()) },
        Op {
            query: &[("peer", "1: answer from this head's verified copy only (heads asking each other)")],
            ..op(
                Get,
                path::FILE_CONTENT,
                "A boot file's content (ranges too); kernels and initramfs images without credential, root images to enrolled nodes and admins",
                Open,
                Body::None,
                Body::Bytes("application/octet-stream"),
            )
        },
        op(
            Post,
            path::FILE_FETCH,
            "Make this head hold a verified copy (from a peer)",
            Admin,
            Body::None,
            s.of::<FileCopy>(),
        ),
        op(Get, path::STORAGE, "This head's storage counters", Admin, Body::None, s.of::<StorageCounters>()),
        op(Get, path::IMAGES, "Images", Admin, Body::None, s.of::<ImageList>()),
        Op {
            status: "201",
            ..op(Post, path::IMAGES, "Create an image", Admin, s.of::<CreateImage>(), s.of::<Image>())
        },
        op(Get, path::IMAGE, "One image", Admin, Body::None, s.of::<Image>()),
        Op { query: force, ..op(Delete, path::IMAGE, "Delete an image", Admin, Body::None, s.of::<Image>()) },
        Op {
            status: "201",
            ..op(Post, path::IMAGE_CLONE, "Clone an image", Admin, s.of::<CloneRequest>(), s.of::<Image>())
        },
        op(Get, path::BOOT_CONFIGS, "Boot configurations", Admin, Body::None, s.of::<BootConfigList>()),
        Op {
            status: "201",
            ..op(
                Post,
                path::BOOT_CONFIGS,
                "Create a boot configuration",
                Admin,
                s.of::<CreateBootConfig>(),
                s.of::<BootConfig>(),
            )
        },
        op(
            Get,
            path::BOOT_CONFIG,
            "One boot configuration with its image and files",
            Admin,
            Body::None,
            s.of::<BootConfigDetail>(),
        ),
        Op {
            query: force,
            ..op(Delete, path::BOOT_CONFIG, "Delete a boot configuration", Admin, Body::None, s.of::<BootConfig>())
        },
        op(
            Post,
            path::BOOT_CONFIG_UPDATE,
            "Change a boot configuration",
            Admin,
            s.of::<UpdateBootConfig>(),
            s.of::<BootConfig>(),
        ),
        Op {
            status: "201",
            ..op(
                Post,
                path::BOOT_CONFIG_CLONE,
                "Clone a boot configuration",
                Admin,
                s.of::<CloneRequest>(),
                s.of::<BootConfig>(),
            )
        },
        op(
            Get,
            path::BOOT_CONFIG_EXPORT,
            "Export a boot configuration with its image and files (a tar archive)",
            Admin,
            Body::None,
            Body::Bytes("application/x-tar"),
        ),
        op(
            Put,
            path::DEFAULT_BOOT_CONFIG,
            "Set or clear the default boot configuration",
            Admin,
            s.of::<DefaultBootConfig>(),
            s.of::<DefaultBootConfig>(),
        ),
        Op {
            status: "201",
            query: &[
                ("boot_config", "the imported boot configuration's name here"),
                ("image", "the imported image's name here"),
                ("no_recurse", "1: the boot configuration without its image"),
                ("dry_run", "1: only say what would be done (answers 200)"),
            ],
            ..op(
                Put,
                path::IMPORT,
                "Import an exported boot configuration (the body is the archive)",
                Admin,
                Body::Bytes("application/x-tar"),
                s.of::<ImportReport>(),
            )
        },
        op(Get, path::DATABASE, "The cluster's data (managedb save)", Admin, Body::None, s.of::<DatabaseDump>()),
        op(
            Put,
            path::DATABASE,
            "Load saved data into an empty cluster",
            Admin,
            s.of::<DatabaseDump>(),
            s.of::<DatabaseLoaded>(),
        ),
        op(
            Post,
            path::DATABASE_CONVERT,
            "Turn a solo embedded head into a one-member etcd cluster (it restarts)",
            Admin,
            s.of::<ConvertDatabase>(),
            s.of::<MembershipChange>(),
        ),
        Op {
            query: &[("data", "1: count the cluster's data too")],
            ..op(
                Get,
                path::CLUSTER,
                "The cluster: heads, etcd members, failover",
                Admin,
                Body::None,
                s.of::<ClusterInfo>(),
            )
        },
        op(
            Post,
            path::CLUSTER_MEMBERS,
            "Add a joining head's etcd member as a learner",
            Admin,
            s.of::<AddMember>(),
            s.of::<MemberAdded>(),
        ),
        op(
            Post,
            path::CLUSTER_PROMOTE,
            "Promote a joined head's learner to a voter",
            Admin,
            s.of::<HeadRef>(),
            s.of::<MembershipChange>(),
        ),
        op(Post, path::CLUSTER_EJECT, "Eject a head", Admin, s.of::<HeadRef>(), s.of::<MembershipChange>()),
        op(
            Post,
            path::CLUSTER_LEAVE,
            "This head leaves the cluster (it restarts detached)",
            Admin,
            Body::None,
            s.of::<MembershipChange>(),
        ),
        op(
            Post,
            path::CLUSTER_RECOVER,
            "This head's data becomes a one-member cluster (it restarts)",
            Admin,
            Body::None,
            s.of::<MembershipChange>(),
        ),
        op(
            Get,
            path::CLUSTER_FAILOVER,
            "Automatic failover: enabled, timeout, armed, last ejection",
            Admin,
            Body::None,
            s.of::<Failover>(),
        ),
        op(
            Post,
            path::CLUSTER_FAILOVER,
            "Enable, disable or re-arm automatic failover",
            Admin,
            s.of::<FailoverRequest>(),
            s.of::<Failover>(),
        ),
        op(
            Get,
            path::CLUSTER_CA,
            "The cluster CA with the proof that the head knows the database password (for joining heads)",
            Open,
            Body::None,
            s.of::<ClusterCa>(),
        ),
        Op {
            query: &[("mac", "the node's MAC")],
            ..op(
                Get,
                path::BOOT_SCRIPT,
                "The iPXE script of a node (firmware)",
                Open,
                Body::None,
                Body::Text("text/plain"),
            )
        },
        op(
            Get,
            path::BOOT_CA,
            "The cluster CA as a newc archive for the node's initramfs (firmware)",
            Open,
            Body::None,
            Body::Bytes("application/octet-stream"),
        ),
        op(
            Get,
            path::BOOT_FILE,
            "A boot file of tftp.dir (an iPXE binary) for UEFI HTTP Boot (firmware)",
            Open,
            Body::None,
            Body::Bytes("application/efi"),
        ),
        Op {
            query: &[("mac", "the node's MAC")],
            ..op(Get, path::AGENT_HEADS, "A node's heads, parent first (agent)", Open, Body::None, s.of::<HeadsReply>())
        },
        op(
            Post,
            path::AGENT_STATUS,
            "A node's status push; answers its directives (agent)",
            Open,
            s.of::<StatusReport>(),
            s.of::<Directives>(),
        ),
        Op {
            query: &[("mac", "the node's MAC"), ("secs", "how long to wait")],
            ..op(
                Get,
                path::AGENT_WAIT,
                "A node's long poll for directives (agent)",
                Open,
                Body::None,
                s.of::<Directives>(),
            )
        },
        op(
            Post,
            path::AGENT_RESULT,
            "The outcome of a script on a node (agent)",
            Open,
            s.of::<ScriptOutcome>(),
            Body::None,
        ),
        Op {
            query: &[("mac", "the node's MAC")],
            ..op(
                Get,
                path::AGENT_KEYS,
                "The SSH keys for root on a node (agent)",
                Open,
                Body::None,
                s.of::<KeysReply>(),
            )
        },
        op(
            Post,
            path::AGENT_ENROLL,
            "A node trades its one-time token for its certificate (agent)",
            Open,
            s.of::<Enroll>(),
            s.of::<Enrolled>(),
        ),
        op(
            Get,
            path::OPENAPI,
            "This document (no credential)",
            Open,
            Body::None,
            Body::Json(ObjectBuilder::new().schema_type(Type::Object).into()),
        ),
    ]
}

fn content(b: &Body) -> Option<(String, utoipa::openapi::Content)> {
    let bytes = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary)))
    };
    match b {
        Body::None => None,
        Body::Json(s) => Some(("application/json".into(), ContentBuilder::new().schema(Some(s.clone())).build())),
        Body::Bytes(t) => Some(((*t).into(), ContentBuilder::new().schema(Some(bytes())).build())),
        Body::Text(t) => Some((
            (*t).into(),
            ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build(),
        )),
    }
}

/// The document.
pub fn document() -> OpenApi {
    let mut s = Schemas::default();
    let ops = operations(&mut s);
    let error = s.of::<ApiError>();
    let mut paths = PathsBuilder::new();
    for o in &ops {
        let mut b = OperationBuilder::new().summary(Some(o.summary)).operation_id(Some(format!(
            "{}{}",
            method_name(&o.method),
            o.path.replace(['/', '{', '}', '-'], "_")
        )));
        for p in o.path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')) {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(p)
                    .parameter_in(ParameterIn::Path)
                    .required(utoipa::openapi::Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        for (name, what) in o.query {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .description(Some(*what))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some((t, c)) = content(&o.request) {
            b = b.request_body(Some(
                RequestBodyBuilder::new().content(t, c).required(Some(utoipa::openapi::Required::True)).build(),
            ));
        }
        let mut ok = ResponseBuilder::new().description("success");
        if let Some((t, c)) = content(&o.answer) {
            ok = ok.content(t, c);
        }
        let Some((et, ec)) = content(&error) else { unreachable!("errors are JSON") };
        b = b.response(o.status, ok.build()).response(
            "default",
            ResponseBuilder::new().description("an error: its kind says the status (bad_request 400, unauthorized 401, forbidden 403, not_found 404, conflict 409, too_large 413, unavailable 503, internal 500)").content(et, ec).build(),
        );
        if o.auth == Auth::Admin {
            b = b.security(SecurityRequirement::new("admin", Vec::<String>::new()));
        }
        paths = paths.path(o.path, PathItem::new(o.method.clone(), b.build()));
    }
    let mut components = ComponentsBuilder::new().security_scheme(
        "admin",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("a named token (scyld-clusterctl tokens create), or on a head the one derived from database.admin_pass")).build()),
    );
    for (name, schema) in s.0 {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("ClusterWare multi-head API")
                .version(clusterware_shared::VERSION)
                .description(Some("The admin API of a head, the node agents' channel and what firmware fetches. Every head serves all of it, over HTTPS (plain HTTP serves only what firmware fetches).")),
        )
        .servers(Some([ServerBuilder::new().url(clusterware_shared::api::PREFIX).build()]))
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

fn method_name(m: &HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Head => "head",
        HttpMethod::Patch => "patch",
        HttpMethod::Options => "options",
        HttpMethod::Trace => "trace",
    }
}

/// `GET /openapi.json` (an open route).
pub fn routes() -> Routes {
    let doc = std::sync::Arc::new(serde_json::to_vec(&document()).expect("the document serialises"));
    let get = move || {
        let doc = doc.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Bytes::from((*doc).clone())) }
    };
    Routes { open: axum::Router::new().route(path::OPENAPI, axum::routing::get(get)), ..Default::default() }
}

#[cfg(test)]
mod tests {
    /// Every path of the API is in the document with its operations, and every schema it names
    /// is defined.
    #[test]
    fn the_document_is_whole() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in clusterware_shared::api::path::ALL {
            assert!(paths.contains_key(*p), "{p} is not in the document");
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let name: String = text[i + 21..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(schemas.contains_key(&name), "{name} is referred to but not defined");
        }
        assert_eq!(doc["paths"]["/nodes/{uid}"]["get"]["parameters"][0]["name"], "uid");
        assert!(doc["paths"]["/nodes"]["post"]["security"].is_array());
        assert!(doc["paths"]["/health"]["get"]["security"].is_null());
    }
}
