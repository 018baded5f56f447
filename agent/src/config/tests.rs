use super::*;
use std::path::Path;

#[test]
fn flags_override_file_and_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "rootDir: /srv/podlet\nport: 1234\nnodeName: from-file\n",
    )
    .unwrap();
    let paths = PathFlags {
        config: Some(file.clone()),
        ..Default::default()
    };
    let run = Settings {
        node_name: Some("from-flag".into()),
        ..Default::default()
    };
    let c = Config::load(&paths, &run).unwrap();
    assert_eq!(c.node_name, "from-flag");
    assert_eq!(c.root_dir, Path::new("/srv/podlet"));
    assert_eq!(c.port, 1234);
    assert_eq!(c.run_dir, Path::new("/run/podlet"));
    assert_eq!(c.cgroup_root, "kubepods");
}

/// The all-in-one node's controller manager takes kube-controller-manager's node flags,
/// and its IPAM the same --cluster-cidr the agent keeps unmasqueraded.
#[test]
fn all_in_one_node_controller_flags_reach_the_controllers() {
    // An explicit (empty) file: the machine's own configuration is never read.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), "{}\n").unwrap();
    let paths = PathFlags {
        config: Some(dir.path().join("c.yaml")),
        ..Default::default()
    };
    let run = Settings {
        cluster_cidr: Some("10.50.0.0/16".into()),
        node_cidr_mask_size: Some(26),
        node_monitor_grace_period: Some("15s".into()),
        node_monitor_period: Some("1s".into()),
        ..Default::default()
    };
    let c = Config::load(&paths, &run).unwrap();
    let ClusterMode::AllInOne { controllers, .. } = &c.cluster else {
        panic!("all-in-one expected: {:?}", c.cluster);
    };
    assert_eq!(
        controllers.node_ipam.cluster_cidrs,
        ["10.50.0.0/16".parse::<ipnetwork::IpNetwork>().unwrap()]
    );
    assert_eq!(controllers.node_ipam.node_cidr_mask_size, Some(26));
    let lc = &controllers.node_lifecycle;
    assert_eq!(
        lc.node_monitor_grace_period,
        std::time::Duration::from_secs(15)
    );
    assert_eq!(lc.node_monitor_period, std::time::Duration::from_secs(1));
    assert_eq!(
        lc.node_startup_grace_period,
        std::time::Duration::from_secs(60)
    );
    let bad = Settings {
        node_monitor_grace_period: Some("soon".into()),
        ..Default::default()
    };
    let err = Config::load(&paths, &bad).unwrap_err().to_string();
    assert!(err.contains("node-monitor-grace-period"), "{err}");
}

#[test]
fn bad_file_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "port: lots\n").unwrap();
    let paths = PathFlags {
        config: Some(file),
        ..Default::default()
    };
    let err = Config::load(&paths, &Settings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.yaml") && err.contains("port"), "{err}");
    std::fs::write(dir.path().join("d.yaml"), "staticPodPath: /x\n").unwrap();
    let paths = PathFlags {
        config: Some(dir.path().join("d.yaml")),
        ..Default::default()
    };
    assert!(Config::load(&paths, &Settings::default()).is_err());
}

#[test]
fn dns_settings_default_and_a_bad_cluster_dns_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), "{}\n").unwrap();
    let paths = PathFlags {
        config: Some(dir.path().join("c.yaml")),
        ..Default::default()
    };
    let c = Config::load(&paths, &Settings::default()).unwrap();
    // In a cluster (all-in-one here) the agent serves kube-dns' address; standalone, none.
    assert_eq!(c.cluster_dns, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.dns_ttl, 5);
    let standalone = Settings {
        standalone: Some(true),
        ..Default::default()
    };
    assert!(Config::load(&paths, &standalone)
        .unwrap()
        .cluster_dns
        .is_empty());
    let off = Settings {
        cluster_dns: Some(String::new()),
        ..Default::default()
    };
    assert!(Config::load(&paths, &off).unwrap().cluster_dns.is_empty());
    assert_eq!(c.cluster_domain, "cluster.local");
    assert_eq!(c.resolv_conf, Some("/etc/resolv.conf".into()));
    let s = Settings {
        cluster_dns: Some("10.96.0.10, fd00::a".into()),
        cluster_domain: Some("example.test.".into()),
        resolv_conf: Some(String::new()),
        ..Default::default()
    };
    let c = Config::load(&paths, &s).unwrap();
    assert_eq!(c.cluster_dns.len(), 2);
    assert_eq!(c.cluster_domain, "example.test");
    assert_eq!(c.resolv_conf, None);
    let s = Settings {
        cluster_dns: Some("10.96.0.999".into()),
        ..Default::default()
    };
    let err = Config::load(&paths, &s).unwrap_err().to_string();
    assert!(err.contains("--cluster-dns \"10.96.0.999\""), "{err}");
}

#[test]
fn switches_take_no_value_and_absent_flags_leave_the_file_alone() {
    #[derive(clap::Parser)]
    struct Run {
        #[command(flatten)]
        s: Settings,
    }
    let parse = |args: &[&str]| {
        <Run as clap::Parser>::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map(|r| r.s)
    };
    let s = parse(&[
        "--standalone",
        "--seccomp-default",
        "--pod-pids-limit",
        "-1",
    ])
    .unwrap();
    assert_eq!(
        (s.standalone, s.seccomp_default, s.pod_pids_limit),
        (Some(true), Some(true), Some(-1))
    );
    assert!(
        parse(&["--standalone", "false"]).is_err(),
        "a switch takes no value"
    );
    let none = parse(&[]).unwrap();
    assert!(none.standalone.is_none() && none.port.is_none());
    let file = Settings {
        standalone: Some(true),
        port: Some(1),
        ..Default::default()
    };
    let merged = none.or(file);
    assert_eq!((merged.standalone, merged.port), (Some(true), Some(1)));
}

#[test]
fn pod_cidr_takes_one_range_or_one_of_each_family_primary_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), "{}\n").unwrap();
    let paths = PathFlags {
        config: Some(dir.path().join("c.yaml")),
        ..Default::default()
    };
    let load = |v: Option<&str>, standalone: bool| {
        let s = Settings {
            pod_cidr: v.map(String::from),
            standalone: standalone.then_some(true),
            ..Default::default()
        };
        Config::load(&paths, &s).map(|c| c.pod_cidr.map(|p| p.to_string()))
    };
    assert_eq!(load(None, true).unwrap().as_deref(), Some("10.88.0.0/16"));
    assert_eq!(load(None, false).unwrap(), None);
    assert_eq!(
        load(Some("fd00:10:244:1::/64,10.244.1.0/24"), false)
            .unwrap()
            .as_deref(),
        Some("fd00:10:244:1::/64,10.244.1.0/24")
    );
    for (bad, says) in [
        (
            "10.244.1.0/24,10.244.2.0/24",
            "must be of different IP families",
        ),
        ("10.244.1.0/33", "is not a CIDR"),
    ] {
        let err = load(Some(bad), false).unwrap_err().to_string();
        assert!(
            err.contains("--pod-cidr") && err.contains(says),
            "{bad}: {err}"
        );
    }
}
