//! Secrets: the `Opaque` default and write-only `stringData`.

use base64::Engine;
use serde_json::{json, Value};

use super::strategy::Strategy;
use crate::api::objects::set_default;
use crate::api::table;

pub struct Secrets;
pub static SECRET: Secrets = Secrets;

impl Strategy for Secrets {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }

    fn printer(&self) -> &'static table::Printer {
        &table::SECRETS
    }

    fn defaults(&self, obj: &mut Value) {
        let o = obj.as_object_mut().unwrap();
        set_default(o, "type", json!("Opaque"));
        // stringData is write-only: it lands in data, base64-encoded, as Kubernetes does.
        if let Some(Value::Object(sd)) = o.remove("stringData") {
            let data = o.entry("data").or_insert_with(|| json!({}));
            for (k, v) in sd {
                let text = v.as_str().unwrap_or_default();
                data[k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
    }
}
