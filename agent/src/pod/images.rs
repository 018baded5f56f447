//! The node's images as pods use them: the store, the puller with its pull slots, registry
//! credentials of the node, and when each image was last used (for garbage collection).

use std::path::PathBuf;
use std::sync::Arc;

use podlet_runtime::image::pull::{Credentials, Puller};
use podlet_runtime::image::{ImageError, ImageStore};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::imagegc::Usage;

pub struct Images {
    pub store: ImageStore,
    pub puller: Puller,
    /// Image pulls at once (`--serialize-image-pulls`, `--max-parallel-image-pulls`).
    pub slots: Option<Arc<Semaphore>>,
    /// When images were first seen and last used, for garbage collection.
    pub usage: Arc<Usage>,
    /// Docker config files with node-level registry credentials, first match wins.
    credentials: Vec<PathBuf>,
}

impl Images {
    pub fn open(cfg: &Config) -> Result<Self, ImageError> {
        let store = ImageStore::open(cfg.images_dir())?;
        Ok(Self {
            puller: Puller::new(store.clone(), cfg.registries.clone()),
            store,
            slots: cfg.image_pulls.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            usage: Arc::default(),
            credentials: cfg.image_credentials.clone(),
        })
    }

    /// Registry credentials of the node: the first Docker config file found.
    pub fn node_credentials(&self) -> Credentials {
        for p in &self.credentials {
            match Credentials::load(p) {
                Ok(c) => {
                    if p.exists() {
                        return c;
                    }
                }
                Err(e) => tracing::warn!("registry credentials: {e}"),
            }
        }
        Default::default()
    }
}
