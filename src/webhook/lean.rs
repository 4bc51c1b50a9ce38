//! The fast path of request decoding: a pod CREATE review decoded straight into the
//! [`PodCreate`] the webhook decides on, borrowing strings from the request body.
//!
//! Decoding the whole review into k8s-openapi types allocates every string of the pod (images,
//! env, probes, managedFields, …) and fills structs of several KiB (a `Volume` is over 3 KiB);
//! that was most of the CPU time of an admission. This decoder walks the JSON once and keeps
//! exactly what [`PodCreate::of`] takes from a fully decoded request:
//! - the review's `apiVersion` and `kind`; the request's `uid`, `name` and `namespace`;
//! - the pod's `metadata.name`, `generateName` and `namespace`, the value of the opt-out label,
//!   whether `annotations` is present and the value of the decision annotation;
//! - the [`PodFacts`]: `hostUsers`, `hostNetwork`, `hostPID`, `hostIPC`, `os.name`, whether
//!   `resourceClaims` is empty, the IDs of the pod's `securityContext`; per container, init and
//!   ephemeral container its `name`, whether `volumeDevices` is empty, and `privileged`,
//!   `runAsUser`, `runAsGroup` of its `securityContext`; per volume its name and its
//!   [`VolumeSource`] (claim name, host path, CSI driver, fsType and attributes, the ephemeral
//!   claim template with its k8s-openapi type, or only which source it is).
//!
//! Everything else is skipped without being allocated; its JSON syntax is still checked.
//!
//! A member that is no volume source of this k8s-openapi version is skipped, as in a full
//! decode, so such a volume has no source and still fails closed as `UnrecognizedVolume`; a test
//! checks the list of sources against k8s-openapi's own.
//!
//! A review whose request is not a pod CREATE (another operation, kind or subresource) is
//! answered from the same pass ([`Review::Other`]: allowed, unchanged, from its `apiVersion`,
//! `kind` and `uid`), so it is decoded once; its object is skipped when the request's `kind`,
//! `operation` or `subResource` come first (as the API server writes them), else read as a pod
//! and, if that fails, the review declined. The request's own fields are checked as for a pod.
//!
//! The decoder only answers these cases and declines anything else, which then goes through
//! kube's full typed decoder (and its error handling) exactly as before:
//! - anything that is not a review with a request (a `response`, no request), a pod CREATE
//!   without an object or with a non-null `oldObject`;
//! - a field it keeps having another type than the full decoder expects. Kept pod fields follow
//!   k8s-openapi's rules (`null` is "absent", the last of duplicate keys wins); the review and
//!   request fields are as strict as kube's derived types or stricter (a duplicate key, or an
//!   object written as an array, is left to the full decoder);
//! - a volume with two sources (the API server rejects those; the full decode picks one).
//!
//! The one difference to a full decode: a member that is never read (an image, an env var, a
//! timestamp in `managedFields`, the items of a `configMap` volume, `userInfo`) is only checked
//! to be JSON (a volume source, `userInfo`, a security context: a JSON object), not against its
//! type. A review whose pod is malformed only there is decided instead of being admitted
//! unchanged as undecodable. The API server serialises the object from its own validated typed
//! form, so such a review does not come from it, and the decision depends only on fields that
//! are decoded and checked as in the full decoder. Likewise the skipped object of a review that
//! is no pod CREATE is only checked to be JSON: one the full decoder could not read at all (a
//! 400) is answered allowed, unchanged, as it would be if it could.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::EphemeralVolumeSource;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::admission::{PodCreate, PodMeta};
use crate::capability::pod::{
    ContainerFacts, ContainerKind, PodFacts, PodVolume, RequiredNodeAffinity, SpecFacts,
    VolumeSource,
};
use crate::capability::sources::{PodMember, pod_volume_member};
use crate::keys::Keys;

/// Decodes `body` if it is an AdmissionReview of a pod CREATE with an object; `None` for
/// anything else (then decode it with the full typed decoder).
pub fn decode_pod_create<'b>(body: &'b [u8], keys: &Keys) -> Option<PodCreate<'b>> {
    match decode_review(body, keys) {
        Review::PodCreate(pod) => Some(*pod),
        Review::Other(_) | Review::Declined => None,
    }
}

/// What the fast path makes of a request body.
#[derive(Debug)]
pub enum Review<'b> {
    /// A pod CREATE with an object.
    PodCreate(Box<PodCreate<'b>>),
    /// A review of something else (another operation, kind or subresource): answered
    /// "allowed, unchanged" from these fields, without a second decode. Its object is skipped.
    Other(OtherRequest<'b>),
    /// Anything else: left to the full typed decoder.
    Declined,
}

/// The fields of a review that is not a pod CREATE which its answer echoes.
#[derive(Clone, Debug, PartialEq)]
pub struct OtherRequest<'b> {
    pub api_version: Cow<'b, str>,
    pub kind: Cow<'b, str>,
    pub uid: Cow<'b, str>,
}

/// Decodes `body` in one pass: a pod CREATE into its [`PodCreate`], any other well-formed
/// review into the fields its answer needs, anything else [`Review::Declined`].
pub fn decode_review<'b>(body: &'b [u8], keys: &Keys) -> Review<'b> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let Ok(review) = (ReviewSeed { keys }).deserialize(&mut de) else {
        return Review::Declined;
    };
    // Like `serde_json::from_slice`: only whitespace may follow.
    if de.end().is_err() {
        return Review::Declined;
    }
    review
}

/// A string, borrowed from the input unless it contains escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

impl<'de> Str<'de> {
    fn as_str(&self) -> &str {
        &self.0
    }
    fn cow(this: Option<Str<'de>>) -> Option<Cow<'de, str>> {
        this.map(|s| s.0)
    }
}

/// The rejection of a review the fast path leaves to the full decoder. The message is never
/// shown: the full decoder reports its own.
fn bail<E: de::Error>(what: &str) -> E {
    E::custom(format_args!("not on the fast path: {what}"))
}

/// Sets a field of a kube (serde-derived) type, where a duplicate key is an error.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, field: &str) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(bail(field));
    }
    Ok(())
}

/// Skips the value of the current member.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

/// `null` is `None`, anything else goes through `S`.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct NullableVisitor<S>(S);
        impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for NullableVisitor<S> {
            type Value = Option<S::Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null or a value")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                self.0.deserialize(d).map(Some)
            }
        }
        deserializer.deserialize_option(NullableVisitor(self.0))
    }
}

/// An object whose members are not read: it must be a JSON object, like the k8s-openapi type
/// it stands for.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyObjectVisitor;
        impl<'de> Visitor<'de> for AnyObjectVisitor {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        deserializer.deserialize_map(AnyObjectVisitor)
    }
}

/// Counts the elements of a list of objects whose members are not read (`resourceClaims`,
/// `volumeDevices`).
struct CountObjects;

impl<'de> Visitor<'de> for CountObjects {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while seq.next_element::<AnyObject>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// Whether a list of objects (`null` or absent: no list) has any element.
fn non_empty<'de, A: MapAccess<'de>>(map: &mut A) -> Result<bool, A::Error> {
    Ok(map
        .next_value_seed(Nullable(CountSeed))?
        .is_some_and(|n| n > 0))
}

struct CountSeed;

impl<'de> DeserializeSeed<'de> for CountSeed {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(CountObjects)
    }
}

/// Implements `DeserializeSeed` (as a JSON object) and the `Visitor` boilerplate for a seed
/// type whose `visit_map` is given.
macro_rules! object_seed {
    ($seed:ty, $value:ty, $what:literal, |$this:ident, $map:ident| $body:block) => {
        impl<'de> DeserializeSeed<'de> for $seed {
            type Value = $value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.deserialize_map(self)
            }
        }
        impl<'de> Visitor<'de> for $seed {
            type Value = $value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($what)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<$value, A::Error> {
                let $this = self;
                $body
            }
        }
    };
}

struct ReviewSeed<'k> {
    keys: &'k Keys,
}

object_seed!(
    ReviewSeed<'_>,
    Review<'de>,
    "an AdmissionReview",
    |this, map| {
        let mut api_version = None::<Str>;
        let mut kind = None::<Str>;
        let mut request = None;
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "apiVersion" => once(&mut api_version, map.next_value()?, "apiVersion")?,
                "kind" => once(&mut kind, map.next_value()?, "kind")?,
                "request" => once(
                    &mut request,
                    map.next_value_seed(Nullable(RequestSeed { keys: this.keys }))?,
                    "request",
                )?,
                "response" => {
                    if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                        return Err(bail("a response"));
                    }
                }
                _ => skip(&mut map)?,
            }
        }
        let (Some(api_version), Some(kind), Some(Some(request))) = (api_version, kind, request)
        else {
            return Err(bail("not a review with a request"));
        };
        if kind.as_str() != "AdmissionReview"
            || !api_version.as_str().starts_with("admission.k8s.io/")
        {
            return Err(bail("not an AdmissionReview"));
        }
        Ok(match request {
            Request::PodCreate(mut pod) => {
                pod.api_version = api_version.0;
                pod.kind = kind.0;
                Review::PodCreate(pod)
            }
            Request::Other { uid } => Review::Other(OtherRequest {
                api_version: api_version.0,
                kind: kind.0,
                uid,
            }),
        })
    }
);

/// A `kind`, `requestKind`, `resource` or `requestResource`: `group`, `version` and the third
/// member `name` (`kind` or `resource`) are required strings, as in kube's types; only the group
/// and the third member are kept.
struct GroupVersionSeed(&'static str);

object_seed!(
    GroupVersionSeed,
    (Str<'de>, Str<'de>),
    "a group, version and kind or resource",
    |this, map| {
        let (mut group, mut version, mut name) = (None::<Str>, None::<Str>, None::<Str>);
        let mut api_version = None::<Str>;
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "group" => once(&mut group, map.next_value()?, "group")?,
                "version" => once(&mut version, map.next_value()?, "version")?,
                // kube's GroupVersionResource also reads this one.
                "api_version" if this.0 == "resource" => {
                    once(&mut api_version, map.next_value()?, "api_version")?
                }
                other if other == this.0 => once(&mut name, map.next_value()?, this.0)?,
                _ => skip(&mut map)?,
            }
        }
        match (group, version, name) {
            (Some(group), Some(_), Some(name)) => Ok((group, name)),
            _ => Err(bail("an incomplete kind or resource")),
        }
    }
);

struct RequestSeed<'k> {
    keys: &'k Keys,
}

/// A decoded request: a pod CREATE, or the uid of another one.
enum Request<'de> {
    PodCreate(Box<PodCreate<'de>>),
    Other { uid: Cow<'de, str> },
}

/// Whether what is known of a request already says it is no pod CREATE (as `is_pod_create`).
fn known_other(
    operation: Option<&Str<'_>>,
    kind: Option<&(Str<'_>, Str<'_>)>,
    sub_resource: Option<&Option<Str<'_>>>,
) -> bool {
    operation.is_some_and(|o| o.as_str() != "CREATE")
        || kind.is_some_and(|(group, kind)| !group.as_str().is_empty() || kind.as_str() != "Pod")
        || sub_resource.is_some_and(|s| s.as_ref().is_some_and(|s| !s.as_str().is_empty()))
}

object_seed!(
    RequestSeed<'_>,
    Request<'de>,
    "an AdmissionRequest",
    |this, map| {
        let mut uid = None::<Str>;
        let mut kind = None;
        let mut resource = None;
        let mut sub_resource = None::<Option<Str>>;
        let mut request_kind = None;
        let mut request_resource = None;
        let mut request_sub_resource = None::<Option<Str>>;
        let mut name = None::<Str>;
        let mut namespace = None::<Option<Str>>;
        let mut operation = None::<Str>;
        let mut user_info = None::<AnyObject>;
        let mut object = None;
        // The object of a request known not to be a pod CREATE, skipped (syntax checked).
        let mut skipped_object = false;
        let mut old_object = None::<Option<IgnoredAny>>;
        let mut dry_run = None::<bool>;
        let mut options = None::<Option<IgnoredAny>>;
        let kinds = || Nullable(GroupVersionSeed("kind"));
        let resources = || Nullable(GroupVersionSeed("resource"));
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "uid" => once(&mut uid, map.next_value()?, "uid")?,
                "kind" => once(
                    &mut kind,
                    map.next_value_seed(GroupVersionSeed("kind"))?,
                    "kind",
                )?,
                "resource" => once(
                    &mut resource,
                    map.next_value_seed(GroupVersionSeed("resource"))?,
                    "resource",
                )?,
                "subResource" => once(&mut sub_resource, map.next_value()?, "subResource")?,
                "requestKind" => once(
                    &mut request_kind,
                    map.next_value_seed(kinds())?,
                    "requestKind",
                )?,
                "requestResource" => once(
                    &mut request_resource,
                    map.next_value_seed(resources())?,
                    "requestResource",
                )?,
                "requestSubResource" => once(
                    &mut request_sub_resource,
                    map.next_value()?,
                    "requestSubResource",
                )?,
                "name" => once(&mut name, map.next_value()?, "name")?,
                "namespace" => once(&mut namespace, map.next_value()?, "namespace")?,
                "operation" => once(&mut operation, map.next_value()?, "operation")?,
                "userInfo" => once(&mut user_info, map.next_value()?, "userInfo")?,
                "object" if object.is_some() || skipped_object => return Err(bail("object")),
                "object"
                    if known_other(operation.as_ref(), kind.as_ref(), sub_resource.as_ref()) =>
                {
                    skip(&mut map)?;
                    skipped_object = true;
                }
                "object" => once(
                    &mut object,
                    map.next_value_seed(Nullable(PodSeed { keys: this.keys }))?,
                    "object",
                )?,
                "oldObject" => once(&mut old_object, map.next_value()?, "oldObject")?,
                "dryRun" => once(&mut dry_run, map.next_value()?, "dryRun")?,
                "options" => once(&mut options, map.next_value()?, "options")?,
                _ => skip(&mut map)?,
            }
        }
        let (Some(uid), Some((group, kind)), Some(_), Some(operation), Some(_)) =
            (uid, kind, resource, operation, user_info)
        else {
            return Err(bail("an incomplete request"));
        };
        // As `is_pod_create`: CREATE of a core Pod, not of a subresource.
        let kind = (group, kind);
        if known_other(Some(&operation), Some(&kind), sub_resource.as_ref()) {
            return Ok(Request::Other { uid: uid.0 });
        }
        if matches!(old_object, Some(Some(_))) {
            return Err(bail("an oldObject"));
        }
        let Some(Some((meta, facts))) = object else {
            return Err(bail("no object"));
        };
        Ok(Request::PodCreate(Box::new(PodCreate {
            // Set from the review.
            api_version: Cow::Borrowed(""),
            kind: Cow::Borrowed(""),
            uid: uid.0,
            name: name.map(|n| n.0).unwrap_or_default(),
            namespace: Str::cow(namespace.flatten()),
            meta,
            facts,
        })))
    }
);

/// The pod, as k8s-openapi's `Pod` decodes it: `apiVersion` and `kind` checked when present.
struct PodSeed<'k> {
    keys: &'k Keys,
}

object_seed!(
    PodSeed<'_>,
    (PodMeta<'de>, PodFacts<'de>),
    "a Pod",
    |this, map| {
        let mut meta = None;
        let mut spec = None;
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "apiVersion" => {
                    if map.next_value::<Str>()?.as_str() != "v1" {
                        return Err(bail("not a v1 object"));
                    }
                }
                "kind" => {
                    if map.next_value::<Str>()?.as_str() != "Pod" {
                        return Err(bail("not a Pod"));
                    }
                }
                "metadata" => meta = map.next_value_seed(Nullable(MetaSeed { keys: this.keys }))?,
                "spec" => spec = map.next_value_seed(Nullable(SpecSeed))?,
                _ => skip(&mut map)?,
            }
        }
        let (meta, name) = meta.unwrap_or_default();
        Ok((meta, PodFacts { name, spec }))
    }
);

struct MetaSeed<'k> {
    keys: &'k Keys,
}

object_seed!(
    MetaSeed<'_>,
    (PodMeta<'de>, Option<Cow<'de, str>>),
    "an ObjectMeta",
    |this, map| {
        let mut meta = PodMeta::default();
        let mut name = None;
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "name" => name = Str::cow(map.next_value()?),
                "generateName" => meta.generate_name = Str::cow(map.next_value()?),
                "namespace" => meta.namespace = Str::cow(map.next_value()?),
                "labels" => {
                    meta.opt_out = map
                        .next_value_seed(Nullable(OneEntry(&this.keys.opt_out)))?
                        .flatten()
                }
                "annotations" => {
                    let annotations =
                        map.next_value_seed(Nullable(OneEntry(&this.keys.decision)))?;
                    meta.has_annotations = annotations.is_some();
                    meta.decision = annotations.flatten();
                }
                _ => skip(&mut map)?,
            }
        }
        Ok((meta, name))
    }
);

/// A string-to-string map (labels, annotations) of which one key's value is kept. Every key and
/// value must still be a string, as in the full decode; the last of duplicate keys wins.
struct OneEntry<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for OneEntry<'_> {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneEntry<'_> {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = None;
        while let Some((key, value)) = map.next_entry::<Str, Str>()? {
            if key.as_str() == self.0 {
                kept = Some(value.0);
            }
        }
        Ok(kept)
    }
}

struct SpecSeed;

object_seed!(SpecSeed, SpecFacts<'de>, "a PodSpec", |_this, map| {
    let mut spec = SpecFacts::default();
    let (mut containers, mut init, mut ephemeral) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(key) = map.next_key::<Str>()? {
        match key.as_str() {
            "hostUsers" => spec.host_users = map.next_value()?,
            "hostNetwork" => spec.host_network = map.next_value()?,
            "hostPID" => spec.host_pid = map.next_value()?,
            "hostIPC" => spec.host_ipc = map.next_value()?,
            "os" => spec.os_name = map.next_value_seed(Nullable(OsSeed))?,
            "nodeName" => spec.node_name = Str::cow(map.next_value()?),
            // Rare enough to decode with k8s-openapi's own type: the same errors as the full
            // decoder, and only its shape is kept.
            "affinity" => {
                spec.node_affinity = RequiredNodeAffinity::of(
                    map.next_value::<Option<k8s_openapi::api::core::v1::Affinity>>()?
                        .as_ref(),
                )
            }
            "resourceClaims" => spec.resource_claims = non_empty(&mut map)?,
            "securityContext" => {
                let ids = map
                    .next_value_seed(Nullable(PodSecuritySeed))?
                    .unwrap_or_default();
                (
                    spec.run_as_user,
                    spec.run_as_group,
                    spec.fs_group,
                    spec.supplemental_groups,
                ) = ids;
            }
            "volumes" => {
                spec.volumes = map
                    .next_value_seed(Nullable(VolumesSeed))?
                    .unwrap_or_default()
            }
            "containers" => {
                containers = map
                    .next_value_seed(Nullable(ContainersSeed(ContainerKind::Container)))?
                    .unwrap_or_default()
            }
            "initContainers" => {
                init = map
                    .next_value_seed(Nullable(ContainersSeed(ContainerKind::Init)))?
                    .unwrap_or_default()
            }
            "ephemeralContainers" => {
                ephemeral = map
                    .next_value_seed(Nullable(ContainersSeed(ContainerKind::Ephemeral)))?
                    .unwrap_or_default()
            }
            _ => skip(&mut map)?,
        }
    }
    containers.append(&mut init);
    containers.append(&mut ephemeral);
    spec.containers = containers;
    Ok(spec)
});

/// `os`: its `name` (absent or `null`: empty, as k8s-openapi's required string).
struct OsSeed;

object_seed!(OsSeed, Cow<'de, str>, "a PodOS", |_this, map| {
    let mut name = None;
    while let Some(key) = map.next_key::<Str>()? {
        match key.as_str() {
            "name" => name = Str::cow(map.next_value()?),
            _ => skip(&mut map)?,
        }
    }
    Ok(name.unwrap_or_default())
});

/// The pod's security context: `runAsUser`, `runAsGroup`, `fsGroup`, `supplementalGroups`.
struct PodSecuritySeed;

type PodIds<'de> = (Option<i64>, Option<i64>, Option<i64>, Cow<'de, [i64]>);

object_seed!(
    PodSecuritySeed,
    PodIds<'de>,
    "a PodSecurityContext",
    |_this, map| {
        let mut ids: PodIds = Default::default();
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "runAsUser" => ids.0 = map.next_value()?,
                "runAsGroup" => ids.1 = map.next_value()?,
                "fsGroup" => ids.2 = map.next_value()?,
                "supplementalGroups" => {
                    ids.3 = Cow::Owned(map.next_value::<Option<Vec<i64>>>()?.unwrap_or_default())
                }
                _ => skip(&mut map)?,
            }
        }
        Ok(ids)
    }
);

/// A container's security context: `privileged`, `runAsUser`, `runAsGroup`.
struct SecuritySeed;

type ContainerSecurity = (Option<bool>, Option<i64>, Option<i64>);

object_seed!(
    SecuritySeed,
    ContainerSecurity,
    "a SecurityContext",
    |_this, map| {
        let mut sc = ContainerSecurity::default();
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "privileged" => sc.0 = map.next_value()?,
                "runAsUser" => sc.1 = map.next_value()?,
                "runAsGroup" => sc.2 = map.next_value()?,
                _ => skip(&mut map)?,
            }
        }
        Ok(sc)
    }
);

/// One list of containers.
struct ContainersSeed(ContainerKind);

impl<'de> DeserializeSeed<'de> for ContainersSeed {
    type Value = Vec<ContainerFacts<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ContainersSeed {
    type Value = Vec<ContainerFacts<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of containers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut containers = Vec::new();
        while let Some(c) = seq.next_element_seed(ContainerSeed(self.0))? {
            containers.push(c);
        }
        Ok(containers)
    }
}

struct ContainerSeed(ContainerKind);

object_seed!(
    ContainerSeed,
    ContainerFacts<'de>,
    "a container",
    |this, map| {
        let mut name = None;
        let mut devices = false;
        let mut sc = ContainerSecurity::default();
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "name" => name = Str::cow(map.next_value()?),
                "volumeDevices" => devices = non_empty(&mut map)?,
                "securityContext" => {
                    sc = map
                        .next_value_seed(Nullable(SecuritySeed))?
                        .unwrap_or_default()
                }
                _ => skip(&mut map)?,
            }
        }
        Ok(ContainerFacts {
            kind: this.0,
            name: name.unwrap_or_default(),
            volume_devices: devices,
            privileged: sc.0,
            run_as_user: sc.1,
            run_as_group: sc.2,
        })
    }
);

struct VolumesSeed;

impl<'de> DeserializeSeed<'de> for VolumesSeed {
    type Value = Vec<PodVolume<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for VolumesSeed {
    type Value = Vec<PodVolume<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of volumes")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut volumes = Vec::new();
        while let Some(v) = seq.next_element_seed(VolumeSeed)? {
            volumes.push(v);
        }
        Ok(volumes)
    }
}

/// How a volume source member is read, from what the member is
/// ([`crate::capability::sources::pod_volume_member`]).
#[derive(Clone, Copy)]
struct SourceRead(PodMember);

impl<'de> DeserializeSeed<'de> for SourceRead {
    type Value = Option<VolumeSource<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let present = |d: D| Option::<AnyObject>::deserialize(d).map(|o| o.is_some());
        Ok(match self.0 {
            PodMember::NodeLocal => present(d)?.then_some(VolumeSource::NodeLocal),
            PodMember::InTree {
                driver,
                fs_type: false,
            } => present(d)?.then_some(VolumeSource::Driver {
                driver: Cow::Borrowed(driver),
                fs_type: None,
                attributes: None,
            }),
            PodMember::Ephemeral => Option::<EphemeralVolumeSource>::deserialize(d)?.map(|e| {
                let template = e.volume_claim_template.map(|t| Box::new(Cow::Owned(t)));
                VolumeSource::Ephemeral(template)
            }),
            PodMember::Claim => Nullable(SourceFields::Claim).deserialize(d)?,
            PodMember::HostPath => Nullable(SourceFields::HostPath).deserialize(d)?,
            PodMember::Csi => Nullable(SourceFields::Csi).deserialize(d)?,
            PodMember::InTree {
                driver,
                fs_type: true,
            } => Nullable(SourceFields::Disk(driver)).deserialize(d)?,
        })
    }
}

/// The sources whose members are read: required strings absent or `null` are empty, as in
/// k8s-openapi.
#[derive(Clone, Copy)]
enum SourceFields {
    /// `claimName`.
    Claim,
    /// `path`.
    HostPath,
    /// `driver`, `fsType`, `volumeAttributes`.
    Csi,
    /// `fsType` of the in-tree disk named by this pseudo-driver.
    Disk(&'static str),
}

object_seed!(
    SourceFields,
    VolumeSource<'de>,
    "a volume source",
    |this, map| {
        let (mut first, mut fs_type) = (None, None);
        let mut attributes = None::<BTreeMap<String, String>>;
        let first_member = match this {
            SourceFields::Claim => "claimName",
            SourceFields::HostPath => "path",
            SourceFields::Csi => "driver",
            SourceFields::Disk(_) => "",
        };
        let is_csi = matches!(this, SourceFields::Csi);
        let has_fs_type = matches!(this, SourceFields::Csi | SourceFields::Disk(_));
        while let Some(key) = map.next_key::<Str>()? {
            match key.as_str() {
                "fsType" if has_fs_type => fs_type = Str::cow(map.next_value()?),
                "volumeAttributes" if is_csi => attributes = map.next_value()?,
                k if !first_member.is_empty() && k == first_member => {
                    first = Str::cow(map.next_value()?)
                }
                _ => skip(&mut map)?,
            }
        }
        let first = first.unwrap_or_default();
        Ok(match this {
            SourceFields::Claim => VolumeSource::Claim(first),
            SourceFields::HostPath => VolumeSource::HostPath(first),
            SourceFields::Csi => VolumeSource::Driver {
                driver: first,
                fs_type,
                attributes: attributes.map(Cow::Owned),
            },
            SourceFields::Disk(name) => VolumeSource::Driver {
                driver: Cow::Borrowed(name),
                fs_type,
                attributes: None,
            },
        })
    }
);

/// One volume: its name and its source. The last value of a member counts, as in k8s-openapi;
/// a second source is left to the full decoder (which would pick one by its order).
struct VolumeSeed;

object_seed!(VolumeSeed, PodVolume<'de>, "a volume", |_this, map| {
    let mut name = None;
    let mut source: Option<(Str, VolumeSource)> = None;
    while let Some(key) = map.next_key::<Str>()? {
        if key.as_str() == "name" {
            name = Str::cow(map.next_value()?);
            continue;
        }
        let Some(read) = pod_volume_member(key.as_str()).map(SourceRead) else {
            skip(&mut map)?;
            continue;
        };
        let value = map.next_value_seed(read)?;
        let same_member = source
            .as_ref()
            .is_some_and(|(k, _)| k.as_str() == key.as_str());
        match value {
            Some(value) if source.is_none() || same_member => source = Some((key, value)),
            Some(_) => return Err(bail("a volume with two sources")),
            None if same_member => source = None,
            None => {}
        }
    }
    Ok(PodVolume {
        name: name.unwrap_or_default(),
        source: source.map_or(VolumeSource::Unrecognized, |(_, s)| s),
    })
});
