//! The response AdmissionReview on the wire.
//!
//! kube's `AdmissionReview` serialises the patch bytes as a JSON array of numbers, which the API
//! server accepts, but which is four times the size of the patch and slow to write. This writes
//! the same document with the patch as a base64 string, the encoding of Go's `[]byte` that the
//! API server's own types use (`admission/v1.AdmissionResponse.Patch`).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::core::Status;
use kube::core::admission::AdmissionResponse;
use serde::{Serialize, Serializer};

/// `patchType` of a JSON Patch, the only type admission supports.
const JSON_PATCH: &str = "JSONPatch";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    audit_annotations: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(self.0))
    }
}

/// The AdmissionReview answering with `response`, as JSON: `apiVersion` and `kind` from the
/// response (copied from the request), `response` with `uid`, `allowed`, `status`, and the
/// patch base64-encoded with `patchType: JSONPatch`.
pub fn encode(response: &AdmissionResponse) -> serde_json::Result<Vec<u8>> {
    let review = ReviewOut {
        api_version: &response.types.api_version,
        kind: &response.types.kind,
        response: ResponseOut {
            uid: &response.uid,
            allowed: response.allowed,
            status: &response.result,
            patch: response.patch.as_deref().map(Base64),
            patch_type: response.patch.is_some().then_some(JSON_PATCH),
            audit_annotations: &response.audit_annotations,
            warnings: response.warnings.as_ref(),
        },
    };
    let patch_len = response.patch.as_ref().map_or(0, Vec::len);
    let mut body = Vec::with_capacity(256 + patch_len * 4 / 3);
    serde_json::to_writer(&mut body, &review)?;
    Ok(body)
}
