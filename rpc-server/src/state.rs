//! Shared state for handlers: [`State<T>`], given once to the builder.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::BuildError;

/// A value shared by every call, given to [`Builder::state`](crate::Builder::state) once:
/// a database pool, a cache, a configuration. A function asks for it by taking a
/// `State<T>` argument anywhere in its list; it is not on the wire, and the client stubs
/// do not have it. A missing state is an error at `build()`, naming the function and the
/// type, never at call time.
///
/// `State<T>` derefs to `T` and clones cheaply (an [`Arc`] inside): `T` must be
/// `Send + Sync` and do its own locking where it changes.
///
/// Under prefork each worker process has its own copy: the value given to the builder is
/// copied into every worker by `fork`, and [`Builder::state_with`](crate::Builder::state_with)
/// builds it in each worker instead (for anything holding threads or sockets, such as a
/// database pool, which do not survive a fork). Writes in one worker are not seen by the
/// others: keep state that workers share in an outside store.
pub struct State<T: ?Sized>(Arc<T>);

impl<T: ?Sized> State<T> {
    /// The shared value, as an `Arc`.
    pub fn arc(this: &State<T>) -> &Arc<T> {
        &this.0
    }
}

impl<T> State<T> {
    /// A state holding `value` (for calling a handler directly, in a test).
    pub fn new(value: T) -> State<T> {
        State(Arc::new(value))
    }
}

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> State<T> {
        State(self.0.clone())
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&&*self.0).finish()
    }
}

/// How a state is made: given, or built when the server is (in each prefork worker).
#[derive(Clone)]
enum Source {
    Value(Arc<dyn Any + Send + Sync>),
    Make(Arc<dyn Fn() -> Arc<dyn Any + Send + Sync> + Send + Sync>),
}

/// The states given to a builder, by type.
#[derive(Clone, Default)]
pub(crate) struct StateSources(HashMap<TypeId, (&'static str, Source)>);

impl fmt::Debug for StateSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.0.values().map(|(n, _)| *n).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

impl StateSources {
    pub(crate) fn value<T: Send + Sync + 'static>(&mut self, value: T) {
        let name = std::any::type_name::<T>();
        self.0
            .insert(TypeId::of::<T>(), (name, Source::Value(Arc::new(value))));
    }

    pub(crate) fn shared<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        let name = std::any::type_name::<T>();
        self.0.insert(TypeId::of::<T>(), (name, Source::Value(value)));
    }

    pub(crate) fn make<T, F>(&mut self, make: F)
    where
        T: Send + Sync + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        let name = std::any::type_name::<T>();
        let make = move || Arc::new(make()) as Arc<dyn Any + Send + Sync>;
        self.0
            .insert(TypeId::of::<T>(), (name, Source::Make(Arc::new(make))));
    }

    /// The states themselves: the given values, and the others built now.
    pub(crate) fn build(&self) -> States {
        States(
            self.0
                .iter()
                .map(|(id, (_, source))| {
                    let value = match source {
                        Source::Value(v) => v.clone(),
                        Source::Make(make) => make(),
                    };
                    (*id, value)
                })
                .collect(),
        )
    }
}

/// The states of a server being built, for the functions that take some: each takes its
/// own when it is registered. Generated code uses it; users give states to
/// [`Builder::state`](crate::Builder::state).
#[doc(hidden)]
pub struct States(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States").field("count", &self.0.len()).finish()
    }
}

impl States {
    /// No states.
    pub fn empty() -> States {
        States(HashMap::new())
    }

    /// The state of type `T`, for the function `function`.
    ///
    /// # Errors
    ///
    /// [`BuildError::MissingState`] when the builder was given no `T`.
    pub fn get<T: Send + Sync + 'static>(&self, function: &str) -> Result<State<T>, BuildError> {
        match self.0.get(&TypeId::of::<T>()) {
            // Unwrap: the map is keyed by the value's own type id.
            Some(v) => Ok(State(v.clone().downcast::<T>().unwrap())),
            None => Err(BuildError::MissingState {
                function: function.to_owned(),
                ty: std::any::type_name::<T>(),
            }),
        }
    }
}
