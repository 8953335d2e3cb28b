// Types written relative to the function's module (`self::`, `super::`) still resolve in the
// generated module, which sits one level deeper.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

pub mod geometry {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Size(pub u32);

    #[easyrpc::register]
    pub fn area(origin: super::Point, size: self::Size) -> ::std::vec::Vec<super::Point> {
        let _ = (origin, size);
        vec![]
    }

    easyrpc::declare! {
        pub fn remote_area(origin: super::Point, size: self::Size) -> Vec<super::Point>;
    }
}

fn main() {
    let _ = geometry::area::method();
    let _ = geometry::remote_area::call_blocking;
}
