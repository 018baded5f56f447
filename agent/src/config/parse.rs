//! The values of settings that have a syntax of their own (the kubelet's): labels, taints,
//! eviction thresholds, reserved resources; and the types they become.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use k8s_rules::quantity::Milli;

pub const DEFAULT_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";

#[derive(Debug, Clone, PartialEq)]
pub enum Amount {
    Quantity(f64),
    Percent(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: String,
    pub amount: Amount,
    pub raw: String,
}

/// Parses kubelet's `--eviction-hard` (`signal<quantity|percent`, comma separated).
pub fn parse_thresholds(s: &str) -> Result<Vec<Threshold>, String> {
    let known = [
        "memory.available",
        "nodefs.available",
        "nodefs.inodesFree",
        "imagefs.available",
        "imagefs.inodesFree",
        "pid.available",
    ];
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (signal, v) = p
                .trim()
                .split_once('<')
                .ok_or_else(|| format!("{p:?}: expected signal<value"))?;
            if !known.contains(&signal) {
                return Err(format!("{p:?}: unknown signal {signal:?}"));
            }
            let amount = match v.strip_suffix('%') {
                Some(pct) => Amount::Percent(
                    pct.parse::<f64>()
                        .map_err(|_| format!("{p:?}: bad percentage"))?
                        / 100.0,
                ),
                None => Amount::Quantity(
                    Milli::parse(v).map_err(|e| format!("{p:?}: {e}"))?.value() as f64,
                ),
            };
            Ok(Threshold {
                signal: signal.to_string(),
                amount,
                raw: v.to_string(),
            })
        })
        .collect()
}

/// Resources kept from pods (`--system-reserved` and `--kube-reserved` together).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reserved {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
}

impl std::ops::Add for Reserved {
    type Output = Reserved;
    fn add(self, o: Reserved) -> Reserved {
        Reserved {
            cpu: self.cpu + o.cpu,
            memory: self.memory + o.memory,
        }
    }
}

/// A quantity's value as the kubelet holds it: an i64, never negative.
fn clamp(v: i128) -> i64 {
    v.clamp(0, i64::MAX as i128) as i64
}

/// Parses `cpu=500m,memory=1Gi` (the kubelet's `--system-reserved` form).
pub fn parse_reserved(s: &str) -> Result<Reserved, String> {
    let mut r = Reserved::default();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected name=quantity"))?;
        let q = Milli::parse(v).map_err(|e| format!("{pair:?}: {e}"))?;
        match k {
            "cpu" => r.cpu = clamp(q.milli()),
            "memory" => r.memory = clamp(q.value()),
            "ephemeral-storage" | "pid" => {}
            other => return Err(format!("unknown resource {other:?}")),
        }
    }
    Ok(r)
}

/// Image garbage collection (`--image-gc-*`, `--image-*-gc-age`): usage thresholds in percent
/// of the image filesystem, and ages.
#[derive(Debug, Clone)]
pub struct ImageGcPolicy {
    pub high: u8,
    pub low: u8,
    pub min_age: Duration,
    /// Zero: no maximum.
    pub max_age: Duration,
    pub period: Duration,
}

pub fn parse_labels(s: Option<&str>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in s
        .unwrap_or_default()
        .split(',')
        .filter(|i| !i.trim().is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.len() > 316 || v.len() > 63 {
            return Err(format!("{item:?}: invalid label"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn parse_taints(s: Option<&str>) -> Result<Vec<Taint>, String> {
    let mut out = Vec::new();
    for item in s
        .unwrap_or_default()
        .split(',')
        .filter(|i| !i.trim().is_empty())
    {
        let (kv, effect) = item
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| format!("{item:?}: expected key[=value]:Effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "{item:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err(format!("{item:?}: empty key"));
        }
        out.push(Taint {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
            time_added: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelets_defaults() {
        let t = parse_thresholds(DEFAULT_HARD).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].amount, Amount::Quantity(100.0 * 1024.0 * 1024.0));
        assert_eq!(t[1].amount, Amount::Percent(0.10));
        assert!(parse_thresholds("memory.free<1Gi").is_err());
        assert!(parse_thresholds("memory.available=1Gi").is_err());
    }

    #[test]
    fn reserved_parses() {
        assert_eq!(
            parse_reserved("cpu=500m,memory=1Gi").unwrap(),
            Reserved {
                cpu: 500,
                memory: 1 << 30
            }
        );
        assert!(parse_reserved("gpu=1").is_err());
    }
}
