//! Why a reconcile failed: one variant per operation, each retried with backoff.

use thiserror::Error;

/// A failed reconcile; each variant names the operation that failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error("the TrainingJob has no namespace")]
    MissingNamespace,
    #[error("namespace {0:?} is not in the operator's cache yet")]
    NamespaceUnknown(String),
    #[error("submitting {key} to the scheduler: {source}")]
    SubmitJob {
        key: String,
        #[source]
        source: tonic::Status,
    },
    #[error("cancelling {key} with the scheduler: {source}")]
    CancelJob {
        key: String,
        #[source]
        source: tonic::Status,
    },
    #[error("listing the pods of {job}: {source}")]
    ListPods {
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying Service {name}: {source}")]
    ApplyService {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying pod {name}: {source}")]
    ApplyPod {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("releasing pod {name} from the gang gate: {source}")]
    ReleasePod {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {name}: {source}")]
    DeletePod {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting the pods of {job}: {source}")]
    DeletePods {
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting Service {name}: {source}")]
    DeleteService {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the status of {job}: {source}")]
    PatchStatus {
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingNamespace => "missing_namespace",
            Self::NamespaceUnknown(_) => "namespace_unknown",
            Self::SubmitJob { .. } => "submit_job",
            Self::CancelJob { .. } => "cancel_job",
            Self::ListPods { .. } => "list_pods",
            Self::ApplyService { .. } => "apply_service",
            Self::ApplyPod { .. } => "apply_pod",
            Self::ReleasePod { .. } => "release_pod",
            Self::DeletePod { .. } | Self::DeletePods { .. } => "delete_pods",
            Self::DeleteService { .. } => "delete_service",
            Self::PatchStatus { .. } => "patch_status",
            Self::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
        }
    }
}
