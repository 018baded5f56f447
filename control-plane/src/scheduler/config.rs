//! `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1), the part podlet honours:
//! profiles selected by `schedulerName`, plugins enabled and disabled per extension point
//! (`multiPoint`, `filter`, `score`, `postFilter`) with score weights, `pluginConfig` args of
//! the plugins podlet runs, `percentageOfNodesToScore` and the pod back-off. Plugins podlet
//! does not have (volume plugins, DynamicResources) may be disabled but not enabled.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use serde::Deserialize;

use super::plugins::affinity::AffinityArgs;
use super::plugins::fit::{default_resources, FitArgs, Strategy};
use super::plugins::spread::SpreadArgs;
use super::plugins::Plugin;

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// The default profile's plugins in order, with their score weights (0: no score).
const DEFAULTS: [(Plugin, i64); 10] = [
    (Plugin::NodeUnschedulable, 0),
    (Plugin::NodeName, 0),
    (Plugin::TaintToleration, 3),
    (Plugin::NodeAffinity, 2),
    (Plugin::NodePorts, 0),
    (Plugin::NodeResourcesFit, 1),
    (Plugin::PodTopologySpread, 2),
    (Plugin::InterPodAffinity, 2),
    (Plugin::BalancedAllocation, 1),
    (Plugin::ImageLocality, 1),
];

/// Names kube-scheduler knows that podlet has no use for (yet): accepted when disabled.
const KNOWN_ELSEWHERE: [&str; 9] = [
    "SchedulingGates",
    "PrioritySort",
    "DefaultBinder",
    "VolumeRestrictions",
    "NodeVolumeLimits",
    "VolumeBinding",
    "VolumeZone",
    "DynamicResources",
    "DefaultPreemption",
];

#[derive(Debug, Clone, PartialEq)]
pub struct PreemptionArgs {
    pub min_candidate_nodes_percentage: i64,
    pub min_candidate_nodes_absolute: i64,
}

impl Default for PreemptionArgs {
    fn default() -> Self {
        PreemptionArgs {
            min_candidate_nodes_percentage: 10,
            min_candidate_nodes_absolute: 100,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginArgs {
    pub fit: FitArgs,
    pub balanced: Vec<(String, i64)>,
    pub spread: SpreadArgs,
    pub affinity: AffinityArgs,
    pub preemption: PreemptionArgs,
}

/// One scheduling profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub scheduler_name: String,
    pub filters: Vec<Plugin>,
    pub scores: Vec<(Plugin, i64)>,
    pub preemption: bool,
    /// `percentageOfNodesToScore` of this profile (None: the global one).
    pub percentage: Option<u32>,
    pub args: PluginArgs,
}

impl Profile {
    pub fn default_named(name: &str) -> Profile {
        Profile {
            scheduler_name: name.into(),
            filters: DEFAULTS
                .iter()
                .map(|d| d.0)
                .filter(|p| p.filters())
                .collect(),
            scores: DEFAULTS.iter().copied().filter(|d| d.1 > 0).collect(),
            preemption: true,
            percentage: None,
            args: PluginArgs {
                balanced: default_resources(),
                ..PluginArgs::default()
            },
        }
    }

    pub fn has_filter(&self, p: Plugin) -> bool {
        self.filters.contains(&p)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub profiles: Vec<Profile>,
    /// 0: adaptive.
    pub percentage_of_nodes_to_score: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            profiles: vec![Profile::default_named(DEFAULT_SCHEDULER)],
            percentage_of_nodes_to_score: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl SchedulerConfig {
    pub fn profile(&self, scheduler_name: &str) -> Option<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.scheduler_name == scheduler_name)
    }

    /// Reads a KubeSchedulerConfiguration file (YAML or JSON); errors name the file and field.
    pub fn load(path: &Path) -> anyhow::Result<SchedulerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<SchedulerConfig, String> {
        let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let file: File = serde_path_to_error::deserialize(value)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        if file.api_version != "kubescheduler.config.k8s.io/v1"
            || file.kind != "KubeSchedulerConfiguration"
        {
            return Err(format!(
                "no kind \"{}\" is registered for version \"{}\"",
                file.kind, file.api_version
            ));
        }
        let pct = file.percentage_of_nodes_to_score.unwrap_or(0);
        if pct > 100 {
            return Err(format!(
                "percentageOfNodesToScore: Invalid value: {pct}: not in valid range [0-100]"
            ));
        }
        let mut cfg = SchedulerConfig {
            percentage_of_nodes_to_score: pct as u32,
            initial_backoff: Duration::from_secs(file.pod_initial_backoff_seconds.unwrap_or(1)),
            max_backoff: Duration::from_secs(file.pod_max_backoff_seconds.unwrap_or(10)),
            profiles: Vec::new(),
        };
        let profiles = if file.profiles.is_empty() {
            vec![FileProfile::default()]
        } else {
            file.profiles
        };
        let single = profiles.len() == 1;
        for (i, p) in profiles.into_iter().enumerate() {
            let at = format!("profiles[{i}]");
            let name = match p.scheduler_name.clone() {
                Some(n) if !n.is_empty() => n,
                _ if single => DEFAULT_SCHEDULER.to_string(),
                _ => return Err(format!("{at}.schedulerName: Required value")),
            };
            if cfg.profile(&name).is_some() {
                return Err(format!("{at}.schedulerName: Duplicate value: \"{name}\""));
            }
            cfg.profiles.push(p.build(&name, &at)?);
        }
        Ok(cfg)
    }
}

// Fields podlet accepts for compatibility and has no use for are read by serde only.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: String,
    kind: String,
    #[serde(default)]
    profiles: Vec<FileProfile>,
    percentage_of_nodes_to_score: Option<u64>,
    pod_initial_backoff_seconds: Option<u64>,
    pod_max_backoff_seconds: Option<u64>,
    // Accepted, and meaningless for an in-process scheduler.
    parallelism: Option<i64>,
    leader_election: Option<serde_json::Value>,
    client_connection: Option<serde_json::Value>,
    enable_profiling: Option<bool>,
    enable_contention_profiling: Option<bool>,
    health_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    delay_cache_until_active: Option<bool>,
    extenders: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileProfile {
    scheduler_name: Option<String>,
    percentage_of_nodes_to_score: Option<u64>,
    #[serde(default)]
    plugins: Plugins,
    #[serde(default)]
    plugin_config: Vec<PluginConfig>,
}

#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Plugins {
    #[serde(default)]
    multi_point: PluginSet,
    #[serde(default)]
    filter: PluginSet,
    #[serde(default)]
    score: PluginSet,
    #[serde(default)]
    post_filter: PluginSet,
    // The other extension points follow from filter and score for podlet's plugins.
    #[serde(default)]
    pre_enqueue: PluginSet,
    #[serde(default)]
    queue_sort: PluginSet,
    #[serde(default)]
    pre_filter: PluginSet,
    #[serde(default)]
    pre_score: PluginSet,
    #[serde(default)]
    reserve: PluginSet,
    #[serde(default)]
    permit: PluginSet,
    #[serde(default)]
    pre_bind: PluginSet,
    #[serde(default)]
    bind: PluginSet,
    #[serde(default)]
    post_bind: PluginSet,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PluginSet {
    #[serde(default)]
    enabled: Vec<NamedPlugin>,
    #[serde(default)]
    disabled: Vec<NamedPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedPlugin {
    name: String,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginConfig {
    name: String,
    #[serde(default)]
    args: serde_json::Value,
}

fn disabled(set: &PluginSet, p: Plugin) -> bool {
    set.disabled
        .iter()
        .any(|d| d.name == "*" || d.name == p.name())
}

fn enabled_plugin(e: &NamedPlugin, at: &str) -> Result<Option<Plugin>, String> {
    match Plugin::by_name(&e.name) {
        Some(p) => Ok(Some(p)),
        None if KNOWN_ELSEWHERE.contains(&e.name.as_str()) => Ok(None),
        None => Err(format!("{at}: plugin \"{}\" does not exist", e.name)),
    }
}

impl FileProfile {
    fn build(self, name: &str, at: &str) -> Result<Profile, String> {
        let mut profile = Profile::default_named(name);
        let pl = &self.plugins;
        let (mp, f, s) = (&pl.multi_point, &pl.filter, &pl.score);
        profile
            .filters
            .retain(|p| !disabled(mp, *p) && !disabled(f, *p));
        profile
            .scores
            .retain(|(p, _)| !disabled(mp, *p) && !disabled(s, *p));
        profile.preemption = !pl
            .post_filter
            .disabled
            .iter()
            .chain(&mp.disabled)
            .any(|d| d.name == "*" || d.name == "DefaultPreemption");
        for (set, field) in [(mp, "multiPoint"), (f, "filter")] {
            for e in &set.enabled {
                let Some(p) = enabled_plugin(e, &format!("{at}.plugins.{field}"))? else {
                    profile.preemption |= e.name == "DefaultPreemption";
                    continue;
                };
                if p.filters() && !profile.filters.contains(&p) {
                    profile.filters.push(p);
                }
            }
        }
        for (set, field) in [(mp, "multiPoint"), (s, "score")] {
            for e in &set.enabled {
                let Some(p) = enabled_plugin(e, &format!("{at}.plugins.{field}"))? else {
                    continue;
                };
                if !p.scores() {
                    continue;
                }
                let default = DEFAULTS.iter().find(|d| d.0 == p).map_or(1, |d| d.1.max(1));
                let weight = e.weight.filter(|w| *w != 0).unwrap_or(default);
                if !(1..=100).contains(&weight) {
                    return Err(format!("{at}.plugins.{field}.enabled[{}].weight: Invalid value: {weight}: must be in the range [1, 100]", e.name));
                }
                match profile.scores.iter_mut().find(|(q, _)| *q == p) {
                    Some(slot) => slot.1 = weight,
                    None => profile.scores.push((p, weight)),
                }
            }
        }
        if let Some(pct) = self.percentage_of_nodes_to_score {
            if pct > 100 {
                return Err(format!("{at}.percentageOfNodesToScore: Invalid value: {pct}: not in valid range [0-100]"));
            }
            profile.percentage = Some(pct as u32);
        }
        for (i, c) in self.plugin_config.iter().enumerate() {
            args(
                &mut profile.args,
                c,
                &format!("{at}.pluginConfig[{i}].args"),
            )?;
        }
        Ok(profile)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Weighted {
    name: String,
    #[serde(default)]
    weight: i64,
}

fn weighted(list: Vec<Weighted>) -> Vec<(String, i64)> {
    list.into_iter()
        .map(|w| (w.name, if w.weight == 0 { 1 } else { w.weight }))
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FitFile {
    #[serde(default)]
    ignored_resources: Vec<String>,
    #[serde(default)]
    ignored_resource_groups: Vec<String>,
    scoring_strategy: Option<StrategyFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StrategyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    resources: Option<Vec<Weighted>>,
    requested_to_capacity_ratio: Option<RatioFile>,
}

#[derive(Deserialize)]
struct RatioFile {
    shape: Vec<Point>,
}

#[derive(Deserialize)]
struct Point {
    utilization: i64,
    score: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpreadFile {
    #[serde(default)]
    default_constraints: Vec<TopologySpreadConstraint>,
    defaulting_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AffinityFile {
    hard_pod_affinity_weight: Option<i64>,
    ignore_preferred_terms_of_existing_pods: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PreemptionFile {
    min_candidate_nodes_percentage: Option<i64>,
    min_candidate_nodes_absolute: Option<i64>,
}

#[derive(Deserialize, Default)]
struct BalancedFile {
    #[serde(default)]
    resources: Option<Vec<Weighted>>,
}

fn decode<T: serde::de::DeserializeOwned>(v: &serde_json::Value, at: &str) -> Result<T, String> {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    serde_path_to_error::deserialize(v).map_err(|e| format!("{at}.{}: {}", e.path(), e.inner()))
}

fn args(a: &mut PluginArgs, c: &PluginConfig, at: &str) -> Result<(), String> {
    let v = if c.args.is_null() {
        serde_json::json!({})
    } else {
        c.args.clone()
    };
    match c.name.as_str() {
        "NodeResourcesFit" => {
            let f: FitFile = decode(&v, at)?;
            a.fit.ignored_resources = f.ignored_resources;
            a.fit.ignored_groups = f.ignored_resource_groups;
            if let Some(s) = f.scoring_strategy {
                a.fit.resources = s.resources.map(weighted).unwrap_or_else(default_resources);
                a.fit.strategy = match s.kind.as_deref().unwrap_or("LeastAllocated") {
                    "LeastAllocated" => Strategy::LeastAllocated,
                    "MostAllocated" => Strategy::MostAllocated,
                    "RequestedToCapacityRatio" => {
                        let shape: Vec<(i64, i64)> = s
                            .requested_to_capacity_ratio
                            .map(|r| r.shape.into_iter().map(|p| (p.utilization, p.score)).collect())
                            .unwrap_or_default();
                        if shape.is_empty() {
                            return Err(format!("{at}.scoringStrategy.requestedToCapacityRatio.shape: Required value: at least one point must be specified"));
                        }
                        if shape.windows(2).any(|w| w[0].0 >= w[1].0) {
                            return Err(format!("{at}.scoringStrategy.requestedToCapacityRatio.shape: Invalid value: utilization values must be sorted in increasing order"));
                        }
                        if shape.iter().any(|p| !(0..=100).contains(&p.0) || !(0..=10).contains(&p.1)) {
                            return Err(format!("{at}.scoringStrategy.requestedToCapacityRatio.shape: Invalid value: utilization must be in [0, 100] and score in [0, 10]"));
                        }
                        Strategy::RequestedToCapacityRatio(shape)
                    }
                    other => {
                        return Err(format!("{at}.scoringStrategy.type: Unsupported value: \"{other}\": supported values: \"LeastAllocated\", \"MostAllocated\", \"RequestedToCapacityRatio\""))
                    }
                };
            }
        }
        "NodeResourcesBalancedAllocation" => {
            let f: BalancedFile = decode(&v, at)?;
            if let Some(r) = f.resources {
                a.balanced = weighted(r);
            }
        }
        "PodTopologySpread" => {
            let f: SpreadFile = decode(&v, at)?;
            a.spread = match f.defaulting_type.as_deref().unwrap_or("System") {
                "System" if !f.default_constraints.is_empty() => {
                    return Err(format!("{at}.defaultConstraints: Invalid value: when .defaultingType is \"System\", .defaultConstraints must be empty"))
                }
                "System" => SpreadArgs::System,
                "List" => {
                    if f.default_constraints.iter().any(|c| c.label_selector.is_some()) {
                        return Err(format!("{at}.defaultConstraints[0].labelSelector: Forbidden: constraint must not define a selector, as they deduced for each pod"));
                    }
                    SpreadArgs::List(f.default_constraints)
                }
                other => return Err(format!("{at}.defaultingType: Unsupported value: \"{other}\": supported values: \"System\", \"List\"")),
            };
        }
        "InterPodAffinity" => {
            let f: AffinityFile = decode(&v, at)?;
            let w = f.hard_pod_affinity_weight.unwrap_or(1);
            if !(0..=100).contains(&w) {
                return Err(format!(
                    "{at}.hardPodAffinityWeight: Invalid value: {w}: not in valid range [0-100]"
                ));
            }
            a.affinity = AffinityArgs {
                hard_pod_affinity_weight: w,
                ignore_preferred_terms_of_existing_pods: f
                    .ignore_preferred_terms_of_existing_pods
                    .unwrap_or(false),
            };
        }
        "DefaultPreemption" => {
            let f: PreemptionFile = decode(&v, at)?;
            a.preemption = PreemptionArgs {
                min_candidate_nodes_percentage: f.min_candidate_nodes_percentage.unwrap_or(10),
                min_candidate_nodes_absolute: f.min_candidate_nodes_absolute.unwrap_or(100),
            };
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
