//! The `presence-gateway` binary: a doorway into the library.

fn main() -> std::process::ExitCode {
    presence_gateway::cli::main()
}
