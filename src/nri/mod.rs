//! The NRI protocol edge.

mod handler;

pub use handler::Handler;
