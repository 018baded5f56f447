//! Plugin plumbing shared by every binary: reads the environment and the configuration as the
//! spec defines them, validates, dispatches, and prints a result or an error.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::spec::{self, code, CniError, CniResult, NetConf, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// One invocation: the environment and the parsed configuration.
#[derive(Debug, Clone)]
pub struct Call {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
    pub path: Vec<String>,
    /// The configuration as sent.
    pub raw: Value,
    pub conf: NetConf,
    /// The version results and errors are rendered in.
    pub version: String,
}

impl Call {
    /// `prevResult`, parsed.
    pub fn prev_result(&self) -> CniResult<Option<Outcome>> {
        self.conf
            .prev_result
            .as_ref()
            .map(Outcome::parse)
            .transpose()
    }

    pub fn runtime_config(&self, key: &str) -> Option<&Value> {
        self.conf.runtime_config.as_ref().and_then(|r| r.get(key))
    }
}

/// What a plugin implements; unimplemented operations succeed with nothing to do.
pub trait Plugin {
    fn add(&self, call: &Call) -> CniResult<Outcome>;
    fn del(&self, call: &Call) -> CniResult<()>;
    fn check(&self, call: &Call) -> CniResult<()>;
    fn gc(&self, _call: &Call) -> CniResult<()> {
        Ok(())
    }
    fn status(&self, _call: &Call) -> CniResult<()> {
        Ok(())
    }
}

fn parse_cni_args(s: &str) -> CniResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::with_details(
                code::INVALID_ENV,
                "invalid CNI_ARGS",
                format!("pair {pair:?} has no '='"),
            )
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Reads a call from an environment and a configuration (split out for tests).
pub fn read_call(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, CniResult<Call>) {
    let cmd = env("CNI_COMMAND").unwrap_or_default();
    let command = match cmd.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        "GC" => Command::Gc,
        "STATUS" => Command::Status,
        "" => {
            return (
                spec::CURRENT_VERSION.into(),
                Err(CniError::new(
                    code::INVALID_ENV,
                    "required env variables [CNI_COMMAND] missing",
                )),
            )
        }
        other => {
            return (
                spec::CURRENT_VERSION.into(),
                Err(CniError::with_details(
                    code::INVALID_ENV,
                    "unknown CNI_COMMAND",
                    other.to_string(),
                )),
            )
        }
    };
    let decode = |e: serde_json::Error| {
        (
            spec::CURRENT_VERSION.to_string(),
            Err(CniError::with_details(
                code::DECODE,
                "failed to decode network configuration",
                e.to_string(),
            )),
        )
    };
    let raw: Value = if command == Command::Version && stdin.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(stdin) {
            Ok(v) => v,
            Err(e) => return decode(e),
        }
    };
    let conf: NetConf = match serde_json::from_value(raw.clone()) {
        Ok(c) => c,
        Err(e) => return decode(e),
    };
    let version = if conf.cni_version.is_empty() {
        "0.1.0".to_string()
    } else {
        conf.cni_version.clone()
    };
    let reply_version = if spec::SUPPORTED_VERSIONS.contains(&version.as_str()) {
        version.clone()
    } else {
        spec::CURRENT_VERSION.to_string()
    };
    let result = (|| {
        let get = |k: &str| env(k).unwrap_or_default();
        let mut call = Call {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: parse_cni_args(&get("CNI_ARGS"))?,
            path: get("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            raw,
            conf,
            version: reply_version.clone(),
        };
        if command == Command::Version {
            return Ok(call);
        }
        let mut missing = Vec::new();
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if needs_container {
            if call.container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if call.ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if call.netns.is_empty() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
        }
        if call.path.is_empty() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if needs_container {
            if !spec::valid_name(&call.container_id) {
                return Err(CniError::with_details(
                    code::INVALID_ENV,
                    "invalid characters in containerID",
                    call.container_id.clone(),
                ));
            }
            if !spec::valid_ifname(&call.ifname) {
                return Err(CniError::with_details(
                    code::INVALID_ENV,
                    "invalid interface name",
                    call.ifname.clone(),
                ));
            }
        }
        spec::check_supported(&version)?;
        if call.conf.name.is_empty() {
            return Err(CniError::new(code::INVALID_CONFIG, "missing network name"));
        }
        if !spec::valid_name(&call.conf.name) {
            return Err(CniError::with_details(
                code::INVALID_CONFIG,
                "invalid characters found in network name",
                call.conf.name.clone(),
            ));
        }
        if command == Command::Check && !spec::at_least(&version, "0.4.0") {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "config version does not allow CHECK",
            ));
        }
        if matches!(command, Command::Gc | Command::Status) && !spec::at_least(&version, "1.1.0") {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version does not allow {cmd}"),
            ));
        }
        call.version = reply_version.clone();
        Ok(call)
    })();
    (reply_version, result)
}

/// Runs one call; returns what to print and the exit code.
pub fn dispatch(plugin: &dyn Plugin, version: &str, call: CniResult<Call>) -> (Option<Value>, i32) {
    let outcome = call.and_then(|call| match call.command {
        Command::Version => Ok(Some(json!({
            "cniVersion": spec::CURRENT_VERSION,
            "supportedVersions": spec::SUPPORTED_VERSIONS,
        }))),
        Command::Add => plugin.add(&call).map(|r| Some(r.render(&call.version))),
        Command::Del => plugin.del(&call).map(|_| None),
        Command::Check => plugin.check(&call).map(|_| None),
        Command::Gc => plugin.gc(&call).map(|_| None),
        Command::Status => plugin.status(&call).map(|_| None),
    });
    match outcome {
        Ok(v) => (v, 0),
        Err(e) => (Some(e.to_json(version)), 1),
    }
}

/// The `main` of every plugin binary.
pub fn main(plugin: &dyn Plugin) -> ! {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (version, call) = read_call(&|k| std::env::var(k).ok(), &stdin);
    let (out, code) = dispatch(plugin, &version, call);
    if let Some(v) = out {
        let mut o = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut o, &v);
        let _ = o.write_all(b"\n");
        let _ = o.flush();
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl Plugin for Nop {
        fn add(&self, _: &Call) -> CniResult<Outcome> {
            Ok(Outcome::default())
        }
        fn del(&self, _: &Call) -> CniResult<()> {
            Ok(())
        }
        fn check(&self, _: &Call) -> CniResult<()> {
            Ok(())
        }
    }

    fn run(env: &[(&str, &str)], conf: &str) -> (Option<Value>, i32) {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (v, call) = read_call(&|k| env.get(k).cloned(), conf.as_bytes());
        dispatch(&Nop, &v, call)
    }

    const ENV: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/proc/1/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn errors_carry_the_spec_codes() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"x"}"#;
        assert_eq!(run(&ENV, conf).1, 0);
        let code_of =
            |env: &[(&str, &str)], conf: &str| run(env, conf).0.unwrap()["code"].as_u64().unwrap();
        assert_eq!(code_of(&ENV, "{not json"), 6);
        assert_eq!(
            code_of(&ENV, r#"{"cniVersion":"7.0.0","name":"n","type":"x"}"#),
            1
        );
        assert_eq!(code_of(&ENV, r#"{"cniVersion":"1.0.0","type":"x"}"#), 7);
        assert_eq!(
            code_of(
                &ENV,
                r#"{"cniVersion":"1.0.0","name":"bad/name","type":"x"}"#
            ),
            7
        );
        let mut env = ENV.to_vec();
        env[1] = ("CNI_CONTAINERID", "bad id");
        assert_eq!(code_of(&env, conf), 4);
        env[1] = ("CNI_CONTAINERID", "c1");
        env.remove(2);
        assert_eq!(code_of(&env, conf), 4);
        env[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(run(&env, conf).1, 0, "DEL without a netns is fine");
        env[0] = ("CNI_COMMAND", "CHECK");
        let mut env = ENV.to_vec();
        env[0] = ("CNI_COMMAND", "CHECK");
        assert_eq!(
            code_of(&env, r#"{"cniVersion":"0.3.1","name":"n","type":"x"}"#),
            1
        );
        env[0] = ("CNI_COMMAND", "GC");
        assert_eq!(
            code_of(&env, r#"{"cniVersion":"1.0.0","name":"n","type":"x"}"#),
            1
        );
        assert_eq!(
            run(&env, r#"{"cniVersion":"1.1.0","name":"n","type":"x"}"#).1,
            0
        );
    }

    #[test]
    fn version_lists_everything() {
        let (v, code) = run(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(code, 0);
        assert_eq!(v.unwrap()["supportedVersions"].as_array().unwrap().len(), 7);
    }
}
