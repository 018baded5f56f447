//! Image references normalised the way containerd and the kubelet do: `busybox` is
//! `docker.io/library/busybox:latest`, a name without a registry lives on `docker.io`.

/// Returns the fully qualified form of `reference`, or an error naming what is wrong with it.
pub fn normalize(reference: &str) -> Result<String, String> {
    let r = reference.trim();
    if r.is_empty() {
        return Err("image reference is empty".into());
    }
    if r.chars()
        .any(|c| c.is_whitespace() || c.is_uppercase() && !r.contains('@'))
    {
        return Err(format!(
            "invalid image reference {reference:?}: must be lower case without spaces"
        ));
    }
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => {
            let hex = d.strip_prefix("sha256:").ok_or_else(|| {
                format!("invalid image reference {reference:?}: digest must be sha256")
            })?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "invalid image reference {reference:?}: malformed digest"
                ));
            }
            (n, Some(d))
        }
        None => (r, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let (repo, tag) = match last.rsplit_once(':') {
        Some((_, t)) => (&name[..name.len() - t.len() - 1], Some(t)),
        None => (name, None),
    };
    if repo.is_empty()
        || repo.starts_with('/')
        || repo.ends_with('/')
        || repo.contains("//")
        || !repo
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
    {
        return Err(format!("invalid image reference {reference:?}"));
    }
    let first = repo.split('/').next().unwrap_or_default();
    let has_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full_repo = if has_registry {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    Ok(match (tag, digest) {
        (_, Some(d)) => match tag {
            Some(t) => format!("{full_repo}:{t}@{d}"),
            None => format!("{full_repo}@{d}"),
        },
        (Some(t), None) => format!("{full_repo}:{t}"),
        (None, None) => format!("{full_repo}:latest"),
    })
}

/// The repository part of a normalised reference (without tag or digest).
pub fn repository(normalized: &str) -> &str {
    let no_digest = normalized.split('@').next().unwrap_or(normalized);
    let last_slash = no_digest.rfind('/').unwrap_or(0);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(normalize("foo/bar").unwrap(), "docker.io/foo/bar:latest");
        assert_eq!(
            normalize("localhost:5000/x/y:2").unwrap(),
            "localhost:5000/x/y:2"
        );
        assert_eq!(normalize("quay.io/a/b").unwrap(), "quay.io/a/b:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert!(normalize("").is_err());
        assert!(normalize("Busybox").is_err());
        assert!(normalize("a b").is_err());
        assert!(normalize("busybox@sha256:zz").is_err());
        assert_eq!(repository("localhost:5000/x/y:2"), "localhost:5000/x/y");
    }
}
