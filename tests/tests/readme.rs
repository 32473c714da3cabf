//! README's quick tour, typed as written, against what `make run` starts (its script, in a
//! network namespace of its own so that its default ports are free): a command in the README
//! that no longer works as written fails `make test`.

use clusterware_tests::netns::Isolated;
use clusterware_tests::{poll_until, sys};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The first ```sh block after the heading `## A quick tour`.
fn tour(readme: &str) -> String {
    let rest = &readme[readme.find("\n## A quick tour\n").expect("README has a quick tour")..];
    let start = rest.find("```sh\n").expect("the tour has a sh block") + "```sh\n".len();
    let end = rest[start..].find("\n```").expect("the sh block ends");
    rest[start..start + end].to_string()
}

/// The processes (not zombies) of process group `pgid`.
fn group(pgid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            (rest.first() != Some(&"Z") && rest.get(2)?.parse::<u32>().ok()? == pgid).then(|| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
        })
        .collect()
}

#[test]
fn the_quick_tour_runs_as_written_on_what_make_run_starts() {
    let top = top();
    let ns = Isolated::new("tour");
    let dir = tempfile::tempdir().unwrap();
    // The tour runs from the top of a source tree: ./target is this one's, ./run make run's.
    std::os::unix::fs::symlink(top.join("target"), dir.path().join("target")).unwrap();
    let run_dir = dir.path().join("run");
    let log = std::fs::File::create(dir.path().join("make-run.log")).unwrap();
    let mut run = Command::new("ip");
    run.args(["netns", "exec", &ns.name, "bash"])
        .arg(top.join("scripts/run-solo.sh"))
        .env("RUN_DIR", &run_dir)
        .env_remove("PORT")
        .env_remove("TLS_PORT")
        .env_remove("CLUSTERWARE_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut run, 0);
    let mut run = run.spawn().expect("start scripts/run-solo.sh");
    let pgid = run.id();
    let printed = || std::fs::read_to_string(dir.path().join("make-run.log")).unwrap_or_default();

    let in_ns = |script: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "bash", "-c", script])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env_remove("CLUSTERWARE_CONFIG")
            .env_remove("CLUSTERWARE_HEAD")
            .env_remove("CLUSTERWARE_TOKEN")
            .env_remove("CLUSTERWARE_CA")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    poll_until("make run's head serves", Duration::from_secs(120), || printed().contains("Press Ctrl-C"));
    // The console's URL and a token to log in with (the line after the one that says so).
    let p = printed();
    assert!(p.contains("The web console: https://127.0.0.1:8443/console/"), "{p}");
    let token = p.lines().skip_while(|l| !l.contains("tokens revoke console")).nth(2).unwrap_or("").trim();
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)), "{p}");
    // The tour asks the demo nodes' agents to run scripts: they are up first.
    poll_until("the four demo nodes are up", Duration::from_secs(60), || {
        let o = in_ns("target/debug/scyld-nodectl --config run/base.ini status --json");
        String::from_utf8_lossy(&o.stdout).matches("\"state\": \"up\"").count() >= 4
    });

    let readme = std::fs::read_to_string(top.join("README.md")).unwrap();
    std::fs::write(dir.path().join("tour.sh"), tour(&readme)).unwrap();
    // Every line must succeed; -x shows which one did not.
    let out = in_ns("bash -euo pipefail -x tour.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);

    sys::killpg(pgid, nix::sys::signal::Signal::SIGINT);
    let _ = run.wait();
    let mut left = Vec::new();
    for _ in 0..300 {
        left = group(pgid);
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sys::killpg(pgid, nix::sys::signal::Signal::SIGKILL);

    assert!(
        out.status.success(),
        "README's quick tour failed (its last lines, then make run's):\n{}\n---\n{}",
        stderr.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
        printed().lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    // What the tour did shows: the boot config and its import, nodes compacted into ranges.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("created 94 nodes n[5-98]"), "{stdout}");
    assert!(stdout.contains("imported boot config xyzBoot2"), "{stdout}");
    let dl: Vec<String> = std::fs::read_dir(dir.path().join("run/tour/dl"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert_eq!(dl, ["vmlinuz"], "curl -OJ saves the file under its name");
    assert!(left.is_empty(), "still running 30 s after Ctrl-C: {left:?}");
}
