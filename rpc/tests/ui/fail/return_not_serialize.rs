struct Point {
    x: i64,
    y: i64,
}

#[rpc::register]
fn origin() -> Point {
    Point { x: 0, y: 0 }
}

#[rpc::register]
fn try_origin() -> Result<Point, String> {
    Ok(Point { x: 0, y: 0 })
}

fn main() {}
