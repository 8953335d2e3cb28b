easyrpc::declare! {
    /// Patterns and references are as wrong here as in `#[register]`.
    pub fn add((a, b): (i64, i64)) -> i64;
    pub fn greet(name: &str) -> String;
    #[rpc(name = "")]
    pub fn unnamed();
}

fn main() {
    // The stand-in modules keep these from raising errors of their own.
    let _ = add::call_blocking;
    let _ = greet::NAME;
    let _ = unnamed::NAME;
}
