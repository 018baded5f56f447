//! RBAC kinds: names are path segments (`system:node`), not DNS names.

use super::strategy::Strategy;
use crate::api::status::Cause;

pub struct Rbac;
pub static RBAC: Rbac = Rbac;

impl Strategy for Rbac {
    fn validate_name(&self, _: &str) -> Option<Cause> {
        None
    }
}
