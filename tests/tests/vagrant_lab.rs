//! End-to-end on real virtual machines: `vagrant/test.sh` boots the Vagrant lab (a control
//! plane and a worker under libvirt, in namespaces of the test), runs `vagrant/smoke.sh` from
//! the host, checks cgroup v2 values and AppArmor confinement inside the guests, and destroys
//! the lab. Slow (minutes: the guests run under software emulation here), so it is one test.

use std::process::Command;

use podlet_e2e::{podlet_bin, privileged, workspace};

#[test]
fn the_vagrant_lab_comes_up_and_passes_its_checks() {
    if !privileged() {
        return;
    }
    let bin = podlet_bin();
    let status = Command::new("bash")
        .arg(workspace().join("vagrant/test.sh"))
        .env("PODLET_BIN_DIR", bin.parent().unwrap())
        .status()
        .expect("running vagrant/test.sh");
    assert!(
        status.success(),
        "vagrant/test.sh failed ({status}); its output is above"
    );
}
