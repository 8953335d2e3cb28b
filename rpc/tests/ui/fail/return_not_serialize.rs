struct Point {
    x: i64,
    y: i64,
}

#[easyrpc::register]
fn origin() -> Point {
    Point { x: 0, y: 0 }
}

#[easyrpc::register]
fn try_origin() -> Result<Point, String> {
    Ok(Point { x: 0, y: 0 })
}

fn main() {}
