//! Small helpers for reading Kubernetes objects held as JSON values.

use serde_json::Value;

/// Looks up a dotted path (`metadata.name`, `status.phase`) in a JSON object.
pub fn path<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

/// The string at a dotted path, or `""`.
pub fn str_at<'a>(v: &'a Value, dotted: &str) -> &'a str {
    path(v, dotted).and_then(Value::as_str).unwrap_or("")
}

/// Renders a scalar JSON value the way field selectors compare it (`true`, `3`, `abc`).
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

pub fn name(v: &Value) -> &str {
    str_at(v, "metadata.name")
}

pub fn namespace(v: &Value) -> &str {
    str_at(v, "metadata.namespace")
}
