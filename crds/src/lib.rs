//! IAFactory's resources and the decisions made from them.
//!
//! - [`tenant`], [`knowledgebase`], [`workflow`]: the custom resources, the only schema
//!   (the CRD YAML in `crds/*.yaml` is generated from them by `crdgen`).
//! - [`validation`] and [`dag`]: everything the API server checks, and what it cannot.
//! - [`plan`]: the pure function from a Tenant and the platform configuration to every
//!   deployment decision, rendered by both the operator and the appliance.
//! - [`schedule`]: backup schedules, decided as a pure function of the clock.
//! - [`manifest`]: multi-document manifests as users write them, with precise errors.
//! - [`admission`]: what a KnowledgeBase or Workflow must agree on with its Tenant.
//! - [`support`]: what each driver does with each Tenant field (honoured, warned,
//!   refused), for `apply`'s warnings and docs/resources.md.
//! - [`tenant_api`]: the contract of the tenant API's internal endpoints, through which
//!   the operator and the appliance register them (its client is behind the feature
//!   `tenant-api`; the API itself shares the types).

pub mod admission;
pub mod common;
pub mod config;
pub mod crdgen;
pub mod dag;
pub mod knowledgebase;
pub mod manifest;
pub mod plan;
pub mod quantity;
pub mod schedule;
pub mod support;
pub mod tenant;
pub mod tenant_api;
pub mod validation;
pub mod workflow;

pub use common::Language;
pub use config::PlatformConfig;
pub use knowledgebase::{KnowledgeBase, KnowledgeBaseSpec, KnowledgeBaseStatus};
pub use plan::{PlanError, TenantPlan, plan};
pub use quantity::Quantity;
pub use tenant::{Tenant, TenantSpec, TenantStatus};
pub use workflow::{Workflow, WorkflowSpec, WorkflowStatus};
