//! The CSR approver and signer against the in-process apiserver.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WAIT: Duration = Duration::from_secs(10);
const BOOTSTRAPPER: &str = "system:bootstrap:abcdef";

/// A PEM certificate request for `cn` in `orgs`, and its key.
fn request(cn: &str, orgs: &[&str]) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    for o in orgs {
        dn.push(rcgen::DnType::OrganizationName, *o);
    }
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key)
}

/// Creates, as `client`'s user, a CSR named `name` for `pem` and `signer`.
async fn submit(client: &kube::Client, name: &str, pem: &str, signer: &str) {
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "usages": ["digital signature", "client auth"],
        },
    }))
    .unwrap();
    Api::<CertificateSigningRequest>::all(client.clone())
        .create(&PostParams::default(), &csr)
        .await
        .unwrap();
}

/// Binds `user` to the ClusterRole `role`.
async fn bind(c: &Cluster, user: &str, role: &str) {
    let b: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-{}", role.replace(':', "-"))},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(c.admin())
        .create(&PostParams::default(), &b)
        .await
        .unwrap();
}

fn bootstrapper(c: &Cluster) -> kube::Client {
    c.client(BOOTSTRAPPER, &["system:bootstrappers"])
}

/// The CSR once it has a certificate.
async fn signed(csrs: &Api<CertificateSigningRequest>, name: &str) -> CertificateSigningRequest {
    eventually(&format!("{name}'s certificate"), WAIT, || async {
        let csr = csrs.get(name).await.unwrap();
        csr.status
            .as_ref()
            .is_some_and(|s| s.certificate.is_some())
            .then_some(csr)
    })
    .await
}

/// Run as a user with only the certificate controller's role, which must be all it needs.
#[tokio::test]
async fn a_bootstrapper_gets_a_node_client_certificate_signed_by_the_cluster_ca() {
    let c = Cluster::new().await;
    bind(
        &c,
        "certificate-controller",
        "system:controller:certificate-controller",
    )
    .await;
    let _loop = Task::spawn(run(c.client("certificate-controller", &[]), c.pki_dir()));
    let (pem, key) = request("system:node:n1", &["system:nodes"]);
    submit(
        &bootstrapper(&c),
        "node-csr-n1",
        &pem,
        KUBELET_CLIENT_SIGNER,
    )
    .await;

    let csrs = Api::<CertificateSigningRequest>::all(c.admin());
    let csr = signed(&csrs, "node-csr-n1").await;
    assert_eq!(csr.spec.username.as_deref(), Some(BOOTSTRAPPER));
    let status = csr.status.unwrap();
    let conditions = status.conditions.unwrap_or_default();
    let approvals: Vec<_> = conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
        .collect();
    assert_eq!(approvals, [("Approved", "True", Some("AutoApproved"))]);

    // The apiserver's own verifier accepts it, for the requested subject and key.
    let pem = status.certificate.unwrap().0;
    let der = CertificateDer::from_pem_slice(&pem).expect("a PEM certificate");
    let ca = std::fs::read(c.pki_dir().join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&ca).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&der, &[], UnixTime::now())
        .expect("a client certificate from the cluster CA");
    assert_eq!(
        crate::pki::identity(&der),
        Some(("system:node:n1".into(), vec!["system:nodes".into()]))
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[tokio::test]
async fn requests_it_does_not_recognize_are_left_alone() {
    let c = Cluster::new().await;
    let manager = c.client(CONTROLLER_MANAGER_USER, &[]);
    let _loop = Task::spawn(run(manager.clone(), c.pki_dir()));
    // May ask for certificates, but not for node client ones.
    bind(&c, "mallory", "system:node-bootstrapper").await;
    let b = bootstrapper(&c);
    let node = request("system:node:n1", &["system:nodes"]).0;
    let jane = request("jane", &[]).0;
    let untouched = [
        ("other-signer", &b, jane.as_str(), CLIENT_SIGNER),
        ("not-a-node", &b, jane.as_str(), KUBELET_CLIENT_SIGNER),
        (
            "not-the-nodes-group",
            &b,
            &request("system:node:n1", &["system:masters"]).0,
            KUBELET_CLIENT_SIGNER,
        ),
        (
            "not-allowed",
            &c.client("mallory", &[]),
            node.as_str(),
            KUBELET_CLIENT_SIGNER,
        ),
    ];
    for (name, client, pem, signer) in &untouched {
        submit(client, name, pem, signer).await;
    }
    // One it does recognize, after the others: once that one is signed, the loop is running.
    submit(&b, "node", &node, KUBELET_CLIENT_SIGNER).await;
    let csrs = Api::<CertificateSigningRequest>::all(c.admin());
    signed(&csrs, "node").await;

    let ctx = Arc::new(Csr {
        client: manager,
        pki: c.pki_dir(),
    });
    for (name, ..) in &untouched {
        let csr = csrs.get(name).await.unwrap();
        reconcile(Arc::new(csr), ctx.clone()).await.unwrap();
        let status = csrs.get(name).await.unwrap().status;
        assert!(
            status
                .as_ref()
                .is_none_or(|s| s.conditions.is_none() && s.certificate.is_none()),
            "{name} was acted on: {status:?}"
        );
    }

    // Approved by an administrator, a client certificate is signed; one for a signer this
    // controller is not is not.
    let foreign = "example.com/signer";
    submit(&b, "foreign", &jane, foreign).await;
    for name in ["other-signer", "foreign"] {
        let mut csr = csrs.get(name).await.unwrap();
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("AdminApproved".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        csrs.replace_subresource("approval", name, &PostParams::default(), &csr)
            .await
            .unwrap();
    }
    let jane_cert = signed(&csrs, "other-signer")
        .await
        .status
        .unwrap()
        .certificate
        .unwrap();
    let der = CertificateDer::from_pem_slice(&jane_cert.0).unwrap();
    assert_eq!(crate::pki::identity(&der), Some(("jane".into(), vec![])));
    let csr = csrs.get("foreign").await.unwrap();
    reconcile(Arc::new(csr), ctx).await.unwrap();
    let csr = csrs.get("foreign").await.unwrap();
    assert!(csr.status.unwrap().certificate.is_none());
}
