//! userns-labeler: labels PersistentVolumeClaims and PersistentVolumes with whether their storage
//! supports idmapped mounts, and enables Kubernetes user namespaces (`spec.hostUsers: false`) on
//! pods when — and only when — that is safe.

pub mod capability;
pub mod cli;
pub mod config;
pub mod keys;
pub mod manifests;
pub mod cache;
pub mod webhook;
