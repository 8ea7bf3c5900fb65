//! EROFS on-disk format for metadata-only bootstraps whose file data lives in external blob
//! devices, and the erofsd blob format those devices are stored in.
//!
//! One format library, thin tools on top (as erofs-utils' `lib/` serves mkfs, fsck and dump):
//! * [`ondisk`] — the raw structures, byte-exact, with encode/decode;
//! * [`tree`] — the in-memory tree builders fill;
//! * [`writer`] — lays a tree out as a bootstrap;
//! * [`reader`] — walks, stats and reads any image, validating every offset against its bounds;
//! * [`blob`] — the stored blob format: groups, the group table, compression and checksums;
//! * [`blobtable`] — the erofsd extension header and the on-disk blob/group tables.
//! * [`holes`] — interior holes, which EROFS over fscache reads wrong, and the bootstrap
//!   rewrite that points them at a zero extent;
//! * [`rafs`] — nydus RAFS v6 blob tables and blob meta; [`inflate_resume`] — raw inflate
//!   resumed mid-gzip for nydus zran blobs.

pub mod blob;
pub mod blobtable;
pub mod error;
pub mod holes;
pub mod inflate_resume;
pub mod ondisk;
pub mod rafs;
pub mod reader;
pub mod tree;
pub mod writer;

pub use error::{Error, Result};
