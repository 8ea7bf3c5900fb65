//! The fetch core both kernel front-ends share. It knows blobs, groups, sources and targets;
//! it knows nothing about /dev/cachefiles or fanotify.
//!
//! * [`source`] — where stored blob bytes come from (a local directory);
//! * [`registry`] — an OCI distribution registry as a source (range GETs, auth, retries);
//! * [`blob`] — one blob: record, group map, source, fetch-verify-decode of a group run;
//! * [`images`] — loaded images and the blobs they share;
//! * [`fill`] — make a range of a target hold verified data, single-flight per group;
//! * [`readahead`] — background fills ahead of sequential readers;
//! * [`background`] — low-priority threads for read-ahead that decodes and writes in one go;
//! * [`prefetch`] — background fills of a recorded trace or whole blobs, behind demand;
//! * [`trace`] — the order groups were first needed, recorded per target, saved per image;
//! * [`readiness`] — which groups a target already holds, rebuilt from the file itself;
//! * [`writer`] — io_uring (or pwrite) writes into targets;
//! * [`aligned`] — page-aligned buffers (cachefiles writes with O_DIRECT);
//! * [`zran`] — decoding nydus zran chunks (resumed inflate of an original gzip layer).

pub mod aligned;
pub mod background;
pub mod blob;
pub mod fill;
pub mod images;
pub mod prefetch;
pub mod readahead;
pub mod readiness;
pub mod registry;
pub mod source;
pub mod trace;
pub mod writer;
pub mod zran;
