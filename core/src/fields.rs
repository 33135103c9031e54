//! Kubernetes field selectors (`?fieldSelector=metadata.name=x,status.phase!=Running`): parsing,
//! and matching against the fields each kind supports.

use serde_json::Value;
use thiserror::Error;

use crate::json;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FieldSelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// A conjunction of `field=value` / `field!=value` terms; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, FieldSelectorError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(FieldSelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                value: unescape(value.trim()),
                equal,
            });
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks every field is one the kind supports (`supported` lists the kind-specific ones;
    /// `metadata.name` and `metadata.namespace` are always allowed).
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), FieldSelectorError> {
        for r in &self.requirements {
            let f = r.field.as_str();
            if f != "metadata.name" && f != "metadata.namespace" && !supported.contains(&f) {
                return Err(FieldSelectorError(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = json::path(obj, &r.field)
                .and_then(json::scalar_string)
                .unwrap_or_default();
            (actual == r.value) == r.equal
        })
    }

    /// The value required for `metadata.name`, if the selector pins one (lets the store do a
    /// point lookup instead of a scan).
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equal && r.field == "metadata.name")
            .map(|r| r.value.as_str())
    }
}

fn split_unescaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_match() {
        let fs = FieldSelector::parse("metadata.name=a,status.phase!=Running").unwrap();
        assert_eq!(fs.pinned_name(), Some("a"));
        let pod = json!({"metadata": {"name": "a"}, "status": {"phase": "Pending"}});
        assert!(fs.matches(&pod));
        let running = json!({"metadata": {"name": "a"}, "status": {"phase": "Running"}});
        assert!(!fs.matches(&running));
        // A missing field compares as the empty string.
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=n1")
            .unwrap()
            .matches(&pod));
    }

    #[test]
    fn support_check_and_errors() {
        let fs = FieldSelector::parse("spec.nodeName==n1").unwrap();
        assert!(fs.check_supported(&["spec.nodeName"]).is_ok());
        assert!(fs.check_supported(&[]).is_err());
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn escaped_commas() {
        let fs = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert_eq!(fs.requirements[0].value, "a,b");
    }
}
