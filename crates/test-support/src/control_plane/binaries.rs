//! The versions under test and where `make control-plane` caches their binaries.

use std::{fmt::Write as _, path::PathBuf};

use crate::env_nonempty;

/// The pins, read at compile time from the one file that holds them
/// (`tests/control-plane/versions.env`, which `build.sh` reads too).
const VERSIONS_ENV: &str = include_str!("../../../../tests/control-plane/versions.env");

fn pin(key: &str) -> String {
    VERSIONS_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("tests/control-plane/versions.env has no {key}="))
}

/// The Kubernetes version under test: `USERNS_K8S_VERSION`, else the pin.
pub fn k8s_version() -> String {
    env_nonempty("USERNS_K8S_VERSION").unwrap_or_else(|| pin("K8S_VERSION"))
}

/// The etcd version under test: `USERNS_ETCD_VERSION`, else the pin.
pub fn etcd_version() -> String {
    env_nonempty("USERNS_ETCD_VERSION").unwrap_or_else(|| pin("ETCD_VERSION"))
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/control-plane`, as in `build.sh`.
pub fn cache_root() -> PathBuf {
    let base = env_nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env_nonempty("HOME").expect("neither XDG_CACHE_HOME nor HOME is set"))
                .join(".cache")
        });
    base.join("userns-labeler").join("control-plane")
}

/// The cached binaries of the versions under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `<cache>/<k8s version>/kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `<cache>/<k8s version>/kubectl`.
    pub kubectl: PathBuf,
    /// `<cache>/etcd-<etcd version>/etcd`.
    pub etcd: PathBuf,
}

impl Binaries {
    /// Where `make control-plane` puts the binaries of the versions under test.
    pub fn expected() -> Self {
        let root = cache_root();
        let k8s = root.join(k8s_version());
        Binaries {
            kube_apiserver: k8s.join("kube-apiserver"),
            kubectl: k8s.join("kubectl"),
            etcd: root.join(format!("etcd-{}", etcd_version())).join("etcd"),
        }
    }

    /// The binaries, or a panic that says how to build them. Never skips.
    pub fn require() -> Self {
        let bins = Self::expected();
        let missing: Vec<String> = [&bins.kube_apiserver, &bins.kubectl, &bins.etcd]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            let knob = match (
                env_nonempty("USERNS_K8S_VERSION"),
                env_nonempty("USERNS_ETCD_VERSION"),
            ) {
                (None, None) => String::new(),
                (k, e) => {
                    let mut s = String::new();
                    if let Some(k) = k {
                        write!(s, "USERNS_K8S_VERSION={k} ").unwrap();
                    }
                    if let Some(e) = e {
                        write!(s, "USERNS_ETCD_VERSION={e} ").unwrap();
                    }
                    s
                }
            };
            panic!(
                "the test control plane (kubernetes {}, etcd {}) is not built: missing {}.\n\
                 Build it with `{knob}make control-plane` (tests/control-plane/build.sh; needs Go), \
                 or run the tests with `make test`, which builds it first. \
                 To test against an existing cluster instead, set USERNS_TEST_KUBECONFIG=/path/to/kubeconfig.",
                k8s_version(),
                etcd_version(),
                missing.join(", ")
            );
        }
        bins
    }
}
