#[derive(Default)]
pub struct Counter(u64);

#[easyrpc::service]
impl Counter {
    pub fn bump(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }

    pub fn take(self) -> u64 {
        self.0
    }
}

fn main() {}
