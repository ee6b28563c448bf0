//! Runtime helpers every layer uses: the member's task tree, the one coalescing rule behind
//! every batcher, and the one periodic loop.
//!
//! - [`tasks`]: [`Tasks`], a cancellation token and a tracker: every task of a member is
//!   spawned through one, and stopping cancels and awaits them all
//! - [`coalesce`]: [`Coalescer`], a bounded queue whose consumer takes whatever is waiting
//!   in one batch (group proposals, transport lanes), and [`gather`], its rule, also used
//!   by the storage flusher
//! - [`periodic`]: [`Every`], a ticker that ends with the member
//! - [`throttle`]: [`Throttle`], one log line per period for a storm of the same error

pub mod coalesce;
pub mod periodic;
pub mod tasks;
pub mod throttle;

pub use coalesce::{gather, Budget, Coalescer, Limits, QueueFull, QueueSender, Weight};
pub use periodic::Every;
pub use tasks::Tasks;
pub use throttle::Throttle;
