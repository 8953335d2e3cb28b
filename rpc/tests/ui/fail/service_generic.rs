pub struct Store<T>(Vec<T>);

#[easyrpc::service]
impl<T: Send + Sync + 'static> Store<T> {
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

pub struct Plain;

#[easyrpc::service]
impl Plain {
    pub fn pick<T: Default>(&self) -> u8 {
        0
    }
}

fn main() {}
