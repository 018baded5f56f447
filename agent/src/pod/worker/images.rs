//! The container's image by its pull policy, as the kubelet's image manager decides:
//! `Always` (the default for `:latest` and untagged names) asks the registry every start,
//! `IfNotPresent` pulls only what is missing, `Never` only uses what is there. Pulls use the
//! pod's `imagePullSecrets` and the node's credentials, and are paced by the node's pull slots.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use podlet_runtime::image::pull::Credentials;

use super::*;

/// The pull policy the apiserver would default for `image`.
pub fn default_policy(normalized: &str) -> &'static str {
    if !normalized.contains('@') && normalized.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

impl Worker {
    pub(super) async fn ensure_image(
        &mut self,
        c: &Container,
    ) -> Result<ImageRecord, WaitingReason> {
        let r = self.image_by_policy(c).await;
        if let Ok(rec) = &r {
            self.svc.images.usage.used(&rec.id);
        }
        r
    }

    async fn image_by_policy(&mut self, c: &Container) -> Result<ImageRecord, WaitingReason> {
        let image = c.image.clone().unwrap_or_default();
        let normalized = match podlet_runtime::image::reference::normalize(&image) {
            Ok(n) => n,
            Err(e) => {
                let w = WaitingReason::InvalidImageName {
                    image,
                    error: e.to_string(),
                };
                self.svc.events.warning(
                    &self.pod,
                    "InspectFailed",
                    w.message().unwrap_or_default(),
                );
                return Err(w);
            }
        };
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_policy(&normalized).to_string());
        let present = self.svc.images.store.resolve(&image).ok();
        match (policy.as_str(), present) {
            ("Never", None) => {
                let w = WaitingReason::ErrImageNeverPull { image };
                self.svc
                    .events
                    .warning(&self.pod, w.reason(), w.message().unwrap_or_default());
                return Err(w);
            }
            ("Never" | "IfNotPresent", Some(rec)) => {
                self.svc.events.normal(
                    &self.pod,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(rec);
            }
            _ => {}
        }
        self.svc
            .events
            .normal(&self.pod, "Pulling", format!("Pulling image {image:?}"));
        let creds = self.pull_credentials().await;
        let waited = Instant::now();
        let _slot = match &self.svc.images.slots {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        match self.svc.images.puller.pull(&image, &creds).await {
            Ok(p) => {
                self.svc.events.normal(&self.pod, "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:.3}s ({:.3}s including waiting). Image size: {} bytes.",
                        p.duration.as_secs_f64(),
                        waited.elapsed().as_secs_f64(),
                        p.image.size
                    ),
                );
                Ok(p.image)
            }
            Err(e) => {
                let w = WaitingReason::ErrImagePull {
                    image,
                    error: e.to_string(),
                };
                self.svc
                    .events
                    .warning(&self.pod, "Failed", w.message().unwrap_or_default());
                Err(w)
            }
        }
    }

    /// The pod's `imagePullSecrets` (when an apiserver is there), then the node's credentials.
    async fn pull_credentials(&self) -> Credentials {
        let mut creds = Credentials::default();
        let names: Vec<String> = self
            .spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if let (false, Some(client)) = (names.is_empty(), self.svc.api.client()) {
            let api: Api<Secret> = Api::namespaced(client, &self.namespace);
            for name in names {
                let found = match api.get_opt(&name).await {
                    Ok(Some(s)) => {
                        let data = s.data.unwrap_or_default();
                        let blob = data
                            .get(".dockerconfigjson")
                            .or_else(|| data.get(".dockercfg"));
                        blob.and_then(|b| {
                            Credentials::parse(&b.0, &format!("secret {}/{name}", self.namespace))
                                .map_err(|e| tracing::warn!("{e}"))
                                .ok()
                        })
                    }
                    _ => None,
                };
                match found {
                    Some(c) => creds = creds.and(&c),
                    None => self.svc.events.warning(&self.pod, "FailedToRetrieveImagePullSecret",
                        format!("Unable to retrieve some image pull secrets ({name}); attempting to pull the image may not succeed."),
                    ),
                }
            }
        }
        creds.and(&self.svc.images.node_credentials())
    }
}

#[cfg(test)]
mod tests {
    use super::default_policy;

    #[test]
    fn latest_and_untagged_images_default_to_always() {
        let n = |r: &str| podlet_runtime::image::reference::normalize(r).unwrap();
        assert_eq!(default_policy(&n("busybox")), "Always");
        assert_eq!(default_policy(&n("busybox:latest")), "Always");
        assert_eq!(default_policy(&n("busybox:1.36")), "IfNotPresent");
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(default_policy(&n(&d)), "IfNotPresent");
        assert_eq!(
            default_policy(&n(&format!("busybox:latest@{}", &d[8..]))),
            "IfNotPresent"
        );
    }
}
