//! The `commucat` binary: see [`commucat::cli`].

fn main() -> std::process::ExitCode {
    commucat::cli::main()
}
