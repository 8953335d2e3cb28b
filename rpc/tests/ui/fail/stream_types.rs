// Stream types that cannot cross the wire: the error is on the type as written (for an
// argument stream, on the async stub's result type too: its call checks the item again).
use easyrpc::Stream;

pub struct NotSerde;

mod other {
    pub struct Streaming<T>(pub T);
}

#[easyrpc::register]
async fn items_not_serialize(n: u64) -> impl Stream<Item = NotSerde> {
    easyrpc::stream::iter((0..n).map(|_| NotSerde))
}

#[easyrpc::register]
fn sync_items_not_serialize(n: u64) -> impl Iterator<Item = NotSerde> {
    (0..n).map(|_| NotSerde)
}

#[easyrpc::register]
async fn upload_not_deserialize(items: easyrpc::Streaming<NotSerde>) -> usize {
    let _ = items;
    0
}

#[easyrpc::register]
async fn not_ours(items: other::Streaming<u8>) -> u8 {
    items.0
}

fn main() {}
