use std::io;

#[easyrpc::register]
fn parse(s: String) -> Result<i64, std::num::ParseIntError> {
    s.parse()
}

#[easyrpc::register]
fn read(path: String) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[easyrpc::register]
async fn check(n: i64) -> Result<i64, String> {
    if n < 0 { Err(format!("{n} is negative")) } else { Ok(n) }
}

mod app {
    #[derive(Debug)]
    pub struct AppError;
    impl std::fmt::Display for AppError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("app error")
        }
    }
    /// A one-parameter alias, as `anyhow::Result` is.
    pub type Result<T> = std::result::Result<T, AppError>;
}

#[easyrpc::register]
fn aliased(n: i64) -> app::Result<i64> {
    Ok(n)
}

// The client sees the `T` of `Result<T, E>`.
async fn use_stubs(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    let _: i64 = parse::call(client, "1".to_owned()).await?;
    let _: Vec<u8> = read::call(client, "/".to_owned()).await?;
    let _: i64 = check::call(client, 1).await?;
    let _: i64 = aliased::call(client, 1).await?;
    Ok(())
}

fn main() {
    let _ = [parse::method(), read::method(), check::method(), aliased::method()];
    let _ = use_stubs;
}
