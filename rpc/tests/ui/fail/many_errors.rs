// Every mistake is reported at once, each at its own token.
#[easyrpc::register(nam = "x", max_flow = 0)]
unsafe fn bad<T>((a, b): (T, T), c: impl Clone) -> i64 {
    let _ = (a, b, c);
    0
}

fn main() {}
