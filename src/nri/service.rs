//! The plugin's ttrpc service: what the runtime calls on connection 1.
//!
//! Every request is converted into our model once, handed to the [`Handler`], and answered
//! straight away. Both delivery paths for lifecycle events (the dedicated RPCs of NRI v0.12 and
//! the `StateChange` catch-all of older runtimes) end in the same [`Handler::event`] call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use thiserror::Error;
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

use crate::model::{Container, Event, EventKind, Pod, RuntimeInfo};
use crate::nri::convert;
use crate::nri::handler::Handler;
use crate::nri::wire::{api, api_ttrpc};

/// Request timeout the runtime applies when it does not tell us (milliseconds).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Registration timeout the runtime applies when it does not tell us (milliseconds).
pub const DEFAULT_REGISTRATION_TIMEOUT_MS: u64 = 5_000;
/// Most pods plus containers we accept across the pages of one synchronization.
pub const MAX_SYNC_OBJECTS: usize = 100_000;

/// Why we refused a runtime request. `to_ttrpc` is the one place these become wire statuses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// The handler refused to create the container; the message is shown to the user as is.
    #[error("{source}")]
    CreateRefused {
        container: String,
        source: crate::core::Error,
    },
    /// The handler failed an event.
    #[error("{source}")]
    EventFailed {
        event: &'static str,
        container: String,
        source: crate::core::Error,
    },
    #[error("synchronization sent more than {max} pods and containers")]
    SyncTooLarge { max: usize },
}

/// Our errors as ttrpc statuses (the runtime shows the message).
pub fn to_ttrpc(err: ServiceError) -> ttrpc::Error {
    use crate::core::Error as CoreError;
    let code = match &err {
        ServiceError::CreateRefused {
            source: CoreError::Annotation(_),
            ..
        } => ttrpc::Code::INVALID_ARGUMENT,
        ServiceError::CreateRefused {
            source: CoreError::ShuttingDown,
            ..
        }
        | ServiceError::EventFailed {
            source: CoreError::ShuttingDown,
            ..
        } => ttrpc::Code::UNAVAILABLE,
        ServiceError::EventFailed { .. } => ttrpc::Code::FAILED_PRECONDITION,
        ServiceError::SyncTooLarge { .. } => ttrpc::Code::RESOURCE_EXHAUSTED,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, err.to_string()))
}

/// State shared between the service and the run loop of one connection.
#[derive(Default)]
pub(crate) struct Session {
    /// Set once the runtime has sent `Shutdown`.
    pub shutdown_requested: Notify,
    handler_shut_down: AtomicBool,
    /// The runtime's PID, from the NRI socket's peer credentials (0 when unknown).
    pub runtime_pid: std::sync::atomic::AtomicU32,
}

impl Session {
    /// Calls [`Handler::shutdown`] unless this connection already did.
    pub async fn shut_down_handler(&self, handler: &dyn Handler) {
        if !self.handler_shut_down.swap(true, Ordering::SeqCst) {
            handler.shutdown().await;
        }
    }
}

/// Pages of a synchronization received so far.
#[derive(Default)]
struct SyncPages {
    pods: Vec<Pod>,
    containers: Vec<Container>,
}

/// The `Plugin` ttrpc service for one runtime connection.
pub(crate) struct PluginService {
    handler: Arc<dyn Handler>,
    /// Asked of the handler again once it is configured (what it serves may depend on the
    /// runtime's config).
    subscribed: std::sync::RwLock<Vec<EventKind>>,
    sync: Mutex<SyncPages>,
    session: Arc<Session>,
}

impl PluginService {
    pub fn new(handler: Arc<dyn Handler>, session: Arc<Session>) -> PluginService {
        let subscribed = std::sync::RwLock::new(handler.events());
        PluginService {
            handler,
            subscribed,
            sync: Mutex::new(SyncPages::default()),
            session,
        }
    }

    fn wants(&self, kind: EventKind) -> bool {
        crate::lock::read(&self.subscribed).contains(&kind)
    }

    /// Delivers one lifecycle event, whichever RPC carried it.
    async fn do_event(
        &self,
        kind: EventKind,
        pod: protobuf::MessageField<api::PodSandbox>,
        container: protobuf::MessageField<api::Container>,
    ) -> Result<(), ServiceError> {
        if !self.wants(kind) {
            tracing::debug!(
                event = kind.as_str(),
                "ignoring an event we did not subscribe to"
            );
            return Ok(());
        }
        let event = Event {
            kind,
            pod: convert::pod_field(pod),
            container: convert::container_field(container),
        };
        let container = event.container.id.clone();
        self.handler
            .event(event)
            .await
            .map_err(|source| ServiceError::EventFailed {
                event: kind.as_str(),
                container,
                source,
            })
    }

    async fn do_create(
        &self,
        req: api::CreateContainerRequest,
    ) -> Result<api::CreateContainerResponse, ServiceError> {
        if !self.wants(EventKind::CreateContainer) {
            return Ok(api::CreateContainerResponse::default());
        }
        let pod = convert::pod_field(req.pod);
        let container = convert::container_field(req.container);
        let id = container.id.clone();
        match self.handler.create_container(pod, container).await {
            Ok(adj) => {
                let mut reply = api::CreateContainerResponse::default();
                if !adj.is_empty() {
                    reply.adjust = protobuf::MessageField::some(convert::adjustment(adj));
                }
                Ok(reply)
            }
            Err(source) => Err(ServiceError::CreateRefused {
                container: id,
                source,
            }),
        }
    }

    async fn do_synchronize(
        &self,
        req: api::SynchronizeRequest,
    ) -> Result<api::SynchronizeResponse, ServiceError> {
        let more = req.more;
        let done = {
            let mut pages = crate::lock::lock(&self.sync);
            let total = pages.pods.len() + pages.containers.len();
            if total + req.pods.len() + req.containers.len() > MAX_SYNC_OBJECTS {
                *pages = SyncPages::default();
                return Err(ServiceError::SyncTooLarge {
                    max: MAX_SYNC_OBJECTS,
                });
            }
            pages.pods.extend(req.pods.into_iter().map(convert::pod));
            pages
                .containers
                .extend(req.containers.into_iter().map(convert::container));
            if more {
                None
            } else {
                Some(std::mem::take(&mut *pages))
            }
        };
        if let Some(all) = done {
            tracing::info!(
                pods = all.pods.len(),
                containers = all.containers.len(),
                "synchronized with the runtime"
            );
            self.handler.synchronize(all.pods, all.containers).await;
        }
        // Echoing `more` tells the runtime we understand paging.
        Ok(api::SynchronizeResponse {
            more,
            ..Default::default()
        })
    }
}

fn log_refusal(err: &ServiceError) {
    match err {
        ServiceError::CreateRefused { container, source } => {
            tracing::info!(container = %container, reason = %source, "refused container create");
        }
        ServiceError::EventFailed {
            event,
            container,
            source,
        } => {
            tracing::warn!(event = *event, container = %container, reason = %source, "event failed");
        }
        ServiceError::SyncTooLarge { max } => {
            tracing::warn!(max = *max, "synchronization too large");
        }
    }
}

fn answer<T>(result: Result<T, ServiceError>) -> ttrpc::Result<T> {
    result.map_err(|err| {
        log_refusal(&err);
        to_ttrpc(err)
    })
}

/// Runtime facts from `Configure`, with the defaults of runtimes that leave them out.
pub fn runtime_info(req: api::ConfigureRequest) -> RuntimeInfo {
    let ms = |v: i64, default: u64| u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(default);
    RuntimeInfo {
        runtime_name: req.runtime_name,
        runtime_version: req.runtime_version,
        nri_version: req.NRI_version,
        request_timeout_ms: ms(req.request_timeout, DEFAULT_REQUEST_TIMEOUT_MS),
        registration_timeout_ms: ms(req.registration_timeout, DEFAULT_REGISTRATION_TIMEOUT_MS),
        config: req.config,
        runtime_pid: 0,
    }
}

#[async_trait]
impl api_ttrpc::Plugin for PluginService {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        let mut info = runtime_info(req);
        info.runtime_pid = self.session.runtime_pid.load(Ordering::Relaxed);
        tracing::info!(
            runtime = %info.runtime_name,
            version = %info.runtime_version,
            nri = %info.nri_version,
            request_timeout_ms = info.request_timeout_ms,
            "configured by the runtime"
        );
        self.handler.configure(info).await;
        let subscribed = self.handler.events();
        let events = convert::event_mask(&subscribed);
        *crate::lock::write(&self.subscribed) = subscribed;
        if events == 0 {
            // Zero means "everything" on the wire; we then ignore what we did not ask for.
            tracing::warn!("handler subscribed to no events; the runtime will send all");
        }
        Ok(api::ConfigureResponse {
            events,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        answer(self.do_synchronize(req).await)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::Empty) -> ttrpc::Result<api::Empty> {
        tracing::info!("runtime asked us to shut down");
        self.session.shut_down_handler(&*self.handler).await;
        self.session.shutdown_requested.notify_one();
        Ok(api::Empty::default())
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        let none = protobuf::MessageField::none();
        answer(self.do_event(EventKind::RunPodSandbox, req.pod, none).await)?;
        Ok(Default::default())
    }

    async fn update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: api::UpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::UpdatePodSandboxResponse> {
        Ok(Default::default())
    }

    async fn post_update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: api::PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::PostUpdatePodSandboxResponse> {
        Ok(Default::default())
    }

    async fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        let none = protobuf::MessageField::none();
        answer(
            self.do_event(EventKind::StopPodSandbox, req.pod, none)
                .await,
        )?;
        Ok(Default::default())
    }

    async fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        let none = protobuf::MessageField::none();
        answer(
            self.do_event(EventKind::RemovePodSandbox, req.pod, none)
                .await,
        )?;
        Ok(Default::default())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        answer(self.do_create(req).await)
    }

    async fn post_create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        let kind = EventKind::PostCreateContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        let kind = EventKind::StartContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn post_start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        let kind = EventKind::PostStartContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::UpdateContainerResponse> {
        let kind = EventKind::UpdateContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn post_update_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        let kind = EventKind::PostUpdateContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        let kind = EventKind::StopContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        let kind = EventKind::RemoveContainer;
        answer(self.do_event(kind, req.pod, req.container).await)?;
        Ok(Default::default())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        match convert::event_from_wire(req.event) {
            Some(kind) => answer(self.do_event(kind, req.pod, req.container).await)?,
            None => tracing::debug!(event = req.event.value(), "ignoring state change"),
        }
        Ok(api::Empty::default())
    }

    async fn validate_container_adjustment(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<api::ValidateContainerAdjustmentResponse> {
        // We never subscribe to validation; if asked anyway, we have no objection.
        Ok(Default::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_timeouts_get_the_documented_defaults() {
        let info = runtime_info(api::ConfigureRequest {
            runtime_name: "containerd".into(),
            runtime_version: "1.7.24".into(),
            ..Default::default()
        });
        assert_eq!(info.request_timeout_ms, 2_000);
        assert_eq!(info.registration_timeout_ms, 5_000);
        assert_eq!(info.nri_version, "");

        let info = runtime_info(api::ConfigureRequest {
            request_timeout: 3_000,
            registration_timeout: 7_000,
            NRI_version: "v0.12.0".into(),
            config: "x".into(),
            ..Default::default()
        });
        assert_eq!(info.request_timeout_ms, 3_000);
        assert_eq!(info.registration_timeout_ms, 7_000);
        assert_eq!(info.nri_version, "v0.12.0");
        assert_eq!(info.config, "x");

        let info = runtime_info(api::ConfigureRequest {
            request_timeout: -1,
            ..Default::default()
        });
        assert_eq!(info.request_timeout_ms, 2_000);
    }

    #[test]
    fn errors_map_to_one_status_each() {
        let status = |e: ServiceError| match to_ttrpc(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        };
        let bad = crate::annotations::AnnotationError {
            key: "k".into(),
            problem: "bad".into(),
        };
        assert_eq!(
            status(ServiceError::CreateRefused {
                container: "c".into(),
                source: bad.clone().into(),
            }),
            (
                ttrpc::Code::INVALID_ARGUMENT,
                "annotation \"k\": bad".to_string()
            )
        );
        assert_eq!(
            status(ServiceError::CreateRefused {
                container: "c".into(),
                source: crate::core::Error::ShuttingDown,
            })
            .0,
            ttrpc::Code::UNAVAILABLE
        );
        assert_eq!(
            status(ServiceError::EventFailed {
                event: "StartContainer",
                container: "c".into(),
                source: crate::core::Error::ShuttingDown,
            })
            .0,
            ttrpc::Code::UNAVAILABLE
        );
        assert_eq!(
            status(ServiceError::EventFailed {
                event: "StartContainer",
                container: "c".into(),
                source: bad.into(),
            })
            .0,
            ttrpc::Code::FAILED_PRECONDITION
        );
        assert_eq!(
            status(ServiceError::SyncTooLarge { max: 1 }).0,
            ttrpc::Code::RESOURCE_EXHAUSTED
        );
    }
}
