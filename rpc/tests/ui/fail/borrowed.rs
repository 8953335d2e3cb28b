#[easyrpc::register]
fn bytes(data: &[u8], names: Vec<&str>, point: &Point) -> &'static str {
    let _ = (data, names, point);
    "ok"
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Point(i64, i64);

#[easyrpc::register]
fn cow(text: std::borrow::Cow<'_, str>) -> usize {
    text.len()
}

fn main() {
    let _ = bytes::method();
    let _ = cow::NAME;
}
