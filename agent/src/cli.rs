//! Commands for humans: `podlet ps`, `podlet logs`, `podlet exec`, `podlet image`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;

use crate::config::Config;

/// Fetches `GET path` from the agent's unix socket (HTTP/1.0, so the reply is never chunked).
pub fn agent_get(cfg: &Config, path: &str) -> Result<Vec<u8>> {
    let sock = cfg.socket_path();
    let mut s = UnixStream::connect(&sock).with_context(|| {
        format!(
            "connecting to the agent at {} (is `podlet run` running?)",
            sock.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: podlet\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed reply from the agent")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("agent replied: {}", head.lines().next().unwrap_or_default());
    }
    Ok(buf[split + 4..].to_vec())
}

pub fn list_pods(cfg: &Config) -> Result<Vec<Pod>> {
    let body = agent_get(cfg, "/pods")?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(serde_json::from_value(v["items"].clone())?)
}

fn age(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = jiff::Timestamp::now().duration_since(t.0).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn state_word(s: &k8s_openapi::api::core::v1::ContainerStatus) -> String {
    let st = s.state.clone().unwrap_or_default();
    if st.running.is_some() {
        "Running".into()
    } else if let Some(w) = st.waiting {
        w.reason.unwrap_or_else(|| "Waiting".into())
    } else if let Some(t) = st.terminated {
        format!(
            "{}({})",
            t.reason.unwrap_or_else(|| "Terminated".into()),
            t.exit_code
        )
    } else {
        "Unknown".into()
    }
}

pub fn ps(cfg: &Config, out: &mut impl Write) -> Result<()> {
    let pods = list_pods(cfg)?;
    writeln!(
        out,
        "{:<12} {:<40} {:<6} {:<10} {:<8} {:<6}",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"
    )?;
    for p in pods {
        let st = p.status.clone().unwrap_or_default();
        let cs = st.container_statuses.clone().unwrap_or_default();
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        writeln!(
            out,
            "{:<12} {:<40} {:<6} {:<10} {:<8} {:<6}",
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
            format!("{ready}/{}", cs.len()),
            st.phase.clone().unwrap_or_default(),
            restarts,
            age(st.start_time.as_ref()),
        )?;
        for c in st.init_container_statuses.iter().flatten().chain(cs.iter()) {
            let id = c
                .container_id
                .as_deref()
                .unwrap_or("")
                .trim_start_matches("podlet://");
            writeln!(
                out,
                "  └ {:<20} {:<22} restarts={:<4} id={}",
                c.name,
                state_word(c),
                c.restart_count,
                &id[..id.len().min(12)]
            )?;
        }
    }
    Ok(())
}

/// Finds the pod's log directory by name (works without the agent).
fn pod_log_dir(cfg: &Config, namespace: &str, pod: &str) -> Result<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cfg.log_dir)
        .with_context(|| format!("reading {}", cfg.log_dir.display()))?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix)
                .is_some_and(|uid| !uid.contains('_'))
        })
        .map(|e| e.path())
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().with_context(|| {
        format!(
            "no logs for pod {namespace}/{pod} in {}",
            cfg.log_dir.display()
        )
    })
}

pub fn logs(
    cfg: &Config,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    follow: bool,
    out: &mut impl Write,
) -> Result<()> {
    let dir = pod_log_dir(cfg, namespace, pod)?;
    let cdir = match container {
        Some(c) => dir.join(c),
        None => {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.path())
                .collect();
            names.sort();
            if names.len() != 1 {
                let list: Vec<String> = names
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                bail!(
                    "pod {pod} has {} containers, choose one with -c: {}",
                    list.len(),
                    list.join(" ")
                );
            }
            names.remove(0)
        }
    };
    let opts = crate::logs::Options {
        follow,
        ..Default::default()
    };
    let alive = || cdir.exists();
    let mut failed = None;
    crate::logs::stream(&cdir, &opts, &alive, &mut |b| match out
        .write_all(b)
        .and_then(|_| out.flush())
    {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    })
    .map_err(anyhow::Error::msg)?;
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn exec(
    cfg: &Config,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    cmd: Vec<String>,
) -> Result<i32> {
    let pods = list_pods(cfg)?;
    let p = pods
        .iter()
        .find(|p| {
            p.metadata.name.as_deref() == Some(pod)
                && p.metadata.namespace.as_deref() == Some(namespace)
        })
        .with_context(|| format!("pod {namespace}/{pod} not found"))?;
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let cs = match container {
        Some(c) => statuses
            .iter()
            .find(|s| s.name == c)
            .with_context(|| format!("container {c} not found in pod {pod}"))?,
        None => statuses.first().context("pod has no containers")?,
    };
    if cs.state.as_ref().and_then(|s| s.running.as_ref()).is_none() {
        bail!("container {} is not running", cs.name);
    }
    let id = cs
        .container_id
        .as_deref()
        .unwrap_or("")
        .trim_start_matches("podlet://");
    podlet_runtime::oci::exec(&cfg.container_state_root(), id, cmd, None)
        .map_err(anyhow::Error::msg)
}

/// Images (by ID) that the pods this node runs refer to, from their records on disk.
pub fn images_in_use(
    cfg: &Config,
    store: &podlet_runtime::image::ImageStore,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(cfg.run_dir.join("pods")) else {
        return out;
    };
    for e in rd.flatten() {
        let pod: Option<k8s_openapi::api::core::v1::Pod> =
            std::fs::read(e.path().join(crate::pod::POD_FILE))
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
        let Some(spec) = pod.and_then(|p| p.spec) else {
            continue;
        };
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            if let Some(r) = c.image.as_deref().and_then(|i| store.resolve(i).ok()) {
                out.insert(r.id);
            }
        }
    }
    out
}
