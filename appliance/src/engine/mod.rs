//! The Docker side of the appliance: the desired state built from the plan (pure),
//! one wrapper around the Docker Engine, and the step that converges one to the other.

pub mod converge;
pub mod desired;
pub mod docker;

pub use converge::{ConvergeError, Converger, Report};
pub use desired::{RenderSettings, TenantState};
pub use docker::{DockerError, Engine, Health, Observed, Target};
