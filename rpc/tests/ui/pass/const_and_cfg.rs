// A `const fn` is an ordinary function at run time.
#[easyrpc::register]
const fn one() -> u8 {
    1
}

// `#[cfg]` after `#[register]` removes the generated module along with the function.
#[easyrpc::register]
#[cfg(any())]
fn gone(this: DoesNotExist) -> AlsoMissing {
    this
}

mod gone {}

easyrpc::declare! {
    #[cfg(any())]
    fn also_gone(x: DoesNotExist);
    /// Kept.
    #[deprecated = "use `one`"]
    pub fn old() -> u8;
}

#[allow(deprecated)]
fn main() {
    assert_eq!(one(), 1);
    let _ = one::method();
    assert_eq!(old::NAME, "old");
}
