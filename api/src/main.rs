//! The `taskwire` binary. All logic lives in the library; see `cli`.

/// jemalloc instead of glibc's malloc: ~10 % less CPU under load, and 10,000 open
/// subscriptions still fit in 300 MB (docs/BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    taskwire_api::cli::main()
}
