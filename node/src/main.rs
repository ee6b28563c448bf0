//! The `devicegrid` binary: `serve` runs one member, `dev` runs a local grid of members.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
