//! `rpc`: call, list and load-test MessagePack-RPC servers from a shell. See the crate docs
//! of `easyrpc_cli` and `rpc --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `--etcd URL --service NAME` stand for the address.
    let args = easyrpc_cli::discovery_args(std::env::args_os());
    let cli = match easyrpc_cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's own code for a usage error is 2, which `rpc` keeps for transport errors.
            return if e.use_stderr() {
                ExitCode::from(easyrpc_cli::exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    easyrpc_cli::run(&cli)
}
