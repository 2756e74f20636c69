//! The seam between the protocol edge and the event core.

use async_trait::async_trait;

use crate::core::Error;
use crate::model::{Adjustment, Container, Event, EventKind, Pod, RuntimeInfo};

/// What the protocol edge calls for every runtime request. Implemented by the event core
/// ([`crate::core::Core`]); the edge's own tests implement it with recording fakes.
///
/// Every method must return quickly (microseconds): the runtime holds a node-wide lock while
/// it waits and disconnects a plugin that exceeds its request timeout.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Events the handler wants; the edge subscribes to exactly these.
    fn events(&self) -> Vec<EventKind>;
    /// `Configure`: once per connection, before `synchronize`.
    async fn configure(&self, info: RuntimeInfo);
    /// `Synchronize`: the complete set of existing pods and containers (all pages joined).
    async fn synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>);
    /// `CreateContainer`: validate the hooks and say what to change. An `Err` makes the runtime
    /// fail the create with that message.
    async fn create_container(&self, pod: Pod, container: Container) -> Result<Adjustment, Error>;
    /// Every other subscribed event, from either protocol generation.
    async fn event(&self, event: Event) -> Result<(), Error>;
    /// The runtime asked us to shut down, or the connection ended.
    async fn shutdown(&self);
}
