//! IPAM: the host-local allocator, and delegation to whatever IPAM plugin a configuration names
//! (executed from `CNI_PATH` with the same configuration, like the reference plugins do).

pub mod hostlocal;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::skel::Call;
use crate::spec::{code, CniError, CniResult, Outcome};

/// Finds a plugin binary in `CNI_PATH`.
pub fn find_plugin(call: &Call, name: &str) -> CniResult<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid plugin type {name:?}"),
        ));
    }
    call.path
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("failed to find plugin {name:?} in path {:?}", call.path),
            )
        })
}

/// Runs the configured IPAM plugin for `command` ("ADD", "DEL", "CHECK", "GC", "STATUS").
pub fn exec(call: &Call, command: &str) -> CniResult<Option<Outcome>> {
    let ipam_type = call
        .raw
        .pointer("/ipam/type")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "missing ipam type"))?;
    let bin = find_plugin(call, ipam_type)?;
    let stdin = serde_json::to_vec(&call.raw).expect("config serialises");
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::internal(format!("running {}: {e}", bin.display())))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&stdin)
        .map_err(CniError::internal)?;
    let out = child.wait_with_output().map_err(CniError::internal)?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        return Err(match parsed {
            Some(v) if v.get("code").is_some() => CniError::with_details(
                v["code"].as_u64().unwrap_or(code::INTERNAL as u64) as u32,
                v["msg"].as_str().unwrap_or("IPAM plugin failed"),
                v.get("details").and_then(Value::as_str).unwrap_or(""),
            ),
            _ => CniError::internal(format!(
                "IPAM plugin {ipam_type} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )),
        });
    }
    match (command, parsed) {
        ("ADD", Some(v)) => Outcome::parse(&v).map(Some),
        ("ADD", None) => Err(CniError::new(
            code::DECODE,
            format!("IPAM plugin {ipam_type} printed no result"),
        )),
        _ => Ok(None),
    }
}
