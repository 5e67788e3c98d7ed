//! The README's quick start, line for line: the shell block after `<!-- quickstart -->` runs in a fresh folder
//! with this build's `weft` on PATH (in place of the block's first line, which builds it) and the node on a
//! free port.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use crate::reaped::Reaped;

/// The quick start's lines after the first (which builds weft).
pub fn script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme.split("<!-- quickstart -->").nth(1).expect("the README marks its quick start");
    let block = after.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    let (first, script) = block.split_once('\n').unwrap();
    assert!(first.starts_with("cargo build --release"), "the first line builds weft: {first}");
    script.to_owned()
}

/// Runs `script` in `dir` with this build's `weft` on PATH and the node's HTTP address on `port`.
pub fn run(script: &str, dir: &std::path::Path, port: u16) -> Reaped {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weft")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // Should a line fail, the node started in the background must not outlive the script (it holds the pipes).
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
    Reaped(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir)
            .env("PATH", path)
            .env("WEFT_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("WEFT_URL", format!("http://127.0.0.1:{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn the_readme_quick_start_runs_green() {
    let script = script();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut shell = run(&script, dir.path(), port);
    let status = shell.exit_within(Duration::from_secs(120));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    shell.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    shell.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    for expected in [
        "status               uploaded",
        "report.txt",
        "Write to [email]. Revenue rose 12% in the third quarter.",
        "owner                agent:",
        "counter",
        "job.submitted",
        "job.step_scheduled",
    ] {
        assert!(stdout.contains(expected), "{expected:?} is not in the quick start's output:\n{stdout}");
    }
    assert!(stderr.contains("weft: stopping"), "the node stopped on the kill: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
