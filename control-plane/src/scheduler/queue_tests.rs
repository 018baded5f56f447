use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::scheduler::testing::pod;

fn queue() -> Queue {
    Queue::new(Duration::from_secs(1), Duration::from_secs(10))
}

fn prio(name: &str, p: i32) -> Arc<PodInfo> {
    pod(name, json!({}), json!({"spec": {"priority": p}}))
}

fn pop_name(q: &mut Queue) -> Option<String> {
    q.pop().map(|p| p.info.name.clone())
}

#[test]
fn higher_priority_first_then_the_longest_waiting() {
    let mut q = queue();
    let t = Instant::now();
    q.upsert(prio("low", 0), t);
    q.upsert(prio("high", 100), t + Duration::from_millis(1));
    q.upsert(prio("low2", 0), t + Duration::from_millis(2));
    q.upsert(prio("high2", 100), t + Duration::from_millis(3));
    let order: Vec<String> = std::iter::from_fn(|| pop_name(&mut q)).collect();
    assert_eq!(order, ["high", "high2", "low", "low2"]);
}

#[test]
fn gated_pods_wait_until_their_gates_are_gone() {
    let mut q = queue();
    let t = Instant::now();
    let gated = pod(
        "g",
        json!({}),
        json!({"spec": {"schedulingGates": [{"name": "x"}]}}),
    );
    q.upsert(gated, t);
    q.on_event(Event::NodeAdd, t);
    q.flush(t + Duration::from_secs(600));
    assert!(q.pop().is_none());
    q.upsert(pod("g", json!({}), json!({})), t);
    assert_eq!(pop_name(&mut q).as_deref(), Some("g"));
}

/// An unschedulable pod waits for an event concerning a plugin that rejected it, then backs
/// off 1 s, 2 s, 4 s … up to 10 s per failure.
#[test]
fn unschedulable_pods_wait_for_a_helpful_event_then_back_off() {
    let mut q = queue();
    let t = Instant::now();
    q.upsert(prio("p", 0), t);
    let p = q.pop().unwrap();
    q.failed(&p.info.uid, HashSet::from([Plugin::NodeResourcesFit]), t);
    // A label change cannot help a pod short of cpu; a pod deleted can.
    q.on_event(Event::NodeLabel, t);
    q.flush(t + Duration::from_secs(2));
    assert!(q.pop().is_none());
    q.on_event(Event::AssignedPodDelete, t);
    assert_eq!(q.next_backoff(), Some(t + Duration::from_secs(1)));
    assert!(q.pop().is_none(), "still backing off");
    q.flush(t + Duration::from_secs(1));
    let p = q.pop().unwrap();
    assert_eq!(p.attempts, 2);
    // Failures double the back-off, capped at 10 s.
    let mut at = t + Duration::from_secs(1);
    for want in [2, 4, 8, 10, 10] {
        q.failed(&p.info.uid, HashSet::from([Plugin::NodeResourcesFit]), at);
        q.on_event(Event::NodeAdd, at);
        assert_eq!(q.next_backoff(), Some(at + Duration::from_secs(want)));
        at += Duration::from_secs(want);
        q.flush(at);
        q.pop().unwrap();
    }
}

#[test]
fn parked_pods_are_retried_after_five_minutes_and_moved_by_events_while_in_flight() {
    let mut q = queue();
    let t = Instant::now();
    q.upsert(prio("p", 0), t);
    let p = q.pop().unwrap();
    q.failed(&p.info.uid, HashSet::from([Plugin::NodeAffinity]), t);
    q.flush(t + Duration::from_secs(299));
    assert!(q.pop().is_none());
    q.flush(t + MAX_IN_UNSCHEDULABLE);
    assert_eq!(pop_name(&mut q).as_deref(), Some("p"));
    // An event during the attempt sends the pod to back-off instead of the pool.
    q.on_event(Event::NodeAdd, t);
    q.failed(&p.info.uid, HashSet::from([Plugin::NodeAffinity]), t);
    assert!(q.next_backoff().is_some());
}

#[test]
fn a_changed_spec_moves_a_parked_pod_and_a_status_write_does_not() {
    let mut q = queue();
    let t = Instant::now();
    q.upsert(prio("p", 0), t);
    let p = q.pop().unwrap();
    q.failed(&p.info.uid, HashSet::from([Plugin::TaintToleration]), t);
    let status_only = pod(
        "p",
        json!({}),
        json!({"spec": {"priority": 0}, "status": {"phase": "Pending"}}),
    );
    q.upsert(status_only, t);
    q.flush(t + Duration::from_secs(30));
    assert!(q.pop().is_none());
    let tolerant = pod(
        "p",
        json!({}),
        json!({"spec": {"priority": 0, "tolerations": [{"operator": "Exists"}]}}),
    );
    q.upsert(tolerant, t + Duration::from_secs(30));
    q.flush(t + Duration::from_secs(31));
    assert_eq!(pop_name(&mut q).as_deref(), Some("p"));
    q.remove(&p.info.uid);
    assert!(q.uids().is_empty());
}
