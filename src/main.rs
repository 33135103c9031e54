//! `skiff`: the command-line interface of a one-host Kubernetes-compatible cluster.
//!
//! `up`/`down`/`status` run and inspect the cluster (supervising its daemons); the other verbs
//! follow kubectl's names, flags and table columns so users' habits carry over.

mod cluster;
mod commands;
mod resources;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use skiff_core::client::ApiClient;
use skiff_core::config::{self, Paths};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-compatible cluster on one Linux host"
)]
struct Cli {
    /// Path to a kubeconfig (HTTPS); by default the data dir's Unix socket is used.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The cluster's data directory (for the socket, and for up/down/status).
    #[arg(long, global = true, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct Scope {
    /// Namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the whole cluster in the foreground.
    Up(cluster::UpArgs),
    /// Stop the cluster started by `skiff up`.
    Down {
        /// Also remove every trace from the host: data directory and kernel state.
        #[arg(long)]
        purge: bool,
    },
    /// Show the cluster's daemons and their health.
    Status,
    /// Create or update objects from files, directories or stdin (-).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        scope: Scope,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Create objects from files (fails if they exist).
    Create {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        scope: Scope,
    },
    /// Display one or many resources.
    Get {
        /// KIND [NAME...] or KIND/NAME.
        args: Vec<String>,
        #[command(flatten)]
        scope: Scope,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        field_selector: Option<String>,
        /// wide, yaml, json or name.
        #[arg(short = 'o', long)]
        output: Option<String>,
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(long)]
        show_labels: bool,
    },
    /// Show details of a resource.
    Describe {
        args: Vec<String>,
        #[command(flatten)]
        scope: Scope,
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Delete resources by name, file or label selector.
    Delete {
        args: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[command(flatten)]
        scope: Scope,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        all: bool,
        /// Wait for the objects to be gone (finalizers released).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        wait: bool,
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Print the logs of a container in a pod.
    Logs {
        /// POD (or pod/POD).
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(short = 'p', long)]
        previous: bool,
        #[arg(long)]
        tail: Option<i64>,
        #[arg(long)]
        timestamps: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Run a command in a container: skiff exec POD [-c C] [-i] -- CMD [ARGS...]
    Exec {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Allocate a terminal for the command (when stdin is one).
        #[arg(short = 't', long)]
        tty: bool,
        #[command(flatten)]
        scope: Scope,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Wait for a condition on resources: --for=condition=Ready, --for=delete,
    /// --for=jsonpath='{.status.phase}'=Running.
    Wait {
        args: Vec<String>,
        #[arg(long = "for")]
        for_: String,
        #[command(flatten)]
        scope: Scope,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
}

fn client(cli: &Cli) -> Result<ApiClient> {
    match &cli.kubeconfig {
        Some(k) if !k.as_os_str().is_empty() => Ok(ApiClient::from_kubeconfig(k)?),
        _ => Ok(ApiClient::unix(Paths::new(&cli.data_dir).socket())),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<u8> {
    match &cli.cmd {
        Cmd::Up(a) => cluster::up(&cli.data_dir, a).await,
        Cmd::Down { purge } => cluster::down(&cli.data_dir, *purge).await,
        Cmd::Status => cluster::status(&cli.data_dir).await,
        Cmd::Apply {
            files,
            scope,
            output,
        } => commands::apply(&client(&cli)?, files, scope, output.as_deref(), false).await,
        Cmd::Create { files, scope } => {
            commands::apply(&client(&cli)?, files, scope, None, true).await
        }
        Cmd::Get {
            args,
            scope,
            selector,
            field_selector,
            output,
            watch,
            show_labels,
        } => {
            let opts = commands::GetOpts {
                selector: selector.clone(),
                field_selector: field_selector.clone(),
                output: output.clone(),
                watch: *watch,
                show_labels: *show_labels,
            };
            commands::get(&client(&cli)?, args, scope, &opts).await
        }
        Cmd::Describe {
            args,
            scope,
            selector,
        } => commands::describe(&client(&cli)?, args, scope, selector.as_deref()).await,
        Cmd::Delete {
            args,
            files,
            scope,
            selector,
            all,
            wait,
            timeout,
        } => {
            commands::delete(
                &client(&cli)?,
                args,
                files,
                scope,
                selector.as_deref(),
                *all,
                *wait,
                commands::parse_duration(timeout)?,
            )
            .await
        }
        Cmd::Logs {
            pod,
            container,
            follow,
            previous,
            tail,
            timestamps,
            scope,
        } => {
            let c = client(&cli)?;
            let ns = scope
                .namespace
                .clone()
                .unwrap_or_else(|| c.namespace.clone());
            let name = pod
                .strip_prefix("pod/")
                .or_else(|| pod.strip_prefix("pods/"))
                .unwrap_or(pod);
            let mut q = vec![
                format!("follow={follow}"),
                format!("previous={previous}"),
                format!("timestamps={timestamps}"),
            ];
            if let Some(cn) = container {
                q.push(format!("container={cn}"));
            }
            if let Some(t) = tail.filter(|t| *t >= 0) {
                q.push(format!("tailLines={t}"));
            }
            commands::logs(
                &c,
                &format!("/api/v1/namespaces/{ns}/pods/{name}/log?{}", q.join("&")),
            )
            .await
        }
        Cmd::Exec {
            pod,
            container,
            stdin,
            tty,
            scope,
            command,
        } => {
            let c = client(&cli)?;
            let ns = scope
                .namespace
                .clone()
                .unwrap_or_else(|| c.namespace.clone());
            let name = pod
                .strip_prefix("pod/")
                .or_else(|| pod.strip_prefix("pods/"))
                .unwrap_or(pod);
            let opts = commands::ExecOptions {
                container: container.as_deref(),
                stdin: *stdin,
                tty: *tty,
            };
            commands::exec(&c, &ns, name, opts, command).await
        }
        Cmd::Wait {
            args,
            for_,
            scope,
            selector,
            timeout,
        } => {
            commands::wait(
                &client(&cli)?,
                args,
                for_,
                scope,
                selector.as_deref(),
                commands::parse_duration(timeout)?,
            )
            .await
        }
    }
}
