//! What every namespace holds, made through the API: the `default` ServiceAccount
//! (`pkg/controller/serviceaccount/serviceaccounts_controller.go`) and the `kube-root-ca.crt`
//! ConfigMap with the cluster CA (`pkg/controller/certificates/rootcacertpublisher`), each
//! remade if deleted and, for the ConfigMap, put back if changed. Terminating namespaces are
//! left alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::api::registry::namespaces::ROOT_CA_DESCRIPTION;
use crate::api::registry::pods::ROOT_CA_CONFIGMAP;
use crate::reconcile::{self, Error, Result};

const DEFAULT: &str = "default";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";

fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// A create refused because the namespace is going (or gone) is not an error.
fn created<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `config.Namespace → named object`, so that deleting `default` resyncs its namespace.
fn namespace_of(ns: Option<String>) -> Option<ObjectRef<Namespace>> {
    ns.map(|n| ObjectRef::new(&n))
}

async fn ensure_service_account(ns: Arc<Namespace>, client: Arc<kube::Client>) -> Result<Action> {
    if !active(&ns) {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced((*client).clone(), &ns.name_any());
    if api.get_opt(DEFAULT).await?.is_none() {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(DEFAULT.into());
        created(api.create(&PostParams::default(), &sa).await)?;
    }
    Ok(Action::await_change())
}

/// Runs the service account controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT}")),
        |sa: ServiceAccount| namespace_of(sa.metadata.namespace),
    );
    reconcile::run(
        "serviceaccount-controller",
        controller,
        ensure_service_account,
        Arc::new(client),
    )
    .await;
}

struct Publisher {
    client: kube::Client,
    ca_file: PathBuf,
}

async fn publish(ns: Arc<Namespace>, p: Arc<Publisher>) -> Result<Action> {
    if !active(&ns) {
        return Ok(Action::await_change());
    }
    let ca = std::fs::read_to_string(&p.ca_file)
        .map_err(|e| Error::Invalid(format!("reading {}: {e}", p.ca_file.display())))?;
    let data = BTreeMap::from([("ca.crt".to_string(), ca)]);
    let description = BTreeMap::from([(
        DESCRIPTION_ANNOTATION.to_string(),
        ROOT_CA_DESCRIPTION.to_string(),
    )]);
    let api: Api<ConfigMap> = Api::namespaced(p.client.clone(), &ns.name_any());
    match api.get_opt(ROOT_CA_CONFIGMAP).await? {
        None => {
            let mut cm = ConfigMap {
                data: Some(data),
                ..Default::default()
            };
            cm.metadata.name = Some(ROOT_CA_CONFIGMAP.into());
            cm.metadata.annotations = Some(description);
            created(api.create(&PostParams::default(), &cm).await)?;
        }
        Some(mut cm) => {
            let annotations = cm.metadata.annotations.get_or_insert_with(BTreeMap::new);
            let described = annotations.get(DESCRIPTION_ANNOTATION).map(String::as_str)
                == Some(ROOT_CA_DESCRIPTION);
            if cm.data.as_ref() != Some(&data) || !described {
                annotations.extend(description);
                cm.data = Some(data);
                api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                    .await?;
            }
        }
    }
    Ok(Action::await_change())
}

/// Runs the root CA publisher (the CA from `ca_file`, kube-controller-manager's
/// `--root-ca-file`) until the process ends (or the task is aborted).
pub async fn run_root_ca_publisher(client: kube::Client, ca_file: PathBuf) {
    let controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")),
        |cm: ConfigMap| namespace_of(cm.metadata.namespace),
    );
    let ctx = Arc::new(Publisher { client, ca_file });
    reconcile::run("root-ca-cert-publisher", controller, publish, ctx).await;
}
