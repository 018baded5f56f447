//! What a pod takes from the apiserver when a container starts: the ConfigMaps and Secrets its
//! env, envFrom and volumes name, and service account tokens for projected
//! `serviceAccountToken` sources (a TokenRequest bound to the pod, as the kubelet makes them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use super::translate::ApiData;

/// Token requests a pod's projected volumes make: (audience, expirationSeconds).
type TokenKey = (String, i64);

fn referenced(spec: &PodSpec) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<TokenKey>) {
    let (mut cms, mut secrets, mut tokens) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &s.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(x) = &s.secret {
                secrets.insert(x.name.clone());
            }
            if let Some(t) = &s.service_account_token {
                tokens.insert((
                    t.audience.clone().unwrap_or_default(),
                    t.expiration_seconds.unwrap_or(3600),
                ));
            }
        }
    }
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in all {
        for e in c.env.iter().flatten() {
            if let Some(f) = &e.value_from {
                if let Some(r) = &f.config_map_key_ref {
                    cms.insert(r.name.clone());
                }
                if let Some(r) = &f.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets, tokens)
}

fn config_map_data(c: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = c
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    out.extend(
        c.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    out
}

/// The apiserver client for the objects pods refer to, once the cluster has one (it is
/// replaced when the node's certificate is renewed).
#[derive(Default)]
pub struct ApiObjects(OnceLock<watch::Receiver<kube::Client>>);

impl ApiObjects {
    pub fn connect(&self, client: watch::Receiver<kube::Client>) {
        let _ = self.0.set(client);
    }

    /// The current client; None without an apiserver.
    pub fn client(&self) -> Option<kube::Client> {
        self.0.get().map(|c| c.borrow().clone())
    }

    /// Fetches what the pod refers to (absent objects are left out; whoever needs them says
    /// so). Without an apiserver, only pods that refer to nothing can run.
    pub async fn fetch(
        &self,
        spec: &PodSpec,
        ns: &str,
        pod_name: &str,
        pod_uid: &str,
    ) -> Result<ApiData, String> {
        let (cms, secrets, tokens) = referenced(spec);
        let mut data = ApiData::default();
        if cms.is_empty() && secrets.is_empty() && tokens.is_empty() {
            return Ok(data);
        }
        let Some(client) = self.client() else {
            return Err(
                "config maps, secrets and service account tokens need an apiserver".to_string(),
            );
        };
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for name in cms {
            match cm_api.get_opt(&name).await {
                Ok(Some(c)) => {
                    data.config_maps.insert(name, config_map_data(c));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("getting configmap {name:?}: {e}")),
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(s)) => {
                    let mut m: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    m.extend(
                        s.string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    data.secrets.insert(name, m);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("getting secret {name:?}: {e}")),
            }
        }
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let sa_api: Api<ServiceAccount> = Api::namespaced(client, ns);
        for (audience, exp) in tokens {
            let req = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: if audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![audience.clone()]
                    },
                    expiration_seconds: Some(exp),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod_name.to_string()),
                        uid: Some(pod_uid.to_string()),
                    }),
                },
                ..Default::default()
            };
            let got: TokenRequest = sa_api
                .create_subresource("token", &sa, &PostParams::default(), &req)
                .await
                .map_err(|e| format!("requesting a token for service account {sa:?}: {e}"))?;
            let token = got.status.map(|s| s.token).unwrap_or_default();
            data.tokens.insert((audience, exp), token);
        }
        Ok(data)
    }
}
