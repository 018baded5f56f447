//! Plumbing the agent's modules share and that knows nothing of pods or nodes: pacing writes
//! to the apiserver, publishing on watch channels only what changed, and errors on one line.

use std::time::Duration;

use tokio::sync::watch;

/// A token bucket for the agent's writes to the apiserver (`--kube-api-qps`, `--kube-api-burst`):
/// statuses, heartbeats, events and mirror pods wait their turn instead of flooding it.
pub struct Limiter {
    qps: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl Limiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            qps,
            burst: f64::from(burst),
            state: tokio::sync::Mutex::new((f64::from(burst), tokio::time::Instant::now())),
        }
    }

    /// Waits for one token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = tokio::time::Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                (1.0 - s.0) / self.qps
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// Publishes `value` on `tx` unless it is what the channel already holds.
pub fn send_if_changed<T: PartialEq + Clone>(tx: &watch::Sender<T>, value: &T) {
    tx.send_if_modified(|cur| {
        let changed = cur != value;
        if changed {
            *cur = value.clone();
        }
        changed
    });
}

/// An error and its causes on one line, `error: cause: cause`, as status messages, events and
/// logs show them. A cause whose text the line already ends with is left out: some errors print
/// their source themselves.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// `(namespace, name)` of an object, the key the watch caches keep it by.
pub fn ns_name<K: kube::Resource>(o: &K) -> (String, String) {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// What [`watch_all`] saw: the whole list (at start and after each relist), then changes.
pub enum Seen<K> {
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
}

/// Lists and watches every object of kind `K` until the process ends (a watch that fails is
/// retried with back-off and relisted); a new client (a renewed certificate) restarts it.
pub async fn watch_all<K>(
    mut client: watch::Receiver<kube::Client>,
    what: &str,
    mut f: impl FnMut(Seen<K>),
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use futures_util::StreamExt;
    use kube::runtime::watcher::{self, Event};
    use kube::runtime::WatchStreamExt;
    loop {
        let api: kube::Api<K> = kube::Api::all(client.borrow_and_update().clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut buffer = Vec::new();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                r = client.changed() => { if r.is_err() { return } break }
            };
            match ev {
                Some(Ok(Event::Init)) => buffer.clear(),
                Some(Ok(Event::InitApply(o))) => buffer.push(o),
                Some(Ok(Event::InitDone)) => f(Seen::Listed(std::mem::take(&mut buffer))),
                Some(Ok(Event::Apply(o))) => f(Seen::Applied(o)),
                Some(Ok(Event::Delete(o))) => f(Seen::Deleted(o)),
                Some(Err(e)) => tracing::warn!("{what}: watching {}: {e}", K::plural(&())),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("opening the thing")]
        Chained(#[source] std::io::Error),
        #[error("shim at /x: {0}")]
        Repeating(#[source] std::io::Error),
    }

    #[test]
    fn causes_are_chained_once() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            chain(&Outer::Chained(io())),
            "opening the thing: No such file or directory (os error 2)"
        );
        assert_eq!(
            chain(&Outer::Repeating(io())),
            "shim at /x: No such file or directory (os error 2)"
        );
    }

    #[tokio::test]
    async fn the_limiter_allows_a_burst_then_paces() {
        let l = Limiter::new(50.0, 3);
        let t = std::time::Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        assert!(
            t.elapsed() < Duration::from_millis(15),
            "the burst waits for nothing"
        );
        for _ in 0..2 {
            l.acquire().await;
        }
        // Two more at 50/s: about 40 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(35),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn only_changes_are_sent() {
        let (tx, mut rx) = watch::channel(1);
        rx.mark_unchanged();
        send_if_changed(&tx, &1);
        assert!(!rx.has_changed().unwrap());
        send_if_changed(&tx, &2);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
    }
}
