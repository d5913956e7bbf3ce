//! The labels and annotations the operator puts on what it owns, and looks it up by.

use std::collections::BTreeMap;

pub use iafactory_crds::plan::{LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_TENANT};

/// The one field manager for every server-side apply, and the `managed-by` value.
pub const FIELD_MANAGER: &str = "iafactory-operator";
/// A hash of the object as last applied: an equal hash means there is nothing to write.
pub const ANNOTATION_APPLIED_HASH: &str = "iafactory.dz/applied-hash";
/// Set on a namespace kept by `retention: Retain` after its Tenant was deleted.
pub const LABEL_RETAINED: &str = "iafactory.dz/retained";
/// The finalizer that runs the retention policy before a Tenant goes away.
pub const TENANT_FINALIZER: &str = "iafactory.dz/cleanup";

/// Selects everything this operator owns, in every namespace.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}")
}

/// The tenant an owned object belongs to, from its labels.
pub fn tenant_of(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    let labels = labels?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(FIELD_MANAGER) {
        return None;
    }
    labels.get(LABEL_TENANT).map(String::as_str)
}
