//! Seccomp and AppArmor profiles for a container, chosen as the kubelet chooses them: the
//! container's securityContext over the pod's, the legacy AppArmor annotation, and
//! `--seccomp-default`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

use super::admission::Refusal;

/// Why a container's AppArmor profile cannot be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppArmorProblem {
    #[error("Cannot enforce AppArmor: AppArmor is not enabled on the host")]
    NotEnabled,
    #[error("appArmorProfile.localhostProfile: Required value")]
    NoLocalhostProfile,
    #[error("appArmorProfile.type: Unsupported value: {0:?}")]
    UnsupportedType(String),
}

/// Why a pod's sysctl is forbidden (the sysctl named).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SysctlProblem {
    #[error("{0:?} not allowlisted")]
    NotAllowlisted(String),
    #[error("{0:?} not namespaced")]
    NotNamespaced(String),
    #[error("{0:?} not allowed with host net enabled")]
    HostNetwork(String),
    #[error("{0:?} not allowed with host ipc enabled")]
    HostIpc(String),
}

pub const APPARMOR_DEFAULT: &str = "podlet-default";
const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Whether the kernel enforces AppArmor.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|v| v.trim() == "Y")
        .unwrap_or(false)
}

/// The seccomp section for a container (None: unconfined).
pub fn seccomp(
    pod: &Pod,
    c: &Container,
    caps: &[String],
    profiles: &Path,
    default_runtime: bool,
) -> Result<Option<Value>, String> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged).unwrap_or(false) {
        return Ok(None);
    }
    let profile = sc.and_then(|s| s.seccomp_profile.clone()).or_else(|| {
        pod.spec
            .as_ref()?
            .security_context
            .as_ref()?
            .seccomp_profile
            .clone()
    });
    match profile {
        None if default_runtime => Ok(Some(podlet_runtime::seccomp::runtime_default(caps))),
        None => Ok(None),
        Some(p) => match p.type_.as_str() {
            "RuntimeDefault" => Ok(Some(podlet_runtime::seccomp::runtime_default(caps))),
            "Unconfined" => Ok(None),
            "Localhost" => {
                let name = p
                    .localhost_profile
                    .as_deref()
                    .ok_or("seccompProfile.localhostProfile: Required value")?;
                podlet_runtime::seccomp::load_localhost(profiles, name).map(Some)
            }
            other => Err(format!("seccompProfile.type: Unsupported value: {other:?}")),
        },
    }
}

/// The AppArmor profile for a container. Without AppArmor in the kernel, RuntimeDefault runs
/// unconfined and Localhost is refused.
pub fn apparmor(pod: &Pod, c: &Container, enabled: bool) -> Result<Option<String>, Refusal> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged).unwrap_or(false) {
        return Ok(None);
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{APPARMOR_ANNOTATION}{}", c.name)))
        .map(|v| match v.as_str() {
            "runtime/default" => ("RuntimeDefault".to_string(), None),
            "unconfined" => ("Unconfined".to_string(), None),
            other => (
                "Localhost".to_string(),
                other.strip_prefix("localhost/").map(String::from),
            ),
        });
    let field = sc
        .and_then(|s| s.app_armor_profile.clone())
        .or_else(|| {
            pod.spec
                .as_ref()?
                .security_context
                .as_ref()?
                .app_armor_profile
                .clone()
        })
        .map(|p| (p.type_, p.localhost_profile));
    let (kind, local) = field
        .or(annotation)
        .unwrap_or(("RuntimeDefault".into(), None));
    match (kind.as_str(), enabled) {
        ("Unconfined", _) => Ok(None),
        ("RuntimeDefault", true) => Ok(Some(APPARMOR_DEFAULT.into())),
        ("RuntimeDefault", false) => Ok(None),
        ("Localhost", false) => Err(Refusal::AppArmor(AppArmorProblem::NotEnabled)),
        ("Localhost", true) => local
            .filter(|l| !l.is_empty())
            .map(Some)
            .ok_or(Refusal::AppArmor(AppArmorProblem::NoLocalhostProfile)),
        (other, _) => Err(Refusal::AppArmor(AppArmorProblem::UnsupportedType(
            other.to_string(),
        ))),
    }
}

/// Why podlet's AppArmor profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running apparmor_parser")]
    Parser(#[source] std::io::Error),
    #[error("apparmor_parser: {0}")]
    Refused(String),
}

/// Loads podlet's default profile into the kernel where AppArmor is enabled.
pub fn load_default_profile(run_dir: &Path) -> Result<(), ProfileError> {
    let path = run_dir.join(APPARMOR_DEFAULT);
    std::fs::write(
        &path,
        include_str!("../../../apparmor-profiles/podlet-default"),
    )
    .map_err(|source| ProfileError::Write {
        path: path.clone(),
        source,
    })?;
    let out = std::process::Command::new("apparmor_parser")
        .args(["-r", "-W"])
        .arg(&path)
        .output()
        .map_err(ProfileError::Parser)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProfileError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{AppArmorProfile, PodSpec, SeccompProfile, SecurityContext};

    fn pod_with(c: Container) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![c.clone()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn apparmor_without_kernel_support() {
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(apparmor(&pod_with(c.clone()), &c, false), Ok(None));
        assert_eq!(
            apparmor(&pod_with(c.clone()), &c, true),
            Ok(Some("podlet-default".into()))
        );
        let local = Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                app_armor_profile: Some(AppArmorProfile {
                    type_: "Localhost".into(),
                    localhost_profile: Some("mine".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = apparmor(&pod_with(local.clone()), &local, false).unwrap_err();
        assert_eq!(err.reason(), "AppArmor");
        assert_eq!(
            apparmor(&pod_with(local.clone()), &local, true),
            Ok(Some("mine".into()))
        );
        let mut p = pod_with(c.clone());
        p.metadata.annotations =
            Some([(format!("{APPARMOR_ANNOTATION}c"), "localhost/x".to_string())].into());
        assert!(
            apparmor(&p, &c, false).is_err(),
            "the legacy annotation counts"
        );
    }

    #[test]
    fn seccomp_choice() {
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            seccomp(&pod_with(c.clone()), &c, &[], dir.path(), false).unwrap(),
            None
        );
        assert!(seccomp(&pod_with(c.clone()), &c, &[], dir.path(), true)
            .unwrap()
            .is_some());
        let rt = Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "Localhost".into(),
                    localhost_profile: Some("nope.json".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(seccomp(&pod_with(rt.clone()), &rt, &[], dir.path(), false)
            .unwrap_err()
            .contains("failed to load"));
    }
}

/// Kubernetes' safe sysctls: namespaced and isolated from the node.
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Whether a sysctl lives in a namespace a pod has its own of (IPC or network).
fn namespaced(name: &str) -> bool {
    name.starts_with("net.")
        || name.starts_with("fs.mqueue.")
        || name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
}

/// Pattern match for `--allowed-unsafe-sysctls` entries (`net.core.*` style).
fn allowed(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// The pod's sysctls, or the kubelet's rejection (`SysctlForbidden`).
pub fn sysctls(pod: &Pod, allowed_unsafe: &[String]) -> Result<Vec<(String, String)>, Refusal> {
    let spec = pod.spec.as_ref();
    let list = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.clone())
        .unwrap_or_default();
    let host_net = spec.and_then(|s| s.host_network).unwrap_or(false);
    let host_ipc = spec.and_then(|s| s.host_ipc).unwrap_or(false);
    let mut out = Vec::new();
    for s in list {
        let problem =
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) && !allowed(&s.name, allowed_unsafe) {
                Some(SysctlProblem::NotAllowlisted(s.name.clone()))
            } else if !namespaced(&s.name) {
                Some(SysctlProblem::NotNamespaced(s.name.clone()))
            } else if s.name.starts_with("net.") && host_net {
                Some(SysctlProblem::HostNetwork(s.name.clone()))
            } else if !s.name.starts_with("net.") && host_ipc {
                Some(SysctlProblem::HostIpc(s.name.clone()))
            } else {
                None
            };
        if let Some(p) = problem {
            return Err(Refusal::SysctlForbidden(p));
        }
        out.push((s.name, s.value));
    }
    Ok(out)
}

#[cfg(test)]
mod sysctl_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, Sysctl};

    fn pod(names: &[&str]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                security_context: Some(PodSecurityContext {
                    sysctls: Some(
                        names
                            .iter()
                            .map(|n| Sysctl {
                                name: n.to_string(),
                                value: "1".into(),
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn safe_unsafe_and_host_wide() {
        assert!(sysctls(&pod(&["net.ipv4.tcp_syncookies"]), &[]).is_ok());
        let e = sysctls(&pod(&["net.core.somaxconn"]), &[]).unwrap_err();
        assert_eq!(e.reason(), "SysctlForbidden");
        assert!(sysctls(&pod(&["net.core.somaxconn"]), &["net.core.*".into()]).is_ok());
        assert!(sysctls(&pod(&["kernel.pid_max"]), &["kernel.*".into()])
            .unwrap_err()
            .message()
            .contains("not namespaced"));
    }
}
