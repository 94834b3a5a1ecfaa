//! `lavtrace generate`: the man page and shell completions, written from the same clap
//! definitions that `--help` prints, so the packaged ones cannot drift from the binary.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cli::{Cli, GenerateArgs, Generated};

pub fn run(args: &GenerateArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    match args.what {
        Generated::Man => clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("rendering the man page")?,
        Generated::Bash => generate(clap_complete::Shell::Bash, &mut cmd, &mut out),
        Generated::Zsh => generate(clap_complete::Shell::Zsh, &mut cmd, &mut out),
        Generated::Fish => generate(clap_complete::Shell::Fish, &mut cmd, &mut out),
    }
    std::io::stdout()
        .write_all(&out)
        .context("writing to stdout")
}

fn generate(shell: clap_complete::Shell, cmd: &mut clap::Command, out: &mut Vec<u8>) {
    clap_complete::generate(shell, &mut visible(cmd), "lavtrace", out);
}

/// The command without its hidden subcommands: clap_complete's generators offer every
/// subcommand, hidden or not, and `workload`/`generate` are not for operators to type.
fn visible(cmd: &clap::Command) -> clap::Command {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("lavtrace")
        .args(cmd.get_arguments().cloned())
        .subcommands(subcommands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(what: Generated) -> String {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        match what {
            Generated::Man => clap_mangen::Man::new(cmd).render(&mut out).unwrap(),
            Generated::Bash => generate(clap_complete::Shell::Bash, &mut cmd, &mut out),
            Generated::Zsh => generate(clap_complete::Shell::Zsh, &mut cmd, &mut out),
            Generated::Fish => generate(clap_complete::Shell::Fish, &mut cmd, &mut out),
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_man_page_and_completions_know_the_trace_flags() {
        let man = render(Generated::Man);
        assert!(man.starts_with(".ie"), "roff: {}", &man[..40]);
        assert!(man.contains("lavtrace"));
        for shell in [Generated::Bash, Generated::Zsh, Generated::Fish] {
            let text = render(shell);
            for flag in ["trace", "demo", "check", "metrics"] {
                assert!(text.contains(flag), "{shell:?} lacks {flag}");
            }
            // Hidden subcommands stay out of what operators are offered.
            for hidden in [
                "(workload)",
                "\"workload\"",
                "workload_commands",
                "generate",
            ] {
                assert!(!text.contains(hidden), "{shell:?} offers {hidden}");
            }
        }
    }
}
