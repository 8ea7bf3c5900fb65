//! The erofsd daemon and tools, as a library so integration tests can drive them.

pub mod build;
pub mod cache;
pub mod cmd;
pub mod core;
pub mod daemon;
pub mod frontend;
pub mod nydusd;
pub mod oci;
