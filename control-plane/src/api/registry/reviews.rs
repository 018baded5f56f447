//! Reviews, answered on create and never stored: access reviews (by the same authorizer that
//! guards requests) and SelfSubjectReview (`kubectl auth whoami`).

use async_trait::async_trait;
use serde_json::{json, Value};

use super::strategy::Strategy;
use super::Request;
use crate::api::auth::{self, Attributes, User};
use crate::api::status::ApiError;

/// SelfSubjectAccessReview (about the requester) or SubjectAccessReview (about `spec.user`).
pub struct AccessReview {
    about_requester: bool,
}

pub static SELF_SUBJECT_ACCESS: AccessReview = AccessReview {
    about_requester: true,
};
pub static SUBJECT_ACCESS: AccessReview = AccessReview {
    about_requester: false,
};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect()
}

#[async_trait]
impl Strategy for AccessReview {
    fn example(&self, _: &str) -> Value {
        json!({"spec": {"user": "admin", "groups": ["system:masters"], "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "default"}}})
    }

    async fn review(&self, req: &Request<'_>, mut obj: Value) -> Result<Value, ApiError> {
        let spec = &obj["spec"];
        let subject = if self.about_requester {
            req.user.clone()
        } else {
            User {
                name: spec["user"].as_str().unwrap_or_default().into(),
                uid: spec["uid"].as_str().unwrap_or_default().into(),
                groups: strings(&spec["groups"]),
            }
        };
        let ra = &spec["resourceAttributes"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let a = if ra.is_object() {
            Attributes::Resource {
                verb: text(&ra["verb"]),
                group: text(&ra["group"]),
                resource: text(&ra["resource"]),
                subresource: text(&ra["subresource"]),
                namespace: text(&ra["namespace"]),
                name: text(&ra["name"]),
            }
        } else {
            let nr = &spec["nonResourceAttributes"];
            Attributes::NonResource {
                verb: text(&nr["verb"]),
                path: text(&nr["path"]),
            }
        };
        obj["status"] = match auth::authorize(req.store(), &subject, &a).await {
            Some(reason) => json!({"allowed": true, "reason": reason}),
            None => json!({"allowed": false}),
        };
        Ok(obj)
    }
}

/// SelfSubjectReview: who the requester is.
pub struct SelfSubjectReview;
pub static SELF_SUBJECT: SelfSubjectReview = SelfSubjectReview;

#[async_trait]
impl Strategy for SelfSubjectReview {
    async fn review(&self, req: &Request<'_>, mut obj: Value) -> Result<Value, ApiError> {
        let u = req.user;
        obj["status"] = json!({"userInfo": {"username": u.name, "uid": u.uid, "groups": u.groups}});
        Ok(obj)
    }
}
