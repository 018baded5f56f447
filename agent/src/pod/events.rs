//! Where the node's events about pods go (`Pulled`, `Started`, `Killing`…): to the apiserver
//! once the cluster takes them (`cluster/events.rs` posts them), nowhere before.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

/// An event about a pod, as the kubelet records them.
pub struct PodEvent {
    pub pod: Pod,
    pub type_: String,
    pub reason: String,
    pub message: String,
}

#[derive(Default)]
pub struct EventSink(OnceLock<mpsc::UnboundedSender<PodEvent>>);

impl EventSink {
    /// Sends every event from now on to the receiver returned (the first call only; later
    /// ones get a receiver that never yields).
    pub fn connect(&self) -> mpsc::UnboundedReceiver<PodEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.0.set(tx);
        rx
    }

    pub fn normal(&self, pod: &Pod, reason: &str, message: String) {
        self.record(pod, "Normal", reason, message);
    }

    pub fn warning(&self, pod: &Pod, reason: &str, message: String) {
        self.record(pod, "Warning", reason, message);
    }

    fn record(&self, pod: &Pod, type_: &str, reason: &str, message: String) {
        if let Some(tx) = self.0.get() {
            let _ = tx.send(PodEvent {
                pod: pod.clone(),
                type_: type_.to_string(),
                reason: reason.to_string(),
                message,
            });
        }
    }
}
