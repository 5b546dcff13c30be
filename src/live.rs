//! A value a reload swaps whole. Readers take a snapshot (`get`) and keep
//! using it to the end of what they are doing; the next read sees the new
//! one. A std `RwLock` around an `Arc`: the lock is held for a clone.

use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().expect("live lock").clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().expect("live lock") = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_outlive_a_swap() {
        let live = Live::new(1);
        let before = live.get();
        live.set(2);
        assert_eq!((*before, *live.get()), (1, 2));
    }
}
