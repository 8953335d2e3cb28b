#[easyrpc::register]
fn echo<T: serde::Serialize>(value: T) -> T {
    value
}

fn main() {
    // The module is still generated, so using it adds no second error.
    let _ = echo::method();
}
