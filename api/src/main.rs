//! The `taskwire` binary. All logic lives in the library; see `cli`.

/// mimalloc instead of glibc malloc: the server allocates and frees many small, short-lived
/// buffers per request (GraphQL values, SQL arguments, JSON), which glibc served with
/// visible cost under load (docs/BENCHMARKS.md, "allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    taskwire_api::cli::main()
}
