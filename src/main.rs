//! The `hookgate` binary: parse arguments, set up logs and run the command
//! (`hookgate::cli`); a failure is printed here and becomes its exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use hookgate::cli::{self, Cli, LogFormat};

/// mimalloc, not glibc's malloc: bodies and records of a few KiB are past
/// glibc's thread cache, and its bins cost a tenth of a request's CPU
/// (Cargo.toml says more).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `include/mimalloc.h`; the
/// bindings name no constant for it). The test below checks that this is
/// the option whose default is 1,000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system after 10 ms, not mimalloc 3's
/// second: loading 800,000 dedupe keys at start peaked at 72–78 MiB with
/// the second and 58–65 MiB with 10 ms (glibc: 49), and a daemon idle
/// after a burst kept what it had freed. Immediately (0) cost twice the
/// start-up time in `madvise` calls.
fn allocator_gives_memory_back_soon() {
    // SAFETY: sets one of mimalloc's options; any value is allowed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
}

fn main() -> ExitCode {
    allocator_gives_memory_back_soon();
    let args = Cli::parse();
    if !args.serves() {
        end_quietly_on_a_closed_pipe();
    }
    init_logs(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hookgate: {}", cli::causes(&e));
            cli::exit_code(&e)
        }
    }
}

/// A command's output may go to a reader that stops early (`hookgate
/// queue stats | head -1`): the command then ends, as Unix tools do, instead
/// of panicking on its next write (Rust ignores SIGPIPE, so the write fails
/// with EPIPE and `println!` panics). Not for `serve`: its `log` sink writes
/// stdout, and a closed pipe there is a failed attempt that is retried and
/// reported, not a reason for the daemon to die. Sockets are not affected
/// either way: the standard library sends with `MSG_NOSIGNAL`.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called once at startup, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logs(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a redirected file.
        .with_ansi(std::io::stderr().is_terminal())
        // Otherwise a failed log write (stderr on a full disk) is reported
        // with eprintln!, which panics, and takes the request with it.
        .log_internal_errors(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_the_option_set() {
        // SAFETY: reads and sets mimalloc options.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            allocator_gives_memory_back_soon();
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 10);
        }
    }
}
