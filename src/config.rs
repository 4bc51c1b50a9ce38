//! The operator's driver ConfigMap.

/// The ConfigMap key holding the operator's driver table.
pub const CONFIG_MAP_KEY: &str = "drivers.yaml";
