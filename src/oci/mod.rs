//! OCI images: references, and erofsd images packaged as OCI images (see docs/registry.md,
//! "An erofsd image in a registry").

pub mod convert;
pub mod layout;
pub mod manifest;
pub mod package;
pub mod pull;
pub mod reference;

pub use reference::{Reference, RegistryRef};
