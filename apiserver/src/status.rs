//! Kubernetes `Status` errors (apimachinery `api/errors`): the HTTP code, `reason` and
//! `details.causes` real clients key on (kubectl, kube-rs, client-go).

use serde_json::{json, Value};
use skiff_core::validation::Cause;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }
    /// `resource` is the plural (`pods`), with the group if any (`ingresses.networking.k8s.io`).
    pub fn not_found(resource: &str, name: &str) -> Self {
        let (kind, group) = split_group(resource);
        Self::new(404, "NotFound", format!("{resource} {name:?} not found"))
            .with_details(json!({"name": name, "group": group, "kind": kind}))
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        let (kind, group) = split_group(resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{resource} {name:?} already exists"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }
    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        let (kind, group) = split_group(resource);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} {name:?}: {why}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }
    pub fn stale(resource: &str, name: &str) -> Self {
        Self::conflict(resource, name, "the object has been modified; please apply your changes to the latest version and try again")
    }
    /// 422 Invalid, listing each offending field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[Cause]) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let msg = if summary.len() == 1 {
            format!("{kind} {name:?} is invalid: {}", summary[0])
        } else {
            format!("{kind} {name:?} is invalid: [{}]", summary.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(422, "Invalid", msg)
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(resource: &str, name: &str, why: &str) -> Self {
        let (kind, group) = split_group(resource);
        let msg = if name.is_empty() {
            format!("{resource} is forbidden: {why}")
        } else {
            format!("{resource} {name:?} is forbidden: {why}")
        };
        Self::new(403, "Forbidden", msg)
            .with_details(json!({"name": name, "group": group, "kind": kind}))
    }
    pub fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", msg)
    }
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"))
    }
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", msg)
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {msg}"),
        )
    }
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn split_group(resource: &str) -> (&str, &str) {
    resource.split_once('.').unwrap_or((resource, ""))
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shapes() {
        let s = ApiError::not_found("pods", "x").to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "pods \"x\" not found");
        let c = [Cause::invalid("metadata.name", "X", "bad")];
        let s = ApiError::invalid("Pod", "", "X", &c).to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        let s = ApiError::not_found("ingresses.networking.k8s.io", "i").to_status();
        assert_eq!(s["details"]["group"], "networking.k8s.io");
    }
}
