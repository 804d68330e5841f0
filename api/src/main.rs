//! The `taskwire` binary. All logic lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    taskwire_api::cli::main()
}
