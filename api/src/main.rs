//! The `taskwire` binary. All logic lives in the library; see `cli`.

/// jemalloc instead of glibc's malloc: less CPU and less fragmentation for this
/// service's many small, short-lived allocations (measured in docs/benchmarks-history.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    taskwire_api::cli::main()
}
