//! Open cache objects, keyed by the kernel's object_id.
//!
//! An object lives from its OPEN to its CLOSE. It owns the anon fd the kernel installed for it
//! (the only handle through which the object is written and its READs completed). READ tasks
//! hold an `Arc<Object>`, so a CLOSE that arrives while they run only drops the table entry; the
//! fd closes when the last task finishes.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use crate::core::fill::Target;
use super::bootstrap::FscacheBootstrap;

pub enum Kind {
    /// The bootstrap of an image: served from memory.
    Bootstrap { boot: Arc<FscacheBootstrap>, fd: OwnedFd },
    /// A blob: served by the fill engine.
    Blob { target: Arc<Target> },
}

pub struct Object {
    pub object_id: u32,
    /// For logs: the cookie key (fsid or blob id).
    pub cookie: String,
    pub kind: Kind,
    /// Readiness of a blob object is learned from the cache file at the first READ: right after
    /// `copen` the kernel may not have opened the backing file yet (`lseek` → ENOBUFS).
    pub scanned: OnceLock<()>,
}

impl Object {
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::Bootstrap { fd, .. } => fd.as_fd(),
            Kind::Blob { target } => target.fd().as_fd(),
        }
    }
}

#[derive(Default)]
pub struct ObjectTable {
    map: Mutex<HashMap<u32, Arc<Object>>>,
}

impl ObjectTable {
    /// Inserts, replacing (and so closing the fd of) a stale object with the same id.
    pub fn insert(&self, obj: Arc<Object>) -> Option<Arc<Object>> {
        self.map.lock().expect("object table").insert(obj.object_id, obj)
    }

    pub fn get(&self, id: u32) -> Option<Arc<Object>> {
        self.map.lock().expect("object table").get(&id).cloned()
    }

    pub fn remove(&self, id: u32) -> Option<Arc<Object>> {
        self.map.lock().expect("object table").remove(&id)
    }

    /// An open object of blob `id` (prefetch's way in; with several, any one).
    pub fn blob(&self, id: &str) -> Option<Arc<Object>> {
        let map = self.map.lock().expect("object table");
        map.values().find(|o| matches!(&o.kind, Kind::Blob { target } if target.blob.id == id)).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("object table").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.map.lock().expect("object table").clear();
    }
}
