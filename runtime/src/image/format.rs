//! The JSON documents of OCI image layouts, registries and docker archives, as far as the
//! store reads them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ImageConfig;

#[derive(Deserialize)]
pub(super) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) size: u64,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) platform: Option<Platform>,
}

#[derive(Deserialize)]
pub(super) struct Platform {
    pub(super) architecture: String,
    pub(super) os: String,
}

#[derive(Deserialize)]
pub(super) struct Index {
    pub(super) manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
pub(super) struct Manifest {
    #[serde(default)]
    #[serde(rename = "mediaType")]
    pub(super) media_type: String,
    pub(super) config: Descriptor,
    pub(super) layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
pub(super) struct RootFs {
    pub(super) diff_ids: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub(super) config: Option<ImageConfig>,
    pub(super) rootfs: RootFs,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerManifestEntry {
    pub(super) config: String,
    #[serde(default)]
    pub(super) repo_tags: Option<Vec<String>>,
    pub(super) layers: Vec<String>,
}

pub(super) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}
