//! The Kubernetes REST API: routing of `/api/v1/...` and `/apis/{group}/{version}/...` paths to
//! the generic verbs (get, list, watch, create, update, patch, delete, deletecollection) over
//! [`Storage`], with per-kind rules from the registry. JSON and YAML in; JSON or `as=Table` out.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde_json::{json, Value};
use skiff_core::fields::FieldSelector;
use skiff_core::json::str_at;
use skiff_core::selector::Selector;
use skiff_core::table;
use skiff_core::time::now_rfc3339;
use skiff_core::validation::{self, check_name, is_qualified_name, Cause};
use tokio::sync::{broadcast, mpsc, Notify};

use crate::discovery;
use crate::patch::{self, PatchType};
use crate::registry::{self, Kind};
use crate::status::{ApiError, ApiResult};
use crate::storage::{rv_of, Event, EventType, Outcome, Storage};

/// Request bodies larger than this are refused, as the Kubernetes API server does (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the API server.
pub struct App {
    pub storage: Arc<Storage>,
    /// Wakes the namespace controller when a namespace starts terminating.
    pub ns_wake: Notify,
    /// `host:port` of the HTTPS listener, for discovery.
    pub server_address: String,
    /// The cluster CA (PEM), published in every namespace as ConfigMap `kube-root-ca.crt`.
    pub ca_pem: String,
    /// The Service ClusterIP range.
    pub service_cidr: skiff_core::config::Cidr,
    /// The kubelet's root-only socket (logs and exec are proxied there).
    pub kubelet_socket: std::path::PathBuf,
}

type Q = HashMap<String, String>;

fn json_response(code: u16, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn text_response(code: u16, s: &'static str) -> Response {
    let mut r = Response::new(Body::from(s));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

/// The single entry point: every request lands here.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let segs: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let ["api", "v1", "namespaces", ns, "pods", name, "exec"] = segs.as_slice() {
        let (ns, name) = (ns.to_string(), name.to_string());
        return match exec_proxy(&app, &ns, &name, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    let (parts, body) = req.into_parts();
    let q: Q = Query::<Q>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    match route(&app, &parts.method, &path, &q, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn read_body(body: Body) -> ApiResult<Vec<u8>> {
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok(b.to_vec()),
        Err(_) => Err(ApiError::too_large("the request body is larger than 3 MiB")),
    }
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// Decodes a JSON or YAML request body into one object.
fn decode_body(ct: &str, bytes: &[u8]) -> ApiResult<Value> {
    let base = ct.split(';').next().unwrap_or("").trim();
    let v: Value = match base {
        "application/yaml" | "application/apply-patch+yaml" | "text/yaml" => {
            serde_yaml::from_slice(bytes)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        "application/vnd.kubernetes.protobuf" => {
            crate::protobuf::decode(bytes).map_err(ApiError::bad_request)?
        }
        "application/json"
        | ""
        | "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(v)
}

fn wants_table(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    q: &Q,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = method == Method::GET;
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] if get => Ok(text_response(200, "ok")),
        ["version"] if get => Ok(json_response(200, &discovery::version())),
        [] if get => Ok(json_response(200, &discovery::root_paths())),
        ["api"] if get => Ok(json_response(
            200,
            &discovery::api_versions(&app.server_address),
        )),
        ["apis"] if get => Ok(json_response(200, &discovery::group_list())),
        ["api", "v1"] if get => Ok(json_response(200, &discovery::resource_list("", "v1"))),
        ["apis", g] if get => discovery::group(g)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        ["apis", g, v] if get => {
            let list = discovery::resource_list(g, v);
            if list["resources"].as_array().is_none_or(Vec::is_empty) {
                return Err(ApiError::path_not_found());
            }
            Ok(json_response(200, &list))
        }
        ["openapi", "v3"] if get => Ok(json_response(200, &discovery::openapi_index())),
        ["openapi", "v3", rest @ ..] if get => discovery::openapi_doc(&rest.join("/"))
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        ["api", "v1", rest @ ..] => resource(app, "", "v1", rest, method, q, headers, body).await,
        ["apis", g, v, rest @ ..] => resource(app, g, v, rest, method, q, headers, body).await,
        _ => Err(ApiError::path_not_found()),
    }
}

struct Target {
    kind: &'static Kind,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let mk = |plural: &str, ns: Option<&str>, tail: &[&str]| -> ApiResult<Target> {
        let kind = registry::find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
        if tail.len() > 2 || (ns.is_some() && !kind.namespaced) {
            return Err(ApiError::path_not_found());
        }
        if ns.is_none() && kind.namespaced && !tail.is_empty() {
            return Err(ApiError::path_not_found());
        }
        Ok(Target {
            kind,
            ns: ns.map(String::from),
            name: tail.first().map(|s| s.to_string()),
            sub: tail.get(1).map(|s| s.to_string()),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            mk(plural, Some(ns), tail)
        }
        [plural, tail @ ..] => mk(plural, None, tail),
        [] => Err(ApiError::path_not_found()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    app: &Arc<App>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    q: &Q,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let t = parse_target(group, version, rest)?;
    if t.kind.kind == "Pod" && t.sub.as_deref() == Some("log") && method == Method::GET {
        let (ns, name) = (
            t.ns.as_deref().unwrap_or("default"),
            t.name.as_deref().unwrap_or(""),
        );
        return pod_log(app, ns, name, q).await;
    }
    if let Some(sub) = &t.sub {
        let ok =
            (sub == "status" && t.kind.status) || (sub == "finalize" && t.kind.kind == "Namespace");
        if !ok {
            return Err(ApiError::path_not_found());
        }
    }
    let table = wants_table(headers);
    let ns = t.ns.as_deref();
    match (method.clone(), t.name.as_deref()) {
        (Method::GET, None) => {
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch(app, t.kind, ns, q, table)
            } else {
                let list = list(app, t.kind, ns, q)?;
                if table {
                    let items: Vec<&Value> = list["items"]
                        .as_array()
                        .map(|a| a.iter().collect())
                        .unwrap_or_default();
                    let mut tbl = table::table(
                        t.kind.kind,
                        &items,
                        str_at(&list, "metadata.resourceVersion"),
                        q.get("includeObject").map_or("Metadata", String::as_str),
                    );
                    if let Some(c) = list["metadata"].get("continue") {
                        tbl["metadata"]["continue"] = c.clone();
                    }
                    return Ok(json_response(200, &tbl));
                }
                Ok(json_response(200, &list))
            }
        }
        (Method::GET, Some(name)) => {
            let obj = app
                .storage
                .get(&t.kind.key(ns, name))?
                .ok_or_else(|| ApiError::not_found(&t.kind.gr(), name))?;
            if table {
                let tbl = table::table(
                    t.kind.kind,
                    &[&obj],
                    rv_of(&obj),
                    q.get("includeObject").map_or("Metadata", String::as_str),
                );
                return Ok(json_response(200, &tbl));
            }
            Ok(json_response(200, &obj))
        }
        (Method::POST, None) => {
            if t.kind.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed("create requires a namespace"));
            }
            let ct = content_type(headers);
            let body = decode_body(&ct, &read_body(body).await?)?;
            let (obj, warnings) = create(app, t.kind, ns, q, body).await?;
            Ok(with_warnings(json_response(201, &obj), &warnings))
        }
        (Method::PUT, Some(name)) => {
            let ct = content_type(headers);
            let body = decode_body(&ct, &read_body(body).await?)?;
            let (obj, warnings) = update(
                app,
                t.kind,
                ns,
                name,
                t.sub.as_deref(),
                q,
                Change::Replace(body),
            )
            .await?;
            Ok(with_warnings(json_response(200, &obj), &warnings))
        }
        (Method::PATCH, Some(name)) => {
            let ct = content_type(headers);
            let pt = match PatchType::from_content_type(&ct) {
                Some(pt) => pt,
                None => return Err(ApiError::unsupported_media_type(&ct)),
            };
            let body = decode_body(&ct, &read_body(body).await?)?;
            let (obj, warnings) = update(
                app,
                t.kind,
                ns,
                name,
                t.sub.as_deref(),
                q,
                Change::Patch(pt, body),
            )
            .await?;
            Ok(with_warnings(json_response(200, &obj), &warnings))
        }
        (Method::DELETE, Some(name)) => {
            if t.sub.is_some() {
                return Err(ApiError::method_not_allowed(
                    "subresources cannot be deleted",
                ));
            }
            let bytes = read_body(body).await?;
            let opts = if bytes.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                decode_body(&content_type(headers), &bytes)?
            };
            let obj = delete(app, t.kind, ns, name, q, &opts).await?;
            Ok(json_response(200, &obj))
        }
        (Method::DELETE, None) => {
            let deleted = delete_collection(app, t.kind, ns, q).await?;
            let kind_list = format!("{}List", t.kind.kind);
            Ok(json_response(
                200,
                &json!({"kind": kind_list, "apiVersion": t.kind.api_version(), "metadata": {"resourceVersion": app.storage.head().to_string()}, "items": deleted}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

/// A connection to the kubelet's root-only socket (upgrades allowed, for exec).
async fn kubelet(
    app: &App,
) -> ApiResult<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    let stream = tokio::net::UnixStream::connect(&app.kubelet_socket)
        .await
        .map_err(|e| ApiError::internal(format!("the kubelet is not reachable: {e}")))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(ApiError::internal)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// The kubelet's refusal (its body is the reason) as a 400 for the client.
async fn kubelet_error(resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    use http_body_util::BodyExt;
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    ApiError::bad_request(String::from_utf8_lossy(&body).into_owned())
}

/// `GET .../pods/{name}/log`: checks the pod and container, then streams the kubelet's answer.
async fn pod_log(app: &Arc<App>, ns: &str, name: &str, q: &Q) -> ApiResult<Response> {
    let kind = registry::by_kind("Pod").ok_or_else(|| ApiError::internal("Pod kind missing"))?;
    let pod = app
        .storage
        .get(&kind.key(Some(ns), name))?
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let names = |k: &str| -> Vec<String> {
        pod["spec"][k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .map(String::from)
            .collect()
    };
    let (containers, inits) = (names("containers"), names("initContainers"));
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            if !containers.contains(c) && !inits.contains(c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            return Err(ApiError::bad_request(msg));
        }
    };
    let mut query = format!("uid={}", str_at(&pod, "metadata.uid"));
    for k in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "limitBytes",
    ] {
        if let Some(v) = q.get(k) {
            query.push_str(&format!("&{k}={v}"));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
    let mut sender = kubelet(app).await?;
    let req = axum::http::Request::builder()
        .uri(path)
        .header(header::HOST, "kubelet")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(ApiError::internal)?;
    let resp = sender.send_request(req).await.map_err(ApiError::internal)?;
    if resp.status() != StatusCode::OK {
        return Err(kubelet_error(resp).await);
    }
    let mut r = Response::new(Body::new(resp.into_body()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// `.../pods/{name}/exec`: checks the pod and container, then hands the WebSocket upgrade to
/// the kubelet and splices the two connections.
async fn exec_proxy(app: &Arc<App>, ns: &str, name: &str, mut req: Request) -> ApiResult<Response> {
    let kind = registry::by_kind("Pod").ok_or_else(|| ApiError::internal("Pod kind missing"))?;
    let pod = app
        .storage
        .get(&kind.key(Some(ns), name))?
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let q: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .map(String::from)
        .collect();
    let container = match q.iter().find(|(k, v)| k == "container" && !v.is_empty()) {
        Some((_, c)) => {
            let inits: Vec<&str> = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            if !containers.contains(c) && !inits.contains(&c.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if str_at(&pod, "status.phase") != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: container not found ({container:?})"
        )));
    }
    if req.headers().get(header::UPGRADE).is_none() {
        return Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (v5.channel.k8s.io); SPDY is not supported",
        ));
    }
    let path = format!(
        "/exec/{ns}/{name}/{container}?{}&uid={}",
        req.uri().query().unwrap_or(""),
        str_at(&pod, "metadata.uid")
    );
    let mut sender = kubelet(app).await?;
    let mut up = axum::http::Request::builder()
        .method("GET")
        .uri(path)
        .header(header::HOST, "kubelet");
    for h in [
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
    ] {
        if let Some(v) = req.headers().get(h) {
            up = up.header(h, v);
        }
    }
    let kreq = up
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(ApiError::internal)?;
    let mut kresp = sender
        .send_request(kreq)
        .await
        .map_err(ApiError::internal)?;
    if kresp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(kubelet_error(kresp).await);
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let kubelet_upgrade = hyper::upgrade::on(&mut kresp);
    tokio::spawn(async move {
        if let (Ok(c), Ok(k)) = (client_upgrade.await, kubelet_upgrade.await) {
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut k = hyper_util::rt::TokioIo::new(k);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut k).await;
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for h in [
        "connection",
        "upgrade",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    ] {
        if let Some(v) = kresp.headers().get(h) {
            r.headers_mut().insert(h, v.clone());
        }
    }
    Ok(r)
}

/// `fieldValidation`: what to do with fields the type does not have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(q: &Q) -> ApiResult<FieldValidation> {
    match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(o) => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Ignore, Warn, Strict; got {o:?}"
        ))),
    }
}

fn dry_run(q: &Q) -> ApiResult<bool> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!(
            "dryRun must be All; got {o:?}"
        ))),
    }
}

/// Fields present in the input but not in the typed round trip: unknown to the schema.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None => {
                        let empty = v.is_null()
                            || v.as_array().is_some_and(Vec::is_empty)
                            || v.as_object().is_some_and(|m| m.is_empty());
                        if !empty {
                            out.push(p);
                        }
                    }
                }
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (n, (a, b)) in i.iter().zip(o).enumerate() {
                unknown_fields(a, b, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Type-checks `obj` against its kind and returns the canonical form.
fn canonicalize(
    kind: &Kind,
    mut obj: Value,
    fv: FieldValidation,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    registry::normalize_quantities(&mut obj);
    let out = (kind.roundtrip)(&obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            kind.kind, kind.version, kind.kind
        ))
    })?;
    if fv != FieldValidation::Ignore {
        let mut unknown = Vec::new();
        unknown_fields(&obj, &out, "", &mut unknown);
        if !unknown.is_empty() {
            let msgs: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            if fv == FieldValidation::Strict {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            warnings.extend(msgs);
        }
    }
    Ok(out)
}

fn check_type_meta(kind: &Kind, obj: &mut Value) -> ApiResult<()> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    };
    let av = kind.api_version();
    match m.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("apiVersion".into(), json!(av));
        }
        Some(v) if v == av => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )))
        }
    }
    match m.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("kind".into(), json!(kind.kind));
        }
        Some(k) if k == kind.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )))
        }
    }
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    Ok(())
}

fn str_map(v: Option<&Value>) -> Option<BTreeMap<String, String>> {
    v.and_then(Value::as_object).map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect()
    })
}

fn validate_meta(kind: &Kind, o: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let meta = &o["metadata"];
    let name = str_at(meta, "name");
    if name.is_empty() {
        out.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if let Err(e) = check_name(kind.name_rule, name) {
        out.push(Cause::invalid("metadata.name", name, &e));
    }
    out.extend(validation::validate_labels(
        str_map(meta.get("labels")).as_ref(),
        "metadata.labels",
    ));
    out.extend(validation::validate_annotations(
        str_map(meta.get("annotations")).as_ref(),
        "metadata.annotations",
    ));
    for (i, f) in meta
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = f.as_str().unwrap_or("");
        if let Err(e) = is_qualified_name(f) {
            out.push(Cause::invalid(format!("metadata.finalizers[{i}]"), f, &e));
        }
    }
    out
}

fn invalid(kind: &Kind, o: &Value, causes: &[Cause]) -> ApiError {
    ApiError::invalid(kind.kind, kind.group, str_at(o, "metadata.name"), causes)
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated_name(base: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| NAME_CHARS[rng.random_range(0..NAME_CHARS.len())] as char)
        .collect();
    let base: String = base.chars().take(58).collect();
    format!("{base}{suffix}")
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // Version 4, RFC 4122 variant.
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

fn meta_mut(o: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !o["metadata"].is_object() {
        o["metadata"] = json!({});
    }
    match o["metadata"].as_object_mut() {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

async fn namespace_state(app: &App, ns: &str) -> ApiResult<()> {
    let key = registry::by_kind("Namespace")
        .map(|k| k.key(None, ns))
        .unwrap_or_default();
    match app.storage.get(&key)? {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some(n) if n["metadata"].get("deletionTimestamp").is_some() => Err(ApiError::forbidden(
            "",
            "",
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Some(_) => Ok(()),
    }
}

async fn create(
    app: &Arc<App>,
    kind: &'static Kind,
    ns: Option<&str>,
    q: &Q,
    body: Value,
) -> ApiResult<(Value, Vec<String>)> {
    let fv = field_validation(q)?;
    let dry = dry_run(q)?;
    let mut warnings = Vec::new();
    let mut obj = body;
    check_type_meta(kind, &mut obj)?;
    if kind.namespaced {
        let url_ns = ns.unwrap_or("default");
        let body_ns = str_at(&obj, "metadata.namespace");
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        meta_mut(&mut obj).insert("namespace".into(), json!(url_ns));
    } else {
        meta_mut(&mut obj).remove("namespace");
    }
    let mut obj = canonicalize(kind, obj, fv, &mut warnings)?;
    let generate = str_at(&obj, "metadata.name").is_empty()
        && !str_at(&obj, "metadata.generateName").is_empty();
    {
        let m = meta_mut(&mut obj);
        for k in [
            "uid",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if registry::has_generation(kind.kind) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    if let Some(s) = registry::initial_status(kind.kind) {
        obj["status"] = s;
    }
    if let Some(ns) = ns.filter(|_| kind.namespaced) {
        namespace_state(app, ns).await?;
    }
    for attempt in 0..8 {
        let mut o = obj.clone();
        if generate {
            let base = str_at(&o, "metadata.generateName").to_string();
            meta_mut(&mut o).insert("name".into(), json!(generated_name(&base)));
        }
        registry::apply_defaults(kind.kind, &mut o);
        registry::admit_create(kind.kind, &mut o);
        let mut causes = validate_meta(kind, &o);
        causes.extend(registry::validate(kind.kind, &o, None));
        if !causes.is_empty() {
            return Err(invalid(kind, &o, &causes));
        }
        let name = str_at(&o, "metadata.name").to_string();
        let key = kind.key(ns, &name);
        if dry {
            if app.storage.get(&key)?.is_some() {
                return Err(ApiError::already_exists(&kind.gr(), &name));
            }
            return Ok((o, warnings));
        }
        let gr = kind.gr();
        if app.storage.get(&key)?.is_some() {
            return Err(ApiError::already_exists(&gr, &name));
        }
        let reserved = if kind.kind == "Service" {
            crate::ipalloc::allocate(app, &mut o).await?
        } else {
            None
        };
        let res = app
            .storage
            .mutate(&key, |cur| match cur {
                Some(_) => Err(ApiError::already_exists(&gr, &name)),
                None => Ok(Outcome::Put(o)),
            })
            .await;
        if let (Err(_), Some(ip)) = (&res, reserved) {
            crate::ipalloc::release(app, &ip.to_string(), ns.unwrap_or(""), &name).await?;
        }
        match res {
            Ok((v, _)) => return Ok((v, warnings)),
            Err(e) if generate && e.reason == "AlreadyExists" && attempt < 7 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal("could not generate a unique name"))
}

/// What an update brings: a whole object (PUT) or a patch to apply to the current one.
enum Change {
    Replace(Value),
    Patch(PatchType, Value),
}

fn has_deletion(o: &Value) -> bool {
    o["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn spec_finalizers(o: &Value) -> usize {
    o["spec"]["finalizers"].as_array().map_or(0, Vec::len)
}

/// Whether a terminating object may now be removed.
fn deletion_done(kind: &Kind, o: &Value) -> bool {
    has_deletion(o)
        && finalizers(o).is_empty()
        && (kind.kind != "Namespace" || spec_finalizers(o) == 0)
}

fn without_rv(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    c
}

fn body_of(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

/// Turns the current object and the requested change into the outcome of an update.
#[allow(clippy::too_many_arguments)]
fn decide_update(
    kind: &Kind,
    cur: Option<Value>,
    name: &str,
    ns: Option<&str>,
    sub: Option<&str>,
    change: &Change,
    fv: FieldValidation,
    warnings: &mut Vec<String>,
) -> ApiResult<Outcome> {
    let cur = cur.ok_or_else(|| ApiError::not_found(&kind.gr(), name))?;
    let mut new = match change {
        Change::Replace(v) => v.clone(),
        Change::Patch(pt, p) => patch::apply(*pt, &cur, p, kind.kind).map_err(|e| {
            if *pt == PatchType::Json && e.contains("test") {
                ApiError::invalid(kind.kind, kind.group, name, &[Cause::invalid("", "", &e)])
            } else {
                ApiError::bad_request(e)
            }
        })?,
    };
    check_type_meta(kind, &mut new)?;
    let body_name = str_at(&new, "metadata.name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if kind.namespaced {
        let body_ns = str_at(&new, "metadata.namespace");
        if !body_ns.is_empty() && Some(body_ns) != ns {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
    }
    let want_rv = rv_of(&new).to_string();
    if !want_rv.is_empty() && want_rv != rv_of(&cur) {
        return Err(ApiError::stale(&kind.gr(), name));
    }
    let new = canonicalize(kind, new, fv, warnings)?;
    let mut result = match sub {
        Some("status") => {
            let mut r = cur.clone();
            r["status"] = new.get("status").cloned().unwrap_or(json!({}));
            r
        }
        Some("finalize") => {
            let mut r = cur.clone();
            r["spec"]["finalizers"] = new["spec"].get("finalizers").cloned().unwrap_or(json!([]));
            r
        }
        _ => {
            let mut r = new;
            if kind.status {
                match cur.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Some(m) = r.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            r
        }
    };
    {
        let cm = &cur["metadata"];
        let m = meta_mut(&mut result);
        m.insert("name".into(), json!(name));
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
        ] {
            match cm.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        m.remove("managedFields");
        m.remove("selfLink");
        m.insert("resourceVersion".into(), json!(rv_of(&cur)));
    }
    registry::apply_defaults(kind.kind, &mut result);
    if registry::has_generation(kind.kind) && body_of(&result) != body_of(&cur) {
        let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
        meta_mut(&mut result).insert("generation".into(), json!(g + 1));
    }
    let mut causes = validate_meta(kind, &result);
    causes.extend(registry::validate(kind.kind, &result, Some(&cur)));
    if has_deletion(&cur) {
        let old: Vec<String> = finalizers(&cur);
        if finalizers(&result).iter().any(|f| !old.contains(f)) {
            causes.push(Cause::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid(kind, &result, &causes));
    }
    if deletion_done(kind, &result) {
        return Ok(Outcome::Delete(result));
    }
    if without_rv(&result) == without_rv(&cur) {
        return Ok(Outcome::Unchanged(cur));
    }
    Ok(Outcome::Put(result))
}

fn dry(o: Outcome, is_dry: bool) -> Outcome {
    if !is_dry {
        return o;
    }
    match o {
        Outcome::Put(v) | Outcome::Delete(v) | Outcome::Unchanged(v) => Outcome::Unchanged(v),
    }
}

#[allow(clippy::too_many_arguments)]
async fn update(
    app: &Arc<App>,
    kind: &'static Kind,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    q: &Q,
    change: Change,
) -> ApiResult<(Value, Vec<String>)> {
    let fv = field_validation(q)?;
    let is_dry = dry_run(q)?;
    let mut warnings = Vec::new();
    let key = kind.key(ns, name);
    let (obj, ev) = app
        .storage
        .mutate(&key, |cur| {
            decide_update(kind, cur, name, ns, sub, &change, fv, &mut warnings)
                .map(|o| dry(o, is_dry))
        })
        .await?;
    if ev == Some(EventType::Deleted) || kind.kind == "Namespace" {
        app.ns_wake.notify_one();
    }
    Ok((obj, warnings))
}

/// Deletes one object: at once, or by marking it (deletionTimestamp) while finalizers remain.
pub async fn delete_object(
    app: &App,
    kind: &'static Kind,
    ns: Option<&str>,
    name: &str,
    opts: &Value,
    is_dry: bool,
) -> ApiResult<Value> {
    let key = kind.key(ns, name);
    let gr = kind.gr();
    let (obj, ev) = app
        .storage
        .mutate(&key, |cur| {
            let cur = cur.ok_or_else(|| ApiError::not_found(&gr, name))?;
            if let Some(pre) = opts.get("preconditions") {
                let uid = str_at(pre, "uid");
                if !uid.is_empty() && uid != str_at(&cur, "metadata.uid") {
                    return Err(ApiError::conflict(&gr, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", str_at(&cur, "metadata.uid"))));
                }
                let rv = str_at(pre, "resourceVersion");
                if !rv.is_empty() && rv != rv_of(&cur) {
                    return Err(ApiError::conflict(&gr, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", rv_of(&cur))));
                }
            }
            let pending = !finalizers(&cur).is_empty() || (kind.kind == "Namespace" && spec_finalizers(&cur) > 0);
            let out = if pending {
                let shorter = opts.get("gracePeriodSeconds").and_then(Value::as_i64).filter(|g| kind.kind == "Pod" && *g < cur["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(i64::MAX));
                if has_deletion(&cur) && shorter.is_some() {
                    let mut o = cur;
                    meta_mut(&mut o).insert("deletionGracePeriodSeconds".into(), json!(shorter.unwrap_or(0).max(0)));
                    Outcome::Put(o)
                } else if has_deletion(&cur) {
                    Outcome::Unchanged(cur)
                } else {
                    let mut o = cur;
                    let m = meta_mut(&mut o);
                    m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                    // Pods get the grace period asked for (gracePeriodSeconds), else their own.
                    let grace = if kind.kind == "Pod" {
                        opts.get("gracePeriodSeconds").and_then(Value::as_i64).unwrap_or_else(|| o["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0)
                    } else {
                        0
                    };
                    let m = meta_mut(&mut o);
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    if kind.kind == "Namespace" {
                        o["status"]["phase"] = json!("Terminating");
                    }
                    Outcome::Put(o)
                }
            } else {
                Outcome::Delete(cur)
            };
            Ok(dry(out, is_dry))
        })
        .await?;
    if ev == Some(EventType::Deleted) && kind.kind == "Service" {
        crate::ipalloc::release(app, str_at(&obj, "spec.clusterIP"), ns.unwrap_or(""), name)
            .await?;
    }
    Ok(obj)
}

async fn delete(
    app: &Arc<App>,
    kind: &'static Kind,
    ns: Option<&str>,
    name: &str,
    q: &Q,
    body: &Value,
) -> ApiResult<Value> {
    let mut opts = body.clone();
    if let Some(dr) = q.get("dryRun") {
        opts["dryRun"] = json!([dr]);
    }
    if let Some(g) = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse::<i64>().ok())
    {
        opts["gracePeriodSeconds"] = json!(g);
    }
    let is_dry = opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    let obj = delete_object(app, kind, ns, name, &opts, is_dry).await?;
    if kind.namespaced || kind.kind == "Namespace" {
        app.ns_wake.notify_one();
    }
    Ok(obj)
}

async fn delete_collection(
    app: &Arc<App>,
    kind: &'static Kind,
    ns: Option<&str>,
    q: &Q,
) -> ApiResult<Vec<Value>> {
    let is_dry = dry_run(q)?;
    let l = list(app, kind, ns, q)?;
    let mut out = Vec::new();
    for o in l["items"].as_array().into_iter().flatten() {
        let name = str_at(o, "metadata.name");
        let ons = str_at(o, "metadata.namespace");
        let ons = if ons.is_empty() { None } else { Some(ons) };
        match delete_object(app, kind, ons, name, &json!({}), is_dry).await {
            Ok(v) => out.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    app.ns_wake.notify_one();
    Ok(out)
}

/// Label and field selectors of a list or watch.
struct Filter {
    labels: Selector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(kind: &Kind, q: &Q) -> ApiResult<Self> {
        let labels = Selector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        fields
            .check_supported(kind.field_selectors)
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        Ok(Self { labels, fields })
    }
    fn matches(&self, o: &Value) -> bool {
        if !self.labels.is_empty() {
            let labels = str_map(o["metadata"].get("labels")).unwrap_or_default();
            if !self.labels.matches(&labels) {
                return false;
            }
        }
        self.fields.matches(o)
    }
}

fn list(app: &App, kind: &Kind, ns: Option<&str>, q: &Q) -> ApiResult<Value> {
    let filter = Filter::from_query(kind, q)?;
    let limit: Option<usize> = match q.get("limit").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    let prefix = kind.prefix(ns);
    let (mut head, start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(tok) => {
            let (rv, start) = tok
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            let rv: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            let start =
                hex_decode(start).ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            if !start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue token does not match this request",
                ));
            }
            (rv, Some(start))
        }
        None => (app.storage.head(), None),
    };
    if head == 0 {
        head = app.storage.head();
    }
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    let mut cursor = start;
    // Pages are filled after filtering, scanning the store in batches.
    'outer: loop {
        let batch = app.storage.list(&prefix, cursor.as_deref(), Some(1000))?;
        let n = batch.len();
        for (k, o) in batch {
            if let Some(l) = limit {
                if items.len() >= l {
                    next = Some(k);
                    break 'outer;
                }
            }
            cursor = Some(format!("{k}\u{0}"));
            if filter.matches(&o) {
                items.push(o);
            }
        }
        if n < 1000 {
            break;
        }
    }
    let mut meta = json!({"resourceVersion": head.to_string()});
    if let Some(k) = next {
        meta["continue"] = json!(format!("{head}:{}", hex_encode(&k)));
        meta["remainingItemCount"] = Value::Null;
        if let Some(m) = meta.as_object_mut() {
            m.remove("remainingItemCount");
        }
    }
    Ok(
        json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": meta, "items": items}),
    )
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// What a watch client is sent for one stored event, after selectors: transitions into and
/// out of the selection become ADDED and DELETED.
fn filter_event(filter: &Filter, e: &Event) -> Option<&'static str> {
    let now = filter.matches(&e.object);
    match e.ty {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = e.old.as_deref().is_some_and(|o| filter.matches(o));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

struct Encoder {
    kind: &'static Kind,
    table: bool,
    include: String,
    sent_columns: bool,
}

impl Encoder {
    fn line(&mut self, ty: &str, obj: &Value) -> bytes::Bytes {
        let object = if self.table && ty != "BOOKMARK" && ty != "ERROR" {
            let mut t = table::table(self.kind.kind, &[obj], rv_of(obj), &self.include);
            if self.sent_columns {
                t["columnDefinitions"] = json!([]);
            }
            self.sent_columns = true;
            t
        } else {
            obj.clone()
        };
        let mut b = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        b.push(b'\n');
        bytes::Bytes::from(b)
    }
}

fn watch(
    app: &Arc<App>,
    kind: &'static Kind,
    ns: Option<&str>,
    q: &Q,
    table: bool,
) -> ApiResult<Response> {
    let filter = Filter::from_query(kind, q)?;
    let timeout = match q.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => 1800,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let prefix = kind.prefix(ns);
    let (initial, from) = if rv_param.is_empty() || rv_param == "0" || send_initial {
        let mut lq = q.clone();
        lq.remove("limit");
        lq.remove("continue");
        let l = list(app, kind, ns, &lq)?;
        let head: u64 = str_at(&l, "metadata.resourceVersion").parse().unwrap_or(0);
        (l["items"].as_array().cloned().unwrap_or_default(), head)
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?;
        (Vec::new(), rv)
    };
    let mut enc = Encoder {
        kind,
        table,
        include: q
            .get("includeObject")
            .cloned()
            .unwrap_or_else(|| "Metadata".into()),
        sent_columns: false,
    };
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(256);
    let storage = app.storage.clone();
    let sub = storage.subscribe(from);
    tokio::spawn(async move {
        let (backlog, mut live) = match sub {
            Ok(s) => s,
            Err(oldest) => {
                let st = ApiError::gone(format!("too old resource version: {from} ({oldest})"))
                    .to_status();
                let _ = tx.send(enc.line("ERROR", &st)).await;
                return;
            }
        };
        for o in &initial {
            if tx.send(enc.line("ADDED", o)).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64, end: bool| {
            let mut m = json!({"resourceVersion": rv.to_string()});
            if end {
                m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": m})
        };
        if send_initial
            && bookmarks
            && tx
                .send(enc.line("BOOKMARK", &bookmark(from, true)))
                .await
                .is_err()
        {
            return;
        }
        let mut last = from;
        for e in backlog {
            if e.rv <= last || !e.key.starts_with(&prefix) {
                continue;
            }
            last = e.rv;
            if let Some(ty) = filter_event(&filter, &e) {
                if tx.send(enc.line(ty, &e.object)).await.is_err() {
                    return;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let committed = storage.committed_rx();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let c = *committed.borrow();
                    if live.is_empty() && c > last {
                        last = c;
                    }
                    if tx.send(enc.line("BOOKMARK", &bookmark(last, false))).await.is_err() {
                        return;
                    }
                }
                r = live.recv() => {
                    let e = match r {
                        Ok(e) => e,
                        // A client too slow for the stream is cut off; it resumes from its last version.
                        Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if e.rv <= last {
                        continue;
                    }
                    last = e.rv;
                    if !e.key.starts_with(&prefix) {
                        continue;
                    }
                    if let Some(ty) = filter_event(&filter, &e) {
                        if tx.send(enc.line(ty, &e.object)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_with_paths() {
        let kind = registry::by_kind("Pod").unwrap();
        let input = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1}, "spec": {"containers": [{"name": "a", "imagee": "x"}], "extra": null}});
        let mut w = Vec::new();
        let err = canonicalize(kind, input.clone(), FieldValidation::Strict, &mut w).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("metadata.bogus"), "{}", err.message);
        assert!(
            err.message.contains("spec.containers[0].imagee"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("extra"));
        let out = canonicalize(kind, input.clone(), FieldValidation::Warn, &mut w).unwrap();
        assert_eq!(w.len(), 2);
        assert!(out["metadata"].get("bogus").is_none());
        let mut w = Vec::new();
        canonicalize(kind, input, FieldValidation::Ignore, &mut w).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn type_errors_are_bad_requests() {
        let kind = registry::by_kind("Pod").unwrap();
        let input = json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        let err = canonicalize(kind, input, FieldValidation::Strict, &mut Vec::new()).unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn selector_transitions() {
        let kind = registry::by_kind("Pod").unwrap();
        let mut q = Q::new();
        q.insert("labelSelector".into(), "app=web".into());
        let f = Filter::from_query(kind, &q).unwrap();
        let web = Arc::new(json!({"metadata": {"labels": {"app": "web"}}}));
        let db = Arc::new(json!({"metadata": {"labels": {"app": "db"}}}));
        let ev = |ty, object: &Arc<Value>, old: Option<&Arc<Value>>| Event {
            rv: 1,
            ty,
            key: String::new(),
            object: object.clone(),
            old: old.cloned(),
        };
        assert_eq!(
            filter_event(&f, &ev(EventType::Modified, &web, Some(&db))),
            Some("ADDED")
        );
        assert_eq!(
            filter_event(&f, &ev(EventType::Modified, &db, Some(&web))),
            Some("DELETED")
        );
        assert_eq!(
            filter_event(&f, &ev(EventType::Modified, &web, Some(&web))),
            Some("MODIFIED")
        );
        assert_eq!(
            filter_event(&f, &ev(EventType::Modified, &db, Some(&db))),
            None
        );
        assert_eq!(filter_event(&f, &ev(EventType::Added, &db, None)), None);
        let mut bad = Q::new();
        bad.insert("fieldSelector".into(), "spec.bogus=1".into());
        assert!(Filter::from_query(kind, &bad).is_err());
    }

    #[test]
    fn uid_shape_and_names() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let n = generated_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9);
        assert_eq!(hex_decode(&hex_encode("/pods/a/b")).unwrap(), "/pods/a/b");
    }
}
