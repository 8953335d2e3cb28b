struct Point {
    x: i64,
    y: i64,
}

#[easyrpc::register]
fn norm(p: Point) -> i64 {
    p.x * p.x + p.y * p.y
}

fn main() {}
