//! The failures of operations on the cluster's records, shared by the capabilities that keep
//! records (node registry, boot configs and images, SSH keys, secrets, save and load): each says
//! its kind, and so its HTTP status, in one place.

use crate::core::db::DbError;
use crate::core::http::HasKind;
use clusterware_shared::api::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The request is malformed or names something invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what the database holds (409).
    #[error("{0}")]
    Conflict(String),
    /// What the request names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A stored record does not decode (500): a fault of the cluster, not of the request.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl HasKind for RecordError {
    fn kind(&self) -> ErrorKind {
        match self {
            RecordError::Invalid(_) => ErrorKind::BadRequest,
            RecordError::Conflict(_) => ErrorKind::Conflict,
            RecordError::NotFound(_) => ErrorKind::NotFound,
            RecordError::Corrupt { .. } => ErrorKind::Internal,
            RecordError::Db(e) => e.kind(),
        }
    }
}
