//! The capability engine: pure functions from Kubernetes objects and a driver table to idmap
//! verdicts for claims and volumes, and to the pod decision. No I/O.

pub mod evidence;
pub mod pod;
pub mod pruned;
pub mod resolve;
pub mod sources;
pub mod table;
pub mod workload;

pub use evidence::{Evidence, HostPathEvidence};
pub use pod::{Awaited, Blocker, BlockerCode, PodDecision, decide_pod};
pub use pruned::{Marks, PrunedClaim, PrunedClass, PrunedVolume, ToPruned};
pub use resolve::{
    ClusterView, DriverSource, Snapshot, VolumeVerdict, resolve_claim, resolve_volume,
};
pub use table::{
    AccessMode, DriverTable, Evaluation, Parameters, StorageQuery, TableError, Verdict, VolumeMode,
};
pub use workload::{Workload, WorkloadKind, decide_workload};

#[cfg(test)]
mod tests;
