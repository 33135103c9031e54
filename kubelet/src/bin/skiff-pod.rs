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
        Some("init") => match value(&args, "--config") {
            Some(config) => skiff_kubelet::init::main(&PathBuf::from(config)),
            None => usage(),
        },
        Some("shim") => match value(&args, "--dir") {
            Some(dir) => skiff_kubelet::shim::main(&PathBuf::from(dir)),
            None => usage(),
        },
        _ => usage(),
    }
}
