mod app {
    #[derive(Debug, serde::Serialize)]
    pub struct Oops;
    /// `E` is not written in the signature: the error points at the alias.
    pub type Result<T> = std::result::Result<T, Oops>;
}

#[easyrpc::register]
fn fallible() -> app::Result<i64> {
    Err(app::Oops)
}

fn main() {}
