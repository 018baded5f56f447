//! ServiceAccounts and their `token` subresource (TokenRequest, `kubectl create token`).

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::json;

use super::strategy::{gvk_of, Gvk, Strategy, Subresource};
use super::{decode_kv, json_response, ApiResult, Request, Store};
use crate::api::satoken;
use crate::api::status::ApiError;
use crate::api::table;

pub struct ServiceAccounts;
pub static SERVICEACCOUNT: ServiceAccounts = ServiceAccounts;

impl Strategy for ServiceAccounts {
    fn printer(&self) -> &'static table::Printer {
        &table::SERVICEACCOUNTS
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[&Token]
    }
}

/// `serviceaccounts/<name>/token`: a TokenRequest answered with a signed token.
struct Token;

#[async_trait]
impl Subresource for Token {
    fn name(&self) -> &'static str {
        "token"
    }
    fn kind(&self) -> Option<Gvk> {
        Some(gvk_of::<k8s_openapi::api::authentication::v1::TokenRequest>())
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["create"]
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> Option<ApiResult> {
        (method == Method::POST).then_some(())?;
        Some(token_request(req, store, ns.unwrap_or("default"), name, body).await)
    }
}

async fn token_request(
    req: &Request<'_>,
    store: &Store,
    ns: &str,
    name: &str,
    body: &Bytes,
) -> ApiResult {
    let tr = if body.is_empty() {
        json!({})
    } else {
        req.parse_body(body)?
    };
    let sa = decode_kv(&store.current(req, Some(ns), name).await?);
    let ttl = tr["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    if ttl < 600 {
        return Err(ApiError::new(422, "Invalid", format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {ttl}: may not specify a duration less than 10 minutes")));
    }
    let audiences: Vec<String> = tr["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let (token, exp) = req
        .server
        .sa
        .issue(
            ns,
            name,
            sa["metadata"]["uid"].as_str().unwrap_or_default(),
            &audiences,
            ttl,
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let exp = jiff::Timestamp::from_second(exp)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut spec = tr["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["expirationSeconds"] = json!(ttl);
    if audiences.is_empty() {
        spec["audiences"] = json!([satoken::ISSUER]);
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": name, "namespace": ns, "creationTimestamp": null}, "spec": spec, "status": {"token": token, "expirationTimestamp": exp}}),
    ))
}
