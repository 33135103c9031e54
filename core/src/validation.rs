//! Kubernetes validation rules shared by the API server and clients (apimachinery
//! `util/validation`): DNS-1123 / DNS-1035 names, qualified names for label and annotation
//! keys, label values, annotation size, ConfigMap/Secret keys, and metadata as a whole.

use std::collections::BTreeMap;

/// One offending field, as `Status.details.causes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueDuplicate`,
    /// `FieldValueTooLong`, `FieldValueForbidden`.
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value{detail}"),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value:?}"),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && lower_alnum(b[0])
        && lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| lower_alnum(c) || c == b'-')
}

/// RFC 1123 label: at most 63 characters.
pub fn is_dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !dns_label_shape(s) {
        return Err(DNS1123_LABEL_MSG.into());
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if s.is_empty() || !s.split('.').all(dns_label_shape) {
        return Err(DNS1123_SUBDOMAIN_MSG.into());
    }
    Ok(())
}

/// RFC 1035 label (Service names): starts with a letter.
pub fn is_dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !dns_label_shape(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(DNS1035_LABEL_MSG.into());
    }
    Ok(())
}

fn name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name (label and annotation keys): `[prefix/]name`.
pub fn is_qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        if let Err(e) = is_dns1123_subdomain(p) {
            return Err(format!("prefix part {e}"));
        }
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !name_part_ok(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    Ok(())
}

/// A label value: empty, or a name part of at most 63 characters.
pub fn is_valid_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !name_part_ok(s) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    Ok(())
}

/// A ConfigMap or Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn is_config_map_key(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be between 1 and 253 characters".into());
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        return Err("must not be '.' or '..' or start with '..'".into());
    }
    Ok(())
}

/// Total annotation size limit (keys + values), as the API server enforces it.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

pub fn validate_labels(labels: Option<&BTreeMap<String, String>>, field: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        if let Err(e) = is_qualified_name(k) {
            out.push(Cause::invalid(field, k, &e));
        }
        if let Err(e) = is_valid_label_value(v) {
            out.push(Cause::invalid(format!("{field}.{k}"), v, &e));
        }
    }
    out
}

pub fn validate_annotations(ann: Option<&BTreeMap<String, String>>, field: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    let mut total = 0;
    for (k, v) in ann.into_iter().flatten() {
        if let Err(e) = is_qualified_name(&k.to_lowercase()) {
            out.push(Cause::invalid(field, k, &e));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(Cause::too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    out
}

/// Which rule an object's name must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
    /// Path segment names (e.g. Events): anything but `.`, `..`, `/` and `%`.
    PathSegment,
}

pub fn check_name(rule: NameRule, name: &str) -> Result<(), String> {
    match rule {
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
        NameRule::Dns1123Label => is_dns1123_label(name),
        NameRule::Dns1035Label => is_dns1035_label(name),
        NameRule::PathSegment => {
            if name == "."
                || name == ".."
                || name.contains('/')
                || name.contains('%')
                || name.is_empty()
            {
                Err("may not be '.' or '..' and may not contain '/' or '%'".into())
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("my-name").is_ok());
        assert!(is_dns1123_label("123-abc").is_ok());
        assert!(is_dns1123_label("My-name").is_err());
        assert!(is_dns1123_label("-a").is_err());
        assert!(is_dns1123_label("a-").is_err());
        assert!(is_dns1123_label(&"a".repeat(64)).is_err());
        assert!(is_dns1123_subdomain("a.b.c").is_ok());
        assert!(is_dns1123_subdomain("a..b").is_err());
        assert!(is_dns1123_subdomain("a_b").is_err());
        assert!(is_dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(is_dns1035_label("abc-123").is_ok());
        assert!(is_dns1035_label("1abc").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(is_qualified_name("app").is_ok());
        assert!(is_qualified_name("example.com/app_Name.x").is_ok());
        assert!(is_qualified_name("kubernetes.io/metadata.name").is_ok());
        assert!(is_qualified_name("/app").is_err());
        assert!(is_qualified_name("Example.com/app").is_err());
        assert!(is_qualified_name("app/").is_err());
        assert!(is_qualified_name("a/b/c").is_err());
        assert!(is_qualified_name(&"a".repeat(64)).is_err());
        assert!(is_valid_label_value("").is_ok());
        assert!(is_valid_label_value("v1.2_3-X").is_ok());
        assert!(is_valid_label_value("-v").is_err());
        assert!(is_valid_label_value("has space").is_err());
    }

    #[test]
    fn config_keys() {
        assert!(is_config_map_key("game.properties").is_ok());
        assert!(is_config_map_key("KEY_1").is_ok());
        assert!(is_config_map_key("..data").is_err());
        assert!(is_config_map_key("a/b").is_err());
        assert!(is_config_map_key("").is_err());
    }

    #[test]
    fn metadata_maps() {
        let labels: BTreeMap<String, String> = [
            ("ok".to_string(), "x".to_string()),
            ("bad key".to_string(), "y".to_string()),
        ]
        .into();
        let causes = validate_labels(Some(&labels), "metadata.labels");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "metadata.labels");
        let big: BTreeMap<String, String> = [("a".to_string(), "x".repeat(300 * 1024))].into();
        assert_eq!(
            validate_annotations(Some(&big), "metadata.annotations").len(),
            1
        );
    }
}
