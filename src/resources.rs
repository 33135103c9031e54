//! Resolving what users type (`po`, `pods`, `Pod`, `deployment.apps`) to API resources, from the
//! server's discovery documents, as kubectl's RESTMapper does.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use skiff_core::client::ApiClient;

#[derive(Debug, Clone)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    fn base(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
    /// The collection path, in `ns` when namespaced (all namespaces when `ns` is None).
    pub fn collection(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{}/{}", self.base(), ns, self.plural)
            }
            _ => format!("{}/{}", self.base(), self.plural),
        }
    }
    pub fn item(&self, ns: Option<&str>, name: &str) -> String {
        format!("{}/{}", self.collection(ns), name)
    }
    /// `kind.group` in lower case, as kubectl names objects (`pod/web`, `ingress.networking.k8s.io/x`).
    pub fn display(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_lowercase()
        } else {
            format!("{}.{}", self.kind.to_lowercase(), self.group)
        }
    }
}

pub struct Catalog {
    pub resources: Vec<Resource>,
}

async fn fetch(c: &ApiClient, path: &str) -> Result<Value> {
    let r = c.get_json(path).await?;
    if r.status != 200 {
        bail!("GET {path}: HTTP {}", r.status);
    }
    Ok(r.json())
}

impl Catalog {
    pub async fn load(c: &ApiClient) -> Result<Self> {
        let mut gvs = vec![("".to_string(), "v1".to_string())];
        let groups = fetch(c, "/apis").await?;
        for g in groups["groups"].as_array().into_iter().flatten() {
            let name = g["name"].as_str().unwrap_or("").to_string();
            let v = g["preferredVersion"]["version"]
                .as_str()
                .unwrap_or("v1")
                .to_string();
            gvs.push((name, v));
        }
        let mut resources = Vec::new();
        for (g, v) in gvs {
            let path = if g.is_empty() {
                format!("/api/{v}")
            } else {
                format!("/apis/{g}/{v}")
            };
            let list = fetch(c, &path).await?;
            for r in list["resources"].as_array().into_iter().flatten() {
                let plural = r["name"].as_str().unwrap_or("");
                if plural.contains('/') {
                    continue;
                }
                resources.push(Resource {
                    group: g.clone(),
                    version: v.clone(),
                    kind: r["kind"].as_str().unwrap_or("").to_string(),
                    plural: plural.to_string(),
                    singular: r["singularName"].as_str().unwrap_or("").to_string(),
                    namespaced: r["namespaced"].as_bool().unwrap_or(false),
                    short_names: r["shortNames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                    categories: r["categories"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                });
            }
        }
        Ok(Self { resources })
    }

    /// Finds a resource by plural, singular, short name or kind, optionally `.group`-qualified.
    pub fn resolve(&self, what: &str) -> Result<&Resource> {
        let lw = what.to_lowercase();
        let (name, group) = match lw.split_once('.') {
            Some((n, g)) => (n.to_string(), Some(g.to_string())),
            None => (lw.clone(), None),
        };
        self.resources
            .iter()
            .filter(|r| group.as_deref().is_none_or(|g| r.group == g))
            .find(|r| {
                r.plural == name
                    || r.singular == name
                    || r.kind.to_lowercase() == name
                    || r.short_names.contains(&name)
            })
            .ok_or_else(|| anyhow!("the server doesn't have a resource type {what:?}"))
    }

    /// The resources of a category (`all`), as kubectl expands `get all`.
    pub fn category(&self, name: &str) -> Vec<&Resource> {
        self.resources
            .iter()
            .filter(|r| r.categories.iter().any(|c| c == name))
            .collect()
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Result<&Resource> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
            .ok_or_else(|| anyhow!("no matches for kind {kind:?} in version {api_version:?}"))
    }
}
