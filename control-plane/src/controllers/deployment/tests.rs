//! The Deployment controller (with the ReplicaSet controller beside it) against the
//! in-process apiserver, as `system:kube-controller-manager`. Pods become Ready when the test
//! says so, through `pods/status`.

use std::sync::Mutex;

use futures_util::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{json, Value};

use super::*;
use crate::controllers::replicaset;
use crate::controllers::replicaset::tests::{make_ready, manager, pods_of, WAIT};
use crate::testing::cluster::{eventually, Cluster, Task};

struct Env {
    _c: Cluster,
    admin: kube::Client,
    ds: Api<Deployment>,
    rss: Api<ReplicaSet>,
    _loops: (Task, Task),
}

impl Env {
    async fn new() -> Env {
        let c = Cluster::new().await;
        let admin = c.admin();
        let loops = (
            Task::spawn(replicaset::run(manager(&c))),
            Task::spawn(run(manager(&c))),
        );
        Env {
            ds: Api::namespaced(admin.clone(), "default"),
            rss: Api::namespaced(admin.clone(), "default"),
            admin,
            _c: c,
            _loops: loops,
        }
    }

    async fn create(&self, name: &str, replicas: i32, extra: Value) -> Deployment {
        let mut d = json!({"metadata": {"name": name}, "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        }});
        json_patch::merge(&mut d, &extra);
        let d = serde_json::from_value(d).unwrap();
        self.ds.create(&PostParams::default(), &d).await.unwrap()
    }

    async fn patch(&self, name: &str, patch: Value) {
        self.ds
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn set_image(&self, name: &str, image: &str) {
        self.patch(name, json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}))
            .await;
    }

    /// The Deployment's ReplicaSets, lowest revision first.
    async fn replica_sets(&self, app: &str) -> Vec<ReplicaSet> {
        let mut rss = self
            .rss
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items;
        rss.sort_by_key(util::revision);
        rss
    }

    /// Marks every active pod of `app` Ready (only those of template `hash`, if given).
    async fn ready(&self, app: &str, hash: Option<&str>) {
        for p in pods_of(&self.admin, app).await {
            let ours = hash
                .is_none_or(|h| p.labels().get(util::HASH_LABEL).map(String::as_str) == Some(h));
            if ours && !k8s_rules::pods::is_ready(&p) && p.metadata.deletion_timestamp.is_none() {
                make_ready(&self.admin, &p.name_any()).await;
            }
        }
    }

    /// Drives pods Ready until the rollout is complete; the Deployment then.
    async fn complete(&self, name: &str) -> Deployment {
        eventually(&format!("{name} rolled out"), WAIT, || async {
            self.ready(name, None).await;
            let d = self.ds.get(name).await.unwrap();
            let st = d.status.clone().unwrap_or_default();
            let reason = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Progressing")
                .and_then(|c| c.reason.clone());
            (util::complete(&d, &st) && reason.as_deref() == Some(util::NEW_RS_AVAILABLE_REASON))
                .then_some(d)
        })
        .await
    }

    async fn reasons(&self, name: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.admin.clone(), "default");
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .filter_map(|e| e.message)
            .collect()
    }
}

fn annotation(rs: &ReplicaSet, key: &str) -> Option<String> {
    rs.metadata.annotations.as_ref()?.get(key).cloned()
}

fn condition(d: &Deployment, type_: &str) -> k8s_openapi::api::apps::v1::DeploymentCondition {
    util::get_condition(d.status.as_ref().unwrap(), type_)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_new_deployment_gets_a_hashed_replica_set_at_revision_one() {
    let e = Env::new().await;
    e.create("web", 3, json!({})).await;
    let d = e.complete("web").await;
    let rss = e.replica_sets("web").await;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs.labels()[util::HASH_LABEL].clone();
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    let spec = rs.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector.match_labels.as_ref().unwrap()[util::HASH_LABEL],
        hash
    );
    assert_eq!(
        spec.template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()[util::HASH_LABEL],
        hash
    );
    assert_eq!(annotation(rs, util::REVISION).as_deref(), Some("1"));
    assert_eq!(annotation(rs, util::DESIRED_REPLICAS).as_deref(), Some("3"));
    assert_eq!(annotation(rs, util::MAX_REPLICAS).as_deref(), Some("4"));
    assert_eq!(d.annotations()[util::REVISION], "1");
    let pods = pods_of(&e.admin, "web").await;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.labels()[util::HASH_LABEL] == hash));
    let st = d.status.clone().unwrap();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    let avail = condition(&d, "Available");
    assert_eq!(
        (
            avail.status.as_str(),
            avail.reason.as_deref(),
            avail.message.as_deref()
        ),
        (
            "True",
            Some("MinimumReplicasAvailable"),
            Some("Deployment has minimum availability.")
        )
    );
    let progressing = condition(&d, "Progressing");
    assert_eq!(
        progressing.message,
        Some(format!(
            "ReplicaSet \"web-{hash}\" has successfully progressed."
        ))
    );
    let messages = e.reasons("web").await;
    assert!(
        messages.contains(&format!("Scaled up replica set web-{hash} from 0 to 3")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn a_rolling_update_stays_within_max_surge_and_max_unavailable() {
    let e = Env::new().await;
    e.create(
        "roll",
        4,
        json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}}}),
    )
    .await;
    e.complete("roll").await;
    e.set_image("roll", "busybox:2").await;
    let mut steps = 0;
    eventually("the rolling update", WAIT * 2, || {
        steps += 1;
        async {
            // maxSurge bounds what the Deployment asks of its ReplicaSets (upstream's
            // GetReplicaCountForReplicaSets); pods lag that: an old ReplicaSet's pod may still
            // be there a moment after its scale-down, while the new one's is created.
            let asked: i32 = e
                .replica_sets("roll")
                .await
                .iter()
                .map(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                .sum();
            assert!(
                asked <= 5,
                "{asked} replicas asked of the ReplicaSets, more than replicas + maxSurge"
            );
            let pods = pods_of(&e.admin, "roll").await;
            let ready = pods.iter().filter(|p| k8s_rules::pods::is_ready(p)).count();
            assert!(
                ready >= 3,
                "{ready} available, fewer than replicas - maxUnavailable"
            );
            // One pod at a time, as a slow kubelet.
            if let Some(p) = pods.iter().find(|p| !k8s_rules::pods::is_ready(p)) {
                make_ready(&e.admin, &p.name_any()).await;
            }
            let d = e.ds.get("roll").await.unwrap();
            let st = d.status.clone().unwrap_or_default();
            let done = util::complete(&d, &st)
                && pods.len() == 4
                && pods.iter().all(|p| {
                    p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2")
                });
            done.then_some(())
        }
    })
    .await;
    assert!(steps > 3);
    let rss = e.replica_sets("roll").await;
    assert_eq!(rss.len(), 2);
    assert_eq!(util::revision(&rss[1]), 2);
    assert_eq!(util::rs_replicas(&rss[0]), 0);
    assert_eq!(
        e.ds.get("roll").await.unwrap().annotations()[util::REVISION],
        "2"
    );
}

#[tokio::test]
async fn recreate_removes_the_old_pods_before_making_new_ones() {
    let e = Env::new().await;
    e.create(
        "re",
        2,
        json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}),
    )
    .await;
    e.complete("re").await;
    let old_hash = e.replica_sets("re").await[0].labels()[util::HASH_LABEL].clone();
    e.set_image("re", "busybox:2").await;
    eventually("the new pods", WAIT, || async {
        let pods = pods_of(&e.admin, "re").await;
        let old = pods
            .iter()
            .filter(|p| p.labels()[util::HASH_LABEL] == old_hash)
            .count();
        assert!(
            old == 0 || old == pods.len(),
            "old and new pods at once: {pods:?}"
        );
        e.ready("re", None).await;
        (old == 0 && pods.len() == 2).then_some(())
    })
    .await;
    e.complete("re").await;
}

#[tokio::test]
async fn rolling_back_reuses_the_old_replica_set_with_a_new_revision() {
    let e = Env::new().await;
    e.create("back", 2, json!({})).await;
    e.complete("back").await;
    let first = e.replica_sets("back").await[0].name_any();
    e.set_image("back", "busybox:2").await;
    e.complete("back").await;
    // What `kubectl rollout undo` does: the old template back in the Deployment.
    e.set_image("back", "busybox:1").await;
    let d = e.complete("back").await;
    let rss = e.replica_sets("back").await;
    assert_eq!(rss.len(), 2);
    let newest = &rss[1];
    assert_eq!(newest.name_any(), first);
    assert_eq!(annotation(newest, util::REVISION).as_deref(), Some("3"));
    assert_eq!(
        annotation(newest, util::REVISION_HISTORY).as_deref(),
        Some("1")
    );
    assert_eq!(d.annotations()[util::REVISION], "3");
}

#[tokio::test]
async fn old_replica_sets_beyond_the_history_limit_are_deleted() {
    let e = Env::new().await;
    e.create("hist", 1, json!({"spec": {"revisionHistoryLimit": 1}}))
        .await;
    e.complete("hist").await;
    for image in ["busybox:2", "busybox:3"] {
        e.set_image("hist", image).await;
        e.complete("hist").await;
    }
    let rss = eventually("one old ReplicaSet kept", WAIT, || async {
        let rss = e.replica_sets("hist").await;
        (rss.len() == 2).then_some(rss)
    })
    .await;
    assert_eq!(rss.iter().map(util::revision).collect::<Vec<_>>(), [2, 3]);
}

#[tokio::test]
async fn pause_and_resume_are_reported_and_a_paused_deployment_does_not_roll() {
    let e = Env::new().await;
    e.create("pause", 1, json!({})).await;
    e.complete("pause").await;
    // Every Progressing reason the Deployment goes through.
    let seen = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let ds = e.ds.clone();
    let _watch = Task::spawn(async move {
        let mut events =
            watcher(ds, watcher::Config::default().fields("metadata.name=pause")).boxed();
        while let Some(Ok(ev)) = events.next().await {
            if let watcher::Event::Apply(d) | watcher::Event::InitApply(d) = ev {
                if let Some(c) = d
                    .status
                    .as_ref()
                    .and_then(|s| util::get_condition(s, "Progressing"))
                {
                    let mut seen = record.lock().unwrap();
                    let r = c.reason.clone().unwrap_or_default();
                    if seen.last() != Some(&r) {
                        seen.push(r);
                    }
                }
            }
        }
    });
    e.patch("pause", json!({"spec": {"paused": true}})).await;
    e.set_image("pause", "busybox:2").await;
    let d = eventually(
        "the paused condition, the template change observed",
        WAIT,
        || async {
            let d = e.ds.get("pause").await.unwrap();
            let c = condition(&d, "Progressing");
            let observed =
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation;
            (c.reason.as_deref() == Some("DeploymentPaused") && observed).then_some(d)
        },
    )
    .await;
    let c = condition(&d, "Progressing");
    assert_eq!(
        (c.status.as_str(), c.message.as_deref()),
        ("Unknown", Some("Deployment is paused"))
    );
    assert_eq!(
        e.replica_sets("pause").await.len(),
        1,
        "no rollout while paused"
    );
    e.patch("pause", json!({"spec": {"paused": false}})).await;
    e.complete("pause").await;
    assert_eq!(e.replica_sets("pause").await.len(), 2);
    eventually("the resumed condition seen", WAIT, || async {
        let seen = seen.lock().unwrap().clone();
        let at = seen.iter().position(|r| r == "DeploymentPaused")?;
        seen[at..]
            .iter()
            .any(|r| r == "DeploymentResumed")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rollout_that_makes_no_progress_exceeds_its_deadline() {
    let e = Env::new().await;
    e.create("stuck", 1, json!({"spec": {"progressDeadlineSeconds": 1}}))
        .await;
    let d = eventually("ProgressDeadlineExceeded", WAIT, || async {
        let d = e.ds.get("stuck").await.unwrap();
        let st = d.status.as_ref()?;
        let c = util::get_condition(st, "Progressing")?;
        (c.reason.as_deref() == Some("ProgressDeadlineExceeded")).then_some(d)
    })
    .await;
    let rs = e.replica_sets("stuck").await.remove(0);
    let c = condition(&d, "Progressing");
    assert_eq!(c.status, "False");
    assert_eq!(
        c.message,
        Some(format!(
            "ReplicaSet \"{}\" has timed out progressing.",
            rs.name_any()
        ))
    );
    let avail = condition(&d, "Available");
    assert_eq!(
        (avail.status.as_str(), avail.reason.as_deref()),
        ("False", Some("MinimumReplicasUnavailable"))
    );
}

#[tokio::test]
async fn resizing_mid_rollout_scales_replica_sets_in_proportion() {
    let e = Env::new().await;
    e.create(
        "prop",
        10,
        json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}}}),
    )
    .await;
    e.complete("prop").await;
    let old_name = e.replica_sets("prop").await[0].name_any();
    let old_hash = e.replica_sets("prop").await[0].labels()[util::HASH_LABEL].clone();
    // The new template's pods never become ready: the rollout stops at 8 old and 5 new.
    e.set_image("prop", "busybox:broken").await;
    let sizes = |rss: &[ReplicaSet]| -> Vec<(String, i32)> {
        rss.iter()
            .map(|rs| (rs.name_any(), util::rs_replicas(rs)))
            .collect()
    };
    let new_name = eventually("the rollout stuck at 8 + 5", WAIT, || async {
        e.ready("prop", Some(&old_hash)).await;
        let rss = e.replica_sets("prop").await;
        let s = sizes(&rss);
        (s.len() == 2 && s[0] == (old_name.clone(), 8) && s[1].1 == 5).then(|| s[1].0.clone())
    })
    .await;
    e.patch("prop", json!({"spec": {"replicas": 20}})).await;
    eventually("14 old and 9 new", WAIT, || async {
        let rss = e.replica_sets("prop").await;
        (sizes(&rss) == [(old_name.clone(), 14), (new_name.clone(), 9)]).then_some(())
    })
    .await;
}
