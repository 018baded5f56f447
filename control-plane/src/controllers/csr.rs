//! The CertificateSigningRequest controllers of kube-controller-manager, through the API: the
//! approver (`csrapproving`: kubelet client certificates requested by bootstrappers, or renewed
//! by the node itself, once a SubjectAccessReview allows the requester
//! `certificatesigningrequests/nodeclient` or `/selfnodeclient`) and the signer (`csrsigning`:
//! approved requests for the kube-apiserver client signers, signed by the cluster CA).

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::certificates::{parse_request_pem, sign, CLIENT_SIGNER, KUBELET_CLIENT_SIGNER};
use crate::reconcile::{self, Result};

struct Csr {
    client: kube::Client,
    /// The cluster CA's directory.
    pki: PathBuf,
}

fn has_condition(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == ty && c.status != "False")
}

impl Csr {
    fn api(&self) -> Api<CertificateSigningRequest> {
        Api::all(self.client.clone())
    }

    /// Whether the requester may have this node client certificate approved: the subject is
    /// a node (`system:node:<name>`, `O=system:nodes`) and a SubjectAccessReview allows the
    /// requester `nodeclient` (a new node) or `selfnodeclient` (a node renewing its own).
    async fn recognized(&self, csr: &CertificateSigningRequest) -> Result<bool> {
        let Ok((cn, orgs)) = parse_request_pem(&csr.spec.request.0) else {
            return Ok(false);
        };
        if !cn.starts_with("system:node:") || orgs != ["system:nodes"] {
            return Ok(false);
        }
        let requester = csr.spec.username.clone().unwrap_or_default();
        let sub = if cn == requester {
            "selfnodeclient"
        } else {
            "nodeclient"
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(requester),
                uid: csr.spec.uid.clone(),
                groups: csr.spec.groups.clone(),
                extra: csr.spec.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("certificates.k8s.io".into()),
                    resource: Some("certificatesigningrequests".into()),
                    subresource: Some(sub.into()),
                    verb: Some("create".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    async fn approve(&self, csr: &CertificateSigningRequest) -> Result<()> {
        let mut approved = csr.clone();
        let now = Time(jiff::Timestamp::now());
        approved
            .status
            .get_or_insert_with(CertificateSigningRequestStatus::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("AutoApproved".into()),
                message: Some(
                    "Auto approving kubelet client certificate after SubjectAccessReview.".into(),
                ),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            });
        self.api()
            .replace_subresource(
                "approval",
                &csr.name_any(),
                &PostParams::default(),
                &approved,
            )
            .await?;
        tracing::info!(csr = %csr.name_any(), "approved");
        Ok(())
    }

    async fn issue(&self, csr: &CertificateSigningRequest) -> Result<()> {
        let pem = sign(&self.pki, &csr.spec.request.0, csr.spec.expiration_seconds)
            .map_err(|e| reconcile::Error::Invalid(format!("signing: {e}")))?;
        let mut signed = csr.clone();
        signed
            .status
            .get_or_insert_with(CertificateSigningRequestStatus::default)
            .certificate = Some(ByteString(pem.into_bytes()));
        self.api()
            .replace_status(&csr.name_any(), &PostParams::default(), &signed)
            .await?;
        tracing::info!(csr = %csr.name_any(), "signed");
        Ok(())
    }
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, c: Arc<Csr>) -> Result<Action> {
    let signer = csr.spec.signer_name.as_str();
    let decided = has_condition(&csr, "Approved") || has_condition(&csr, "Denied");
    if signer == KUBELET_CLIENT_SIGNER && !decided && c.recognized(&csr).await? {
        // The approval is a change of its own: the signer runs on its watch event.
        c.approve(&csr).await?;
        return Ok(Action::await_change());
    }
    let unsigned = csr.status.as_ref().is_none_or(|s| s.certificate.is_none());
    if has_condition(&csr, "Approved")
        && !has_condition(&csr, "Denied")
        && unsigned
        && (signer == KUBELET_CLIENT_SIGNER || signer == CLIENT_SIGNER)
    {
        c.issue(&csr).await?;
    }
    Ok(Action::await_change())
}

/// Runs the approver and signer until the process ends (or the task is aborted).
pub async fn run(client: kube::Client, pki: PathBuf) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let ctx = Arc::new(Csr { client, pki });
    reconcile::run("certificate-controller", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod tests;
