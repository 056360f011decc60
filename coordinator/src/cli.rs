//! The coordinator's command line: the daemon (`serve`). The experiment commands are the lab's
//! (`lab run-bench ...`); `coordinator run-bench ...` and the others forward to it ([`lab_forward`]).

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

/// The names of the lab's commands, which `coordinator NAME ...` forwards to the `lab` binary.
pub const LAB_COMMANDS: [&str; 7] =
    ["run-bench", "engine-bench", "overload-bench", "multihost", "server-bench", "mlx-bench", "fault-drill"];

/// The modelpool coordinator: a registry of workers and a scheduler that shards prompts across them.
#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    version,
    after_help = "The experiments (run-bench, engine-bench, server-bench, overload-bench, mlx-bench, multihost, fault-drill) \
                  are the `lab` binary's: `coordinator run-bench ...` runs `lab run-bench ...` (the `lab` beside this \
                  executable, else on PATH)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon: workers register with it, applications send prompts to it.
    Serve(ServeArgs),
}

/// The lab command a command line asks for, if any: its first word that is not a flag (or a global
/// flag's value) names one of [`LAB_COMMANDS`].
pub fn lab_forward(args: &[std::ffi::OsString]) -> Option<&str> {
    let mut words = args.iter().skip(1).map(|a| a.to_str());
    while let Some(word) = words.next() {
        let word = word?;
        match word {
            // The lab's global flags that take a value.
            "--log-file" => {
                words.next();
            }
            flag if flag.starts_with('-') => {}
            command => return LAB_COMMANDS.contains(&command).then_some(command),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(line: &str) -> Option<String> {
        let args: Vec<std::ffi::OsString> = line.split(' ').map(Into::into).collect();
        lab_forward(&args).map(str::to_string)
    }

    #[test]
    fn the_labs_commands_are_forwarded_and_the_daemon_is_not() {
        assert_eq!(forward("coordinator run-bench --quick").as_deref(), Some("run-bench"));
        assert_eq!(forward("coordinator -v --log-file run-bench.log fault-drill").as_deref(), Some("fault-drill"));
        assert_eq!(forward("coordinator serve --port 0"), None);
        assert_eq!(forward("coordinator --help"), None);
        assert_eq!(forward("coordinator serve run-bench"), None, "only the first word names the command");
    }
}
