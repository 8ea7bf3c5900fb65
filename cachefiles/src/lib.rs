//! /dev/cachefiles on-demand protocol (see ../shared/notes/cachefiles-protocol.md).
