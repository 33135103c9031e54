//! kubectl-style verbs over the API: apply/create, get (tables, yaml, json, name, watch),
//! describe, delete and wait.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use skiff_core::client::{ApiClient, FullResponse};
use skiff_core::json::{path, str_at};
use skiff_core::table::cell_text;

use crate::resources::{Catalog, Resource};
use crate::Scope;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

pub struct GetOpts {
    pub selector: Option<String>,
    pub field_selector: Option<String>,
    pub output: Option<String>,
    pub watch: bool,
    pub show_labels: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `Error from server (Reason): message`, as kubectl prints a Status.
fn server_error(r: &FullResponse) -> String {
    let v = r.json();
    let reason = v["reason"].as_str().unwrap_or("");
    let msg = v["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
    if reason.is_empty() {
        format!("Error from server: {msg}")
    } else {
        format!("Error from server ({reason}): {msg}")
    }
}

fn query(sel: Option<&str>, fsel: Option<&str>) -> String {
    let mut q = Vec::new();
    if let Some(s) = sel {
        q.push(format!("labelSelector={}", encode(s)));
    }
    if let Some(s) = fsel {
        q.push(format!("fieldSelector={}", encode(s)));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads manifests: files, directories (their .yaml/.yml/.json files, sorted) or `-` for stdin.
/// Multi-document YAML and `kind: List` are expanded.
pub fn load_manifests(files: &[String]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for f in files {
        let mut texts = Vec::new();
        if f == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            texts.push((f.clone(), s));
        } else {
            let p = Path::new(f);
            if p.is_dir() {
                let mut entries: Vec<_> = std::fs::read_dir(p)?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                    })
                    .collect();
                entries.sort();
                for e in entries {
                    texts.push((e.display().to_string(), std::fs::read_to_string(&e)?));
                }
            } else {
                texts.push((
                    f.clone(),
                    std::fs::read_to_string(p).with_context(|| format!("reading {f}"))?,
                ));
            }
        }
        for (name, text) in texts {
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("parsing {name}"))?;
                if v.is_null() {
                    continue;
                }
                if v["kind"]
                    .as_str()
                    .is_some_and(|k| k == "List" || k.ends_with("List"))
                    && v["items"].is_array()
                {
                    out.extend(v["items"].as_array().cloned().unwrap_or_default());
                } else {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

fn object_namespace(
    c: &ApiClient,
    r: &Resource,
    obj: &Value,
    scope: &Scope,
) -> Result<Option<String>> {
    if !r.namespaced {
        return Ok(None);
    }
    let in_obj = str_at(obj, "metadata.namespace");
    if let Some(flag) = &scope.namespace {
        if !in_obj.is_empty() && in_obj != flag {
            bail!("the namespace from the provided object {in_obj:?} does not match the namespace {flag:?}. You must pass '--namespace={in_obj}' to perform this operation.");
        }
        return Ok(Some(flag.clone()));
    }
    Ok(Some(if in_obj.is_empty() {
        c.namespace.clone()
    } else {
        in_obj.to_string()
    }))
}

/// A merge patch that removes what the last applied configuration had and this one drops.
fn removals(last: &Value, new: &Value, out: &mut Value) {
    if let (Value::Object(l), Value::Object(n)) = (last, new) {
        for (k, lv) in l {
            match n.get(k) {
                None => out[k] = Value::Null,
                Some(nv) if lv.is_object() && nv.is_object() => {
                    let mut sub = out
                        .get(k)
                        .cloned()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    removals(lv, nv, &mut sub);
                    out[k] = sub;
                }
                _ => {}
            }
        }
    }
}

pub async fn apply(
    c: &ApiClient,
    files: &[String],
    scope: &Scope,
    output: Option<&str>,
    create_only: bool,
) -> Result<u8> {
    let objs = load_manifests(files)?;
    if objs.is_empty() {
        bail!(
            "no objects passed to {}",
            if create_only { "create" } else { "apply" }
        );
    }
    let cat = Catalog::load(c).await?;
    let mut code = 0;
    for mut obj in objs {
        let av = str_at(&obj, "apiVersion").to_string();
        let kind = str_at(&obj, "kind").to_string();
        let r = match cat.by_kind(&av, &kind) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: resource mapping not found for kind {kind:?}: {e}");
                code = 1;
                continue;
            }
        };
        let ns = object_namespace(c, r, &obj, scope)?;
        let name = str_at(&obj, "metadata.name").to_string();
        if name.is_empty() && (!create_only || str_at(&obj, "metadata.generateName").is_empty()) {
            eprintln!("error: {} has no metadata.name", r.display());
            code = 1;
            continue;
        }
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        let manifest = obj.clone();
        if !create_only {
            obj["metadata"]["annotations"][LAST_APPLIED] =
                json!(format!("{}\n", serde_json::to_string(&manifest)?));
        }
        let body = serde_json::to_vec(&obj)?;
        let current = if create_only {
            None
        } else {
            Some(c.get_json(&r.item(ns.as_deref(), &name)).await?)
        };
        let (verb, resp) = match current {
            Some(cur) if cur.status == 200 => {
                let live = cur.json();
                let mut patch = obj.clone();
                if let Some(last) = path(&live, "metadata.annotations")
                    .and_then(|a| a.get(LAST_APPLIED))
                    .and_then(Value::as_str)
                {
                    if let Ok(last) = serde_json::from_str::<Value>(last) {
                        removals(&last, &manifest, &mut patch);
                    }
                }
                let resp = c
                    .request(
                        "PATCH",
                        &format!("{}?fieldValidation=Strict", r.item(ns.as_deref(), &name)),
                        Some("application/strategic-merge-patch+json"),
                        serde_json::to_vec(&patch)?,
                    )
                    .await?;
                let changed = resp.status == 200
                    && str_at(&resp.json(), "metadata.resourceVersion")
                        != str_at(&live, "metadata.resourceVersion");
                (if changed { "configured" } else { "unchanged" }, resp)
            }
            Some(cur) if cur.status != 404 => ("", cur),
            _ => (
                "created",
                c.request(
                    "POST",
                    &format!("{}?fieldValidation=Strict", r.collection(ns.as_deref())),
                    Some("application/json"),
                    body,
                )
                .await?,
            ),
        };
        if resp.status >= 300 {
            eprintln!("{}", server_error(&resp));
            code = 1;
            continue;
        }
        let out = resp.json();
        match output {
            Some("json") => println!("{}", serde_json::to_string_pretty(&out)?),
            Some("yaml") => print!("{}", serde_yaml::to_string(&out)?),
            Some("name") => println!("{}/{}", r.display(), str_at(&out, "metadata.name")),
            _ => println!("{}/{} {verb}", r.display(), str_at(&out, "metadata.name")),
        }
    }
    Ok(code)
}

/// Expands `KIND [NAME...]`, `KIND/NAME ...` and `KIND1,KIND2` into (resource, names).
fn targets<'a>(cat: &'a Catalog, args: &[String]) -> Result<Vec<(&'a Resource, Vec<String>)>> {
    if args.is_empty() {
        bail!("you must specify the type of resource to get");
    }
    if args[0].contains('/') {
        let mut out: Vec<(&Resource, Vec<String>)> = Vec::new();
        for a in args {
            let (k, n) = a.split_once('/').ok_or_else(|| anyhow!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form"))?;
            let r = cat.resolve(k)?;
            match out
                .iter_mut()
                .find(|(x, _)| x.plural == r.plural && x.group == r.group)
            {
                Some((_, names)) => names.push(n.to_string()),
                None => out.push((r, vec![n.to_string()])),
            }
        }
        return Ok(out);
    }
    let kinds: Vec<&str> = args[0].split(',').collect();
    let names: Vec<String> = args[1..].to_vec();
    let mut out = Vec::new();
    for k in kinds {
        let in_category = cat.category(k);
        if !in_category.is_empty() && cat.resolve(k).is_err() {
            out.extend(in_category.into_iter().map(|r| (r, names.clone())));
        } else {
            out.push((cat.resolve(k)?, names.clone()));
        }
    }
    Ok(out)
}

fn scope_ns(c: &ApiClient, r: &Resource, scope: &Scope) -> Option<String> {
    if !r.namespaced || scope.all_namespaces {
        None
    } else {
        Some(
            scope
                .namespace
                .clone()
                .unwrap_or_else(|| c.namespace.clone()),
        )
    }
}

fn print_rows(rows: &[Vec<String>]) {
    let mut widths = vec![0; rows.iter().map(Vec::len).max().unwrap_or(0)];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

struct TableView {
    cols: Vec<(usize, String)>,
    all_ns: bool,
    labels: bool,
    prefix: Option<String>,
}

impl TableView {
    fn new(tbl: &Value, wide: bool, all_ns: bool, labels: bool, prefix: Option<String>) -> Self {
        let cols = tbl["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|(i, c)| (i, c["name"].as_str().unwrap_or("").to_uppercase()))
            .collect();
        Self {
            cols,
            all_ns,
            labels,
            prefix,
        }
    }
    fn header(&self) -> Vec<String> {
        let mut h = Vec::new();
        if self.all_ns {
            h.push("NAMESPACE".into());
        }
        h.extend(self.cols.iter().map(|(_, n)| n.clone()));
        if self.labels {
            h.push("LABELS".into());
        }
        h
    }
    fn row(&self, row: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let meta = &row["object"]["metadata"];
        if self.all_ns {
            out.push(meta["namespace"].as_str().unwrap_or("").to_string());
        }
        for (n, (i, name)) in self.cols.iter().enumerate() {
            let mut cell = cell_text(&row["cells"][*i]);
            if n == 0 && name == "NAME" {
                if let Some(p) = &self.prefix {
                    cell = format!("{p}/{cell}");
                }
            }
            out.push(cell);
        }
        if self.labels {
            let l: Vec<String> = meta["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            out.push(if l.is_empty() {
                "<none>".into()
            } else {
                l.join(",")
            });
        }
        out
    }
}

pub async fn get(c: &ApiClient, args: &[String], scope: &Scope, o: &GetOpts) -> Result<u8> {
    let cat = Catalog::load(c).await?;
    let ts = targets(&cat, args)?;
    let multi = ts.len() > 1;
    let output = o.output.as_deref().unwrap_or("");
    let mut collected = Vec::new();
    let mut code = 0;
    let mut printed_any = false;
    for (r, names) in &ts {
        let ns = scope_ns(c, r, scope);
        let q = query(o.selector.as_deref(), o.field_selector.as_deref());
        if matches!(output, "yaml" | "json" | "name") {
            if names.is_empty() {
                let resp = c
                    .get_json(&format!("{}{q}", r.collection(ns.as_deref())))
                    .await?;
                if resp.status != 200 {
                    eprintln!("{}", server_error(&resp));
                    code = 1;
                    continue;
                }
                for mut i in resp.json()["items"].as_array().cloned().unwrap_or_default() {
                    i["apiVersion"] = json!(r.api_version());
                    i["kind"] = json!(r.kind);
                    collected.push((r.display(), i));
                }
            } else {
                for n in names {
                    let resp = c.get_json(&r.item(ns.as_deref(), n)).await?;
                    if resp.status != 200 {
                        eprintln!("{}", server_error(&resp));
                        code = 1;
                        continue;
                    }
                    collected.push((r.display(), resp.json()));
                }
            }
            continue;
        }
        let wide = output == "wide";
        let mut rows = Vec::new();
        let mut view = None;
        let mut list_rv = String::new();
        let paths: Vec<String> = if names.is_empty() {
            vec![format!("{}{q}", r.collection(ns.as_deref()))]
        } else {
            names.iter().map(|n| r.item(ns.as_deref(), n)).collect()
        };
        for p in paths {
            let resp = c
                .request_accept("GET", &p, None, Some(TABLE_ACCEPT), Vec::new())
                .await?;
            if resp.status != 200 {
                eprintln!("{}", server_error(&resp));
                code = 1;
                continue;
            }
            let tbl = resp.json();
            list_rv = str_at(&tbl, "metadata.resourceVersion").to_string();
            let v = view.get_or_insert_with(|| {
                TableView::new(
                    &tbl,
                    wide,
                    scope.all_namespaces && r.namespaced,
                    o.show_labels,
                    multi.then(|| r.display()),
                )
            });
            for row in tbl["rows"].as_array().into_iter().flatten() {
                rows.push(v.row(row));
            }
        }
        if let Some(v) = &view {
            if !rows.is_empty() || o.watch {
                if printed_any {
                    println!();
                }
                let mut all = vec![v.header()];
                all.extend(rows);
                print_rows(&all);
                printed_any = true;
            }
        }
        if o.watch {
            let v = view.unwrap_or_else(|| TableView::new(&json!({}), wide, false, false, None));
            let sep = if q.is_empty() { "?" } else { "&" };
            let wpath = format!(
                "{}{q}{sep}watch=true&resourceVersion={list_rv}",
                r.collection(ns.as_deref())
            );
            let (status, mut lines) = c.stream(&wpath, Some(TABLE_ACCEPT)).await?;
            if status != 200 {
                bail!("watch failed: HTTP {status}");
            }
            while let Some(line) = lines.next_line().await? {
                let ev: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                if ev["type"] == "ERROR" {
                    bail!(
                        "watch: {}",
                        ev["object"]["message"].as_str().unwrap_or("error")
                    );
                }
                for row in ev["object"]["rows"].as_array().into_iter().flatten() {
                    print_rows(&[v.row(row)]);
                }
            }
            return Ok(code);
        }
    }
    match output {
        "json" | "yaml" => {
            let single = collected.len() == 1 && ts.len() == 1 && !ts[0].1.is_empty();
            let doc = if single {
                collected[0].1.clone()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": collected.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()})
            };
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", serde_yaml::to_string(&doc)?);
            }
        }
        "name" => {
            for (d, v) in &collected {
                println!("{d}/{}", str_at(v, "metadata.name"));
            }
        }
        _ => {
            if !printed_any && code == 0 {
                match ts.first().and_then(|(r, _)| scope_ns(c, r, scope)) {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
            }
        }
    }
    Ok(code)
}

fn yaml_block(v: &Value, indent: usize) -> String {
    let text = serde_yaml::to_string(v).unwrap_or_default();
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(indent)))
        .collect()
}

fn map_lines(label: &str, m: Option<&Value>) -> String {
    let entries: Vec<String> = m
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if entries.is_empty() {
        return format!("{label:<14}<none>\n");
    }
    let mut s = format!("{label:<14}{}\n", entries[0]);
    for e in &entries[1..] {
        s.push_str(&format!("{:<14}{e}\n", ""));
    }
    s
}

pub async fn describe(
    c: &ApiClient,
    args: &[String],
    scope: &Scope,
    selector: Option<&str>,
) -> Result<u8> {
    let cat = Catalog::load(c).await?;
    let ts = targets(&cat, args)?;
    let mut first = true;
    for (r, names) in ts {
        let ns = scope_ns(c, r, scope);
        let objs: Vec<Value> = if names.is_empty() {
            let resp = c
                .get_json(&format!(
                    "{}{}",
                    r.collection(ns.as_deref()),
                    query(selector, None)
                ))
                .await?;
            if resp.status != 200 {
                bail!("{}", server_error(&resp));
            }
            resp.json()["items"].as_array().cloned().unwrap_or_default()
        } else {
            let mut v = Vec::new();
            for n in &names {
                let resp = c.get_json(&r.item(ns.as_deref(), n)).await?;
                if resp.status != 200 {
                    bail!("{}", server_error(&resp));
                }
                v.push(resp.json());
            }
            v
        };
        for o in objs {
            if !first {
                println!("\n");
            }
            first = false;
            let meta = &o["metadata"];
            let mut s = format!("{:<14}{}\n", "Name:", str_at(meta, "name"));
            if r.namespaced {
                s.push_str(&format!(
                    "{:<14}{}\n",
                    "Namespace:",
                    str_at(meta, "namespace")
                ));
            }
            s.push_str(&map_lines("Labels:", meta.get("labels")));
            let ann: Option<Value> = meta.get("annotations").map(|a| {
                let mut a = a.clone();
                if let Some(m) = a.as_object_mut() {
                    m.remove(LAST_APPLIED);
                }
                a
            });
            s.push_str(&map_lines("Annotations:", ann.as_ref()));
            s.push_str(&format!(
                "{:<14}{}\n",
                "Created:",
                str_at(meta, "creationTimestamp")
            ));
            if let Some(d) = meta.get("deletionTimestamp") {
                s.push_str(&format!(
                    "{:<14}{}\n",
                    "Terminating:",
                    d.as_str().unwrap_or("")
                ));
            }
            if let Some(f) = meta.get("finalizers") {
                s.push_str(&format!("{:<14}{}\n", "Finalizers:", f));
            }
            for (k, v) in o.as_object().into_iter().flatten() {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let mut title: String = k.chars().take(1).flat_map(char::to_uppercase).collect();
                title.push_str(&k[1..]);
                if v.is_object() || v.is_array() {
                    s.push_str(&format!("{title}:\n{}", yaml_block(v, 2)));
                } else {
                    s.push_str(&format!("{:<14}{}\n", format!("{title}:"), cell_text(v)));
                }
            }
            // Events about this object, newest last, as kubectl describe shows them.
            let fsel = format!(
                "involvedObject.name={},involvedObject.kind={}",
                str_at(meta, "name"),
                r.kind
            );
            let evpath = match ns
                .as_deref()
                .or(Some(str_at(meta, "namespace")).filter(|n| !n.is_empty()))
            {
                Some(n) => format!("/api/v1/namespaces/{n}/events{}", query(None, Some(&fsel))),
                None => format!("/api/v1/events{}", query(None, Some(&fsel))),
            };
            let events = c
                .get_json(&evpath)
                .await
                .map(|r| r.json()["items"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default();
            if events.is_empty() {
                s.push_str("Events:       <none>\n");
                print!("{s}");
            } else {
                s.push_str("Events:\n");
                print!("{s}");
                let mut rows = vec![vec![
                    "  Type".to_string(),
                    "Reason".into(),
                    "Age".into(),
                    "From".into(),
                    "Message".into(),
                ]];
                for e in events {
                    let ts = [
                        str_at(&e, "lastTimestamp"),
                        str_at(&e, "eventTime"),
                        str_at(&e, "metadata.creationTimestamp"),
                    ]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or("");
                    rows.push(vec![
                        format!("  {}", str_at(&e, "type")),
                        str_at(&e, "reason").into(),
                        skiff_core::time::age(ts),
                        str_at(&e, "source.component").into(),
                        str_at(&e, "message").into(),
                    ]);
                }
                print_rows(&rows);
            }
        }
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
pub async fn delete(
    c: &ApiClient,
    args: &[String],
    files: &[String],
    scope: &Scope,
    selector: Option<&str>,
    all: bool,
    wait: bool,
    timeout: Duration,
) -> Result<u8> {
    let cat = Catalog::load(c).await?;
    let mut victims: Vec<(Resource, Option<String>, String)> = Vec::new();
    if !files.is_empty() {
        for obj in load_manifests(files)? {
            let r = cat.by_kind(str_at(&obj, "apiVersion"), str_at(&obj, "kind"))?;
            let ns = object_namespace(c, r, &obj, scope)?;
            victims.push((r.clone(), ns, str_at(&obj, "metadata.name").to_string()));
        }
    } else {
        for (r, names) in targets(&cat, args)? {
            let ns = scope_ns(c, r, scope);
            if names.is_empty() {
                if selector.is_none() && !all {
                    bail!("resource(s) were provided, but no name was specified; use --all or -l to delete many");
                }
                let resp = c
                    .get_json(&format!(
                        "{}{}",
                        r.collection(ns.as_deref()),
                        query(selector, None)
                    ))
                    .await?;
                if resp.status != 200 {
                    bail!("{}", server_error(&resp));
                }
                for o in resp.json()["items"].as_array().into_iter().flatten() {
                    let ons = str_at(o, "metadata.namespace");
                    victims.push((
                        r.clone(),
                        (!ons.is_empty()).then(|| ons.to_string()),
                        str_at(o, "metadata.name").to_string(),
                    ));
                }
            } else {
                for n in names {
                    victims.push((r.clone(), ns.clone(), n));
                }
            }
        }
    }
    if victims.is_empty() {
        eprintln!("No resources found");
        return Ok(0);
    }
    let mut code = 0;
    let mut pending = Vec::new();
    for (r, ns, name) in victims {
        let resp = c
            .request(
                "DELETE",
                &r.item(ns.as_deref(), &name),
                Some("application/json"),
                br#"{"propagationPolicy":"Background"}"#.to_vec(),
            )
            .await?;
        if resp.status >= 300 {
            eprintln!("{}", server_error(&resp));
            code = 1;
            continue;
        }
        println!("{} {name:?} deleted", r.display());
        pending.push((r, ns, name));
    }
    if wait {
        let deadline = Instant::now() + timeout;
        for (r, ns, name) in pending {
            loop {
                let resp = c.get_json(&r.item(ns.as_deref(), &name)).await?;
                if resp.status == 404 {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "error: timed out waiting for {}/{name} to be deleted",
                        r.display()
                    );
                    code = 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(code)
}

/// `exec` over the WebSocket channel protocol (v5): stdin on channel 0 (closed with 255),
/// stdout/stderr on 1/2, the exit status on 3. Returns the command's exit code.
/// What `skiff exec` asks for.
pub struct ExecOptions<'a> {
    pub container: Option<&'a str>,
    pub stdin: bool,
    /// A terminal for the command; only when stdin is a terminal (as kubectl decides).
    pub tty: bool,
}

/// The local terminal in raw mode while a `-t` session runs; restored when dropped.
struct RawTerminal(rustix::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

/// Sends one channel message on the shared WebSocket sink; false once it is closed.
async fn send<S>(tx: &tokio::sync::Mutex<S>, m: Vec<u8>) -> bool
where
    S: futures::Sink<tokio_tungstenite::tungstenite::Message> + Unpin,
{
    use futures::SinkExt;
    tx.lock()
        .await
        .send(tokio_tungstenite::tungstenite::Message::Binary(m.into()))
        .await
        .is_ok()
}

/// The resize message (channel 4) for the local terminal's current size.
fn resize_message() -> Option<Vec<u8>> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    let mut m = vec![4u8];
    m.extend_from_slice(
        serde_json::json!({"Width": ws.ws_col, "Height": ws.ws_row})
            .to_string()
            .as_bytes(),
    );
    Some(m)
}

pub async fn exec(
    c: &ApiClient,
    ns: &str,
    pod: &str,
    opts: ExecOptions<'_>,
    command: &[String],
) -> Result<u8> {
    let ExecOptions {
        container,
        stdin,
        tty,
    } = opts;
    let tty = tty && rustix::termios::isatty(std::io::stdin());
    use futures::{SinkExt, StreamExt};
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut q: Vec<String> = command
        .iter()
        .map(|a| format!("command={}", encode(a)))
        .collect();
    q.push(format!("stdin={stdin}"));
    q.push("stdout=true".into());
    // On a terminal the command's output is one stream.
    q.push(format!("stderr={}", !tty));
    q.push(format!("tty={tty}"));
    if let Some(cn) = container {
        q.push(format!("container={}", encode(cn)));
    }
    let url = format!(
        "ws://localhost/api/v1/namespaces/{ns}/pods/{pod}/exec?{}",
        q.join("&")
    );
    let (io, token) = c.connect_raw().await?;
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse()?);
    }
    let (ws, _) = match tokio_tungstenite::client_async(req, io).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            bail!(
                "{}",
                v["message"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("HTTP {}", resp.status()))
            );
        }
        Err(e) => return Err(e.into()),
    };
    let (mut tx, mut rx) = ws.split();
    let _raw = if tty { RawTerminal::enter() } else { None };
    if tty {
        if let Some(m) = resize_message() {
            tx.send(Message::Binary(m.into())).await?;
        }
    }
    let tx = std::sync::Arc::new(tokio::sync::Mutex::new(tx));
    if tty {
        // Window size changes follow the local terminal.
        let tx = tx.clone();
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some(m) = resize_message() {
                    if !send(&tx, m).await {
                        return;
                    }
                }
            }
        });
    }
    if stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut m = vec![0u8];
                        m.extend_from_slice(&buf[..n]);
                        if !send(&tx, m).await {
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .lock()
                .await
                .send(Message::Binary(vec![255u8, 0].into()))
                .await;
        });
    }
    let mut code = 0u8;
    while let Some(msg) = rx.next().await {
        let Ok(Message::Binary(b)) = msg else {
            continue;
        };
        match b.first() {
            Some(1) => {
                std::io::stdout().write_all(&b[1..])?;
                std::io::stdout().flush()?;
            }
            Some(2) => {
                std::io::stderr().write_all(&b[1..])?;
            }
            Some(3) => {
                let st: Value = serde_json::from_slice(&b[1..]).unwrap_or(Value::Null);
                if st["status"] != "Success" {
                    code = st["details"]["causes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["reason"] == "ExitCode")
                        .and_then(|c| c["message"].as_str())
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(1);
                    if st["reason"] != "NonZeroExitCode" {
                        eprintln!("error: {}", st["message"].as_str().unwrap_or("exec failed"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(code)
}

/// Streams a pod's log to stdout.
pub async fn logs(c: &ApiClient, path: &str) -> Result<u8> {
    use std::io::Write;
    let (status, mut body) = c.stream(path, Some("*/*")).await?;
    if status != 200 {
        let mut text = Vec::new();
        while let Some(chunk) = body.next_chunk().await? {
            text.extend_from_slice(&chunk);
        }
        let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        bail!(
            "{}",
            v["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned())
        );
    }
    let mut out = std::io::stdout();
    while let Some(chunk) = body.next_chunk().await? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(0)
}

/// Evaluates a simple JSONPath (`{.status.phase}`, `{.status.conditions[0].type}`).
pub fn jsonpath<'a>(v: &'a Value, expr: &str) -> Option<&'a Value> {
    let e = expr
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    let mut cur = v;
    for part in e.split('.').filter(|p| !p.is_empty()) {
        let (field, idx) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

enum Condition {
    Delete,
    Cond(String, String),
    Path(String, Option<String>),
}

fn parse_for(s: &str) -> Result<Condition> {
    if s == "delete" {
        return Ok(Condition::Delete);
    }
    if let Some(rest) = s.strip_prefix("condition=") {
        let (t, v) = rest.split_once('=').unwrap_or((rest, "True"));
        return Ok(Condition::Cond(t.to_lowercase(), v.to_lowercase()));
    }
    if let Some(rest) = s.strip_prefix("jsonpath=") {
        let rest = rest.trim_matches('\'');
        return Ok(match rest.find("}=") {
            Some(i) => Condition::Path(rest[..=i].to_string(), Some(rest[i + 2..].to_string())),
            None => Condition::Path(rest.to_string(), None),
        });
    }
    bail!("unrecognized condition: {s:?} (want delete, condition=TYPE[=STATUS] or jsonpath='{{...}}'=VALUE)")
}

fn holds(cond: &Condition, o: &Value) -> bool {
    match cond {
        Condition::Delete => false,
        Condition::Cond(t, want) => o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                str_at(c, "type").to_lowercase() == *t
                    && str_at(c, "status").to_lowercase() == *want
            }),
        Condition::Path(p, want) => match (jsonpath(o, p), want) {
            (Some(v), Some(w)) => cell_text(v) == *w,
            (Some(_), None) => true,
            (None, _) => false,
        },
    }
}

pub async fn wait(
    c: &ApiClient,
    args: &[String],
    for_: &str,
    scope: &Scope,
    selector: Option<&str>,
    timeout: Duration,
) -> Result<u8> {
    let cond = parse_for(for_)?;
    let cat = Catalog::load(c).await?;
    let deadline = Instant::now() + timeout;
    let mut done: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let mut all_ok = true;
        let mut seen_any = false;
        for (r, names) in targets(&cat, args)? {
            let ns = scope_ns(c, r, scope);
            let objs: Vec<(String, Option<Value>)> = if names.is_empty() {
                let resp = c
                    .get_json(&format!(
                        "{}{}",
                        r.collection(ns.as_deref()),
                        query(selector, None)
                    ))
                    .await?;
                resp.json()["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| (str_at(o, "metadata.name").to_string(), Some(o.clone())))
                    .collect()
            } else {
                let mut v = Vec::new();
                for n in &names {
                    let resp = c.get_json(&r.item(ns.as_deref(), n)).await?;
                    v.push((n.clone(), (resp.status == 200).then(|| resp.json())));
                }
                v
            };
            for (name, o) in objs {
                seen_any = true;
                let id = format!("{}/{name}", r.display());
                let ok = match (&cond, &o) {
                    (Condition::Delete, None) => true,
                    (_, Some(o)) => holds(&cond, o),
                    _ => false,
                };
                if ok {
                    if done.insert(id.clone(), true).is_none() {
                        println!("{id} condition met");
                    }
                } else {
                    all_ok = false;
                    if Instant::now() > deadline {
                        eprintln!("error: timed out waiting for the condition on {id}");
                        return Ok(1);
                    }
                }
            }
        }
        if !seen_any && Instant::now() > deadline {
            eprintln!("error: no matching resources found");
            return Ok(1);
        }
        if all_ok && seen_any {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn jsonpaths_and_conditions() {
        let o = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(jsonpath(&o, "{.status.phase}"), Some(&json!("Running")));
        assert_eq!(
            jsonpath(&o, "{.status.conditions[0].type}"),
            Some(&json!("Ready"))
        );
        assert!(holds(&parse_for("condition=Ready").unwrap(), &o));
        assert!(!holds(&parse_for("condition=Ready=False").unwrap(), &o));
        assert!(holds(
            &parse_for("jsonpath={.status.phase}=Running").unwrap(),
            &o
        ));
        assert!(parse_for("nonsense").is_err());
    }

    #[test]
    fn removals_null_out_dropped_keys() {
        let last = json!({"data": {"a": "1", "b": "2"}, "metadata": {"labels": {"x": "1"}}});
        let new = json!({"data": {"a": "1"}, "metadata": {}});
        let mut patch = new.clone();
        removals(&last, &new, &mut patch);
        assert_eq!(patch["data"]["b"], Value::Null);
        assert!(patch["data"].get("b").is_some());
        assert_eq!(patch["metadata"]["labels"], Value::Null);
    }

    #[test]
    fn manifests_expand_documents_and_lists() {
        let dir = std::env::temp_dir().join(format!("skiff-manifest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n").unwrap();
        std::fs::write(
            dir.join("b.json"),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("ignored.txt"), "x").unwrap();
        let objs = load_manifests(&[dir.display().to_string()]).unwrap();
        let names: Vec<&str> = objs.iter().map(|o| str_at(o, "metadata.name")).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
