//! The operator's one error type: every failure names what it was doing.

use iafactory_crds::PlanError;
use iafactory_crds::tenant_api::TenantApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("the spec cannot be planned: {0}")]
    Plan(#[from] PlanError),
    #[error(transparent)]
    TenantApi(#[from] TenantApiError),
    #[error("{0}")]
    Dependency(String),
    #[error("running the tenant finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn kube(action: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action,
            object: object.into(),
            source,
        }
    }

    /// A short, bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Plan(_) => "plan",
            Error::TenantApi(TenantApiError::Rejected { .. }) => "rejected",
            Error::TenantApi(TenantApiError::Unavailable { .. }) => "tenant_api",
            Error::Dependency(_) => "dependency",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
