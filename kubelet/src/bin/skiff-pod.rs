//! skiff-pod: the per-pod processes, kept apart from the kubelet daemon so that each start
//! loads a small program: `shim` (the pod's supervisor), `init` (a container's setup, then
//! its command) and `pause` (PID 1 of a shared PID namespace).

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: skiff-pod shim --dir DIR | init --config FILE | pause --hostname NAME [--pod-dir DIR]");
    ExitCode::from(2)
}

/// The value after `flag` in `args`.
fn value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("pause") => match value(&args, "--hostname") {
            Some(h) => skiff_kubelet::init::pause(&h),
            None => usage(),
        },
        Some("init") => {
            let Some(config) = value(&args, "--config") else {
                return usage();
            };
            let res = std::fs::read(&config)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice(&b)?))
                .and_then(|cfg| skiff_kubelet::init::run(&cfg));
            if let Err(e) = res {
                eprintln!("skiff init: {e:#}");
            }
            // Exec failed: report as a shell would for a command that cannot run.
            ExitCode::from(127)
        }
        Some("shim") => {
            let Some(dir) = value(&args, "--dir") else {
                return usage();
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(skiff_kubelet::shim::run(&PathBuf::from(dir))))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff shim: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
