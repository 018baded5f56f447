use super::*;

fn parse(yaml: &str) -> Result<SchedulerConfig, String> {
    SchedulerConfig::parse(yaml)
}

const HEAD: &str = "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n";

#[test]
fn the_default_profile_is_kube_schedulers() {
    let cfg = parse(HEAD).unwrap();
    assert_eq!(cfg, SchedulerConfig::default());
    let p = &cfg.profiles[0];
    assert_eq!(p.scheduler_name, "default-scheduler");
    let names: Vec<&str> = p.filters.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "NodeUnschedulable",
            "NodeName",
            "TaintToleration",
            "NodeAffinity",
            "NodePorts",
            "NodeResourcesFit",
            "PodTopologySpread",
            "InterPodAffinity"
        ]
    );
    let weights: Vec<(&str, i64)> = p.scores.iter().map(|(p, w)| (p.name(), *w)).collect();
    assert_eq!(
        weights,
        [
            ("TaintToleration", 3),
            ("NodeAffinity", 2),
            ("NodeResourcesFit", 1),
            ("PodTopologySpread", 2),
            ("InterPodAffinity", 2),
            ("NodeResourcesBalancedAllocation", 1),
            ("ImageLocality", 1)
        ]
    );
    assert!(p.preemption);
    assert_eq!(
        (cfg.initial_backoff.as_secs(), cfg.max_backoff.as_secs()),
        (1, 10)
    );
}

#[test]
fn profiles_enable_disable_and_weigh_plugins_and_take_args() {
    let cfg = parse(&format!(
        "{HEAD}percentageOfNodesToScore: 30\nprofiles:
- schedulerName: default-scheduler
- schedulerName: bin-packing
  percentageOfNodesToScore: 100
  plugins:
    score:
      disabled:
      - name: NodeResourcesBalancedAllocation
      - name: ImageLocality
      enabled:
      - name: NodeResourcesFit
        weight: 5
    postFilter:
      disabled:
      - name: DefaultPreemption
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources:
        - name: cpu
          weight: 2
        - name: memory
  - name: InterPodAffinity
    args:
      hardPodAffinityWeight: 5
- schedulerName: no-scores
  plugins:
    multiPoint:
      disabled:
      - name: '*'
      enabled:
      - name: NodeResourcesFit
"
    ))
    .unwrap();
    assert_eq!(cfg.percentage_of_nodes_to_score, 30);
    assert_eq!(cfg.profiles.len(), 3);
    let packing = cfg.profile("bin-packing").unwrap();
    assert_eq!(packing.percentage, Some(100));
    assert!(!packing.preemption);
    assert!(!packing
        .scores
        .iter()
        .any(|(p, _)| *p == Plugin::ImageLocality));
    assert!(packing.scores.contains(&(Plugin::NodeResourcesFit, 5)));
    assert_eq!(packing.args.fit.strategy, Strategy::MostAllocated);
    assert_eq!(
        packing.args.fit.resources,
        [("cpu".to_string(), 2), ("memory".to_string(), 1)]
    );
    assert_eq!(packing.args.affinity.hard_pod_affinity_weight, 5);
    let bare = cfg.profile("no-scores").unwrap();
    assert_eq!(bare.filters, [Plugin::NodeResourcesFit]);
    assert_eq!(bare.scores, [(Plugin::NodeResourcesFit, 1)]);
    assert!(!bare.preemption);
    assert!(cfg.profile("other").is_none());
}

#[test]
fn bad_files_are_refused_with_the_field() {
    let err = |y: &str| parse(&format!("{HEAD}{y}")).unwrap_err();
    assert!(
        err("bogus: 1\n").contains("unknown field `bogus`"),
        "{}",
        err("bogus: 1\n")
    );
    assert_eq!(
        err("percentageOfNodesToScore: 101\n"),
        "percentageOfNodesToScore: Invalid value: 101: not in valid range [0-100]"
    );
    assert_eq!(
        err("profiles:\n- schedulerName: a\n- schedulerName: a\n"),
        "profiles[1].schedulerName: Duplicate value: \"a\""
    );
    assert_eq!(
        err("profiles:\n- schedulerName: a\n  plugins:\n    filter:\n      enabled:\n      - name: Nope\n"),
        "profiles[0].plugins.filter: plugin \"Nope\" does not exist"
    );
    assert!(err("profiles:\n- pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: Random\n")
        .starts_with("profiles[0].pluginConfig[0].args.scoringStrategy.type: Unsupported value: \"Random\""));
    assert!(parse("apiVersion: v1\nkind: KubeSchedulerConfiguration\n")
        .unwrap_err()
        .contains("no kind"));
    // A volume plugin may be disabled: podlet has none to run.
    assert!(parse(&format!("{HEAD}profiles:\n- plugins:\n    multiPoint:\n      disabled:\n      - name: VolumeBinding\n")).is_ok());
}
