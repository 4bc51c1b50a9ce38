//! userns-labeler: labels PersistentVolumeClaims and PersistentVolumes with whether their storage
//! supports idmapped mounts, and enables Kubernetes user namespaces (`spec.hostUsers: false`) on
//! pods when — and only when — that is safe.

pub mod admin;
pub mod cache;
pub mod capability;
pub mod cli;
pub mod config;
pub mod controller;
pub mod evidence;
pub mod keys;
pub mod leader;
pub mod limits;
pub mod manifests;
pub mod metrics;
pub mod nodes;
pub mod policy_maps;
pub mod runtime;
pub mod telemetry;
pub mod webhook;
