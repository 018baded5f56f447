//! End-to-end: `kubectl run -i` and `kubectl attach` reach a container's own stdio through its
//! shim: stdin (closed after the first session with stdinOnce), stdout and stderr live, and a
//! terminal for `tty: true` containers.

use std::process::Command;
use std::time::Duration;

use podlet_e2e::{run_with_stdin, TestNode};

#[test]
fn kubectl_run_i_and_attach_reach_the_container_stdio() {
    let Some(node) = TestNode::all_in_one() else {
        return;
    };
    node.wait_for(
        "the default service account",
        Duration::from_secs(30),
        || (node.kubectl(33, &["get", "sa", "default"]).code == 0).then_some(()),
    );

    // kubectl run -i: stdin: true, stdinOnce: true; attach over WebSocket (1.33) and SPDY
    // (1.27). The container reads to EOF, so its stdin must close when kubectl's input ends.
    for (minor, name) in [(33, "att33"), (27, "att27")] {
        let c = node.kubectl_command(
            minor,
            &[
                "run",
                name,
                "-i",
                "--rm",
                "--restart=Never",
                "--image=busybox:1.36",
                "--",
                "sh",
                "-c",
                "while read x; do echo got $x; done; echo bye >&2",
            ],
        );
        let out = run_with_stdin(c, Some("one\ntwo\n"));
        assert_eq!(out.code, 0, "{minor}: {}\n{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("got one\ngot two\n"),
            "{minor}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.contains("bye"), "{minor}: {}", out.stderr);
        // --rm deleted the pod once the session ended.
        node.wait_for(&format!("{name} deleted"), Duration::from_secs(30), || {
            (node.kubectl(33, &["get", "pod", name]).code != 0).then_some(())
        });
    }

    // kubectl attach to a running container: output as it is written, and the log has it too.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    stdin: true\n    command: [sh, -c, 'while read x; do echo echo: $x; done']\n";
    let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(pod));
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.wait_pod("talker", "talker Running", |p| {
        p["status"]["phase"] == "Running"
    });
    // Without stdinOnce the container's stdin stays open after a session: two sessions.
    for word in ["first", "second"] {
        let mut c = node.kubectl_command(33, &["attach", "-i", "talker"]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{word}\n").as_bytes()).unwrap();
        let log = node.wait_for(
            &format!("{word} in the log"),
            Duration::from_secs(30),
            || {
                let l = node.kubectl(33, &["logs", "talker"]);
                l.stdout
                    .contains(&format!("echo: {word}"))
                    .then_some(l.stdout)
            },
        );
        assert!(log.contains("echo: first"));
        drop(stdin);
        // The session ends with kubectl's input; the container keeps running.
        let _ = child.kill();
        let _ = child.wait();
    }
    let p = node.get_json(&["pod", "talker"]).unwrap();
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    assert!(p["status"]["containerStatuses"][0]["state"]["running"].is_object());

    // tty: true: the container's stdio is a terminal, input goes through it (script gives
    // kubectl a terminal of its own).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: term}\nspec:\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:1.36\n    stdin: true\n    tty: true\n    command: [sh, -c, 'read line; [ -t 0 ] && echo on a terminal: $line; stty size']\n";
    let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(pod));
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.wait_pod("term", "term Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let cmd = format!(
        "{} --kubeconfig {} --cache-dir {} attach -it term",
        podlet_e2e::apiserver::kubectl_bin(33).display(),
        node.admin_kubeconfig().display(),
        node.path("kube-cache-33").display()
    );
    let mut c = Command::new("nsenter");
    c.args(["-t", &node.holder_pid().to_string(), "-n", "--"])
        .args(["timeout", "60", "script", "-qec", &cmd, "/dev/null"])
        .env("HOME", node.dir.path());
    let out = run_with_stdin(c, Some("hello\n"));
    assert!(
        out.stdout.contains("on a terminal: hello"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let p = node.wait_pod("term", "term Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    let out = node.kubectl(33, &["delete", "pod", "talker", "term"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
