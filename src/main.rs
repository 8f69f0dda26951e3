//! The `sidecache` binary: parse the command line, run the server.

use sidecache::config::{self, Invocation};
use std::process::ExitCode;

fn main() -> ExitCode {
    let invocation = match config::parse_args(std::env::args_os().skip(1).collect()) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("sidecache: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match invocation {
        Invocation::Help => {
            print!("{}", config::HELP);
            return ExitCode::SUCCESS;
        }
        Invocation::Version => {
            println!("sidecache {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Invocation::Run(config) => *config,
    };
    sidecache::log::set_level(config.log_level);
    sidecache::log!("configuration: {}", config.describe());
    match sidecache::server::Server::bind(&config).and_then(|server| server.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecache: {e:#}");
            ExitCode::FAILURE
        }
    }
}
