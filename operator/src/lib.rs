//! `iafactory-operator`: reconciles Tenant, KnowledgeBase and Workflow resources into
//! isolated tenant namespaces.
//!
//! The pure parts ([`build`], [`status`], [`admission`], [`rbac`]) take the plan from
//! `iafactory-crds` to typed objects and conditions; the I/O edges ([`apply`],
//! [`tenant_api`]) and the wiring ([`controller`], [`run`]) stay thin.

pub mod apply;
pub mod build;
pub mod controller;
pub mod error;
pub mod labels;
pub mod metrics;
pub mod rbac;
pub mod run;
pub mod status;

// Shared with the appliance, so they live in iafactory-crds; the paths stay.
pub use iafactory_crds::{admission, tenant_api};
