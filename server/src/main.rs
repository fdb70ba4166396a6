//! The `metrum` binary: parse the command line, run the subcommand, exit non-zero on error.

fn main() {
    let cli = metrum_server::cli::Cli::parse_with_config(std::env::args_os().collect());
    if let Err(err) = cli.command.run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
