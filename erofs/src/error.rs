//! The one error type of the format library.
//!
//! Variants say *whose* fault it is: a hostile or damaged image (`Corrupt`), a valid image
//! using something we deliberately do not implement (`Unsupported`), a tree the writer cannot
//! express (`InvalidTree`), or the operating system (`Io`).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image violates the EROFS format (or the erofsd extension).
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// A well-formed feature this library does not implement (compression, long xattr prefixes…).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The in-memory tree (or blob list) handed to the writer cannot be written.
    #[error("invalid tree: {0}")]
    InvalidTree(String),
    /// A path or name that does not exist in the image.
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Err(Error::Corrupt(format!(...)))`, for the many bounds checks of the reader.
macro_rules! corrupt {
    ($($arg:tt)*) => { $crate::error::Error::Corrupt(format!($($arg)*)) };
}
pub(crate) use corrupt;

macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::Error::InvalidTree(format!($($arg)*)) };
}
pub(crate) use invalid;
