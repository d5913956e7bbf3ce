//! HTTP handlers, one module per area.

pub mod accounts;
pub mod internal;
pub mod keys;
pub mod ops;
