//! `coft`: parse the command line, run the library, map errors to a one-line reason and a
//! non-zero exit code.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    coft::util::alloc::tune();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain, outermost first, nothing said twice.
            eprintln!("error: {}", coft::util::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
