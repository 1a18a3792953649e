//! The `confab` server binary. Everything lives in the library; this only starts it.

#[cfg(feature = "ssr")]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match confab::server::command(&args).await {
        Some(done) => done,
        None => confab::server::run_from_env().await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("confab: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "ssr"))]
fn main() {
    // The browser half starts from `confab::hydrate`; this binary is built with `--features ssr`.
}
