//! The runtime side of NRI, for tests and benchmarks.
//!
//! A [`FakeRuntime`] speaks to one plugin over a unix stream (a socketpair for the pre-installed
//! launch, or an accepted connection for the external one), exactly as a runtime does: it runs
//! the multiplexer, serves the `Runtime` service on connection 2 (recording `RegisterPlugin`
//! and `UpdateContainers`), and calls the plugin's `Plugin` service on connection 1.
//!
//! Two [`Generation`]s decide how lifecycle events travel: like containerd 1.7 to 2.2
//! (dedicated RPCs only for create, update and stop; everything else through `StateChange`),
//! or like NRI v0.12 (a dedicated RPC for every event). Calls are plain async methods that
//! return the plugin's reply, cheap enough to drive tens of thousands of events.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use ttrpc::asynchronous::transport::Socket;
use ttrpc::r#async::TtrpcContext;

use nri_lifecycle::model::EventKind;
use nri_lifecycle::nri::mux::{
    one_connection, Mux, MuxError, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN,
};
use nri_lifecycle::nri::wire::{api, api_ttrpc};
use nri_lifecycle::nri::{event_mask, event_to_wire};

/// Which runtime generation to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// containerd 1.7–2.2: `Configure`, `Synchronize`, `CreateContainer`, `UpdateContainer`,
    /// `StopContainer` and `Shutdown` as RPCs, every other event through `StateChange`.
    StateChangeOnly,
    /// NRI v0.12: a dedicated RPC for every event.
    V012,
}

/// Errors of the fake runtime.
#[derive(Debug, Error)]
pub enum FakeError {
    #[error("mux: {0}")]
    Mux(#[from] MuxError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("ttrpc server: {0}")]
    Server(String),
    #[error("{call} failed: {source}")]
    Call {
        call: &'static str,
        source: ttrpc::Error,
    },
    #[error("the plugin closed the connection before registering")]
    ClosedBeforeRegistration,
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What the plugin sent in `RegisterPlugin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub index: String,
}

#[derive(Default)]
struct Recorded {
    registrations: Vec<Registered>,
    updates: Vec<api::UpdateContainersRequest>,
}

/// Our `Runtime` service: records what the plugin asks.
struct RuntimeService {
    recorded: Arc<Mutex<Recorded>>,
    registered: watch::Sender<Option<Registered>>,
}

#[async_trait]
impl api_ttrpc::Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        let idx = req.plugin_idx.as_bytes();
        if req.plugin_name.is_empty() || idx.len() != 2 || !idx.iter().all(u8::is_ascii_digit) {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!(
                    "invalid plugin name {:?} or index {:?}",
                    req.plugin_name, req.plugin_idx
                ),
            )));
        }
        let reg = Registered {
            name: req.plugin_name,
            index: req.plugin_idx,
        };
        lock(&self.recorded).registrations.push(reg.clone());
        self.registered.send_replace(Some(reg));
        Ok(api::Empty::default())
    }

    async fn update_containers(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateContainersRequest,
    ) -> ttrpc::Result<api::UpdateContainersResponse> {
        lock(&self.recorded).updates.push(req);
        Ok(api::UpdateContainersResponse::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The runtime end of one plugin connection. Dropping it closes the connection.
pub struct FakeRuntime {
    generation: Generation,
    plugin: api_ttrpc::PluginClient,
    recorded: Arc<Mutex<Recorded>>,
    registered: watch::Receiver<Option<Registered>>,
    events: Mutex<i32>,
    timeout: Duration,
    // Kept for their lifetime: dropping them ends the connection.
    _server: ttrpc::r#async::Server,
    mux: Mux,
}

/// The plugin's reply to `Synchronize`, one per page.
pub type SyncReplies = Vec<api::SynchronizeResponse>;

impl FakeRuntime {
    /// Starts the runtime side on `stream`.
    pub async fn start(
        stream: UnixStream,
        generation: Generation,
    ) -> Result<FakeRuntime, FakeError> {
        let mut mux = Mux::new(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])?;
        let (Some(plugin_conn), Some(runtime_conn)) = (
            mux.take(PLUGIN_SERVICE_CONN),
            mux.take(RUNTIME_SERVICE_CONN),
        ) else {
            return Err(FakeError::Protocol("mux connections missing".into()));
        };
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let (reg_tx, reg_rx) = watch::channel(None);
        let service = RuntimeService {
            recorded: Arc::clone(&recorded),
            registered: reg_tx,
        };
        let listener = one_connection(runtime_conn);
        let mut server = ttrpc::r#async::Server::new()
            .register_service(api_ttrpc::create_runtime(Arc::new(service)))
            .add_listener(listener);
        server
            .start()
            .await
            .map_err(|e| FakeError::Server(e.to_string()))?;
        let plugin =
            api_ttrpc::PluginClient::new(ttrpc::r#async::Client::new(Socket::new(plugin_conn)));
        Ok(FakeRuntime {
            generation,
            plugin,
            recorded,
            registered: reg_rx,
            events: Mutex::new(0),
            timeout: Duration::from_secs(10),
            _server: server,
            mux,
        })
    }

    /// A connected socketpair: the runtime side started, the other end for the plugin.
    pub async fn pair(generation: Generation) -> Result<(FakeRuntime, UnixStream), FakeError> {
        let (ours, theirs) = UnixStream::pair()?;
        Ok((FakeRuntime::start(ours, generation).await?, theirs))
    }

    /// Accepts the next plugin on a listening socket (the external launch).
    pub async fn accept(
        listener: &UnixListener,
        generation: Generation,
    ) -> Result<FakeRuntime, FakeError> {
        let (stream, _) = listener.accept().await?;
        FakeRuntime::start(stream, generation).await
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Per-request timeout (default 10 s; a real runtime uses 2 s).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_duration(self.timeout)
    }

    /// Waits for the plugin's `RegisterPlugin`.
    pub async fn registered(&self) -> Result<Registered, FakeError> {
        let mut rx = self.registered.clone();
        tokio::select! {
            reg = rx.wait_for(Option::is_some) => match reg {
                Ok(reg) => reg.clone().ok_or(FakeError::ClosedBeforeRegistration),
                Err(_) => Err(FakeError::ClosedBeforeRegistration),
            },
            _ = self.mux.closed() => {
                // The plugin may have registered just before closing.
                self.registered.borrow().clone().ok_or(FakeError::ClosedBeforeRegistration)
            }
        }
    }

    /// Every `UpdateContainers` request the plugin made so far.
    pub fn update_requests(&self) -> Vec<api::UpdateContainersRequest> {
        lock(&self.recorded).updates.clone()
    }

    /// Every registration on this connection (normally exactly one).
    pub fn registrations(&self) -> Vec<Registered> {
        lock(&self.recorded).registrations.clone()
    }

    /// A `Configure` request like this generation's runtimes send: containerd 2.1 style with
    /// timeouts but no NRI version, or v0.12 with all fields.
    pub fn default_configure(&self) -> api::ConfigureRequest {
        let mut req = api::ConfigureRequest {
            runtime_name: "fake-runtime".into(),
            runtime_version: "0.0.0".into(),
            registration_timeout: 5_000,
            request_timeout: 2_000,
            ..Default::default()
        };
        if self.generation == Generation::V012 {
            req.NRI_version = "v0.12.2".into();
        }
        req
    }

    /// Sends `Configure`; returns and remembers the subscription mask.
    pub async fn configure(&self, req: api::ConfigureRequest) -> Result<i32, FakeError> {
        let reply = self
            .plugin
            .configure(self.ctx(), &req)
            .await
            .map_err(|source| FakeError::Call {
                call: "Configure",
                source,
            })?;
        *lock(&self.events) = reply.events;
        Ok(reply.events)
    }

    /// Whether the plugin subscribed to `kind` (a zero mask means everything).
    pub fn subscribed(&self, kind: EventKind) -> bool {
        let mask = *lock(&self.events);
        mask == 0 || mask & event_mask(&[kind]) != 0
    }

    /// Sends the pods and containers in pages of at most `page` of each (at least one page),
    /// checking that the plugin echoes `more` as a paging-capable plugin must.
    pub async fn synchronize(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
        page: usize,
    ) -> Result<SyncReplies, FakeError> {
        let page = page.max(1);
        let pages = pods
            .len()
            .div_ceil(page)
            .max(containers.len().div_ceil(page))
            .max(1);
        let mut replies = Vec::with_capacity(pages);
        for i in 0..pages {
            let slice = |len: usize| (i * page).min(len)..((i + 1) * page).min(len);
            let req = api::SynchronizeRequest {
                pods: pods[slice(pods.len())].to_vec(),
                containers: containers[slice(containers.len())].to_vec(),
                more: i + 1 < pages,
                ..Default::default()
            };
            let reply = self
                .plugin
                .synchronize(self.ctx(), &req)
                .await
                .map_err(|source| FakeError::Call {
                    call: "Synchronize",
                    source,
                })?;
            if req.more && (reply.more != req.more || !reply.update.is_empty()) {
                return Err(FakeError::Protocol(
                    "plugin does not handle split synchronization".into(),
                ));
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Sends `CreateContainer` and returns the plugin's reply (or its refusal).
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<api::CreateContainerResponse, FakeError> {
        let req = api::CreateContainerRequest {
            pod: protobuf::MessageField::some(pod.clone()),
            container: protobuf::MessageField::some(container.clone()),
            ..Default::default()
        };
        self.plugin
            .create_container(self.ctx(), &req)
            .await
            .map_err(|source| FakeError::Call {
                call: "CreateContainer",
                source,
            })
    }

    /// Delivers one lifecycle event the way this generation does and returns the name of the
    /// RPC that carried it. `container` is ignored for pod events.
    pub async fn event(
        &self,
        kind: EventKind,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<&'static str, FakeError> {
        if kind == EventKind::CreateContainer {
            self.create_container(pod, container).await?;
            return Ok("CreateContainer");
        }
        let p = || protobuf::MessageField::some(pod.clone());
        let c = || protobuf::MessageField::some(container.clone());
        let dedicated = self.generation == Generation::V012
            || matches!(kind, EventKind::UpdateContainer | EventKind::StopContainer);
        let ctx = self.ctx();
        let call = |name: &'static str| move |source| FakeError::Call { call: name, source };
        if !dedicated {
            let is_pod_event = matches!(
                kind,
                EventKind::RunPodSandbox | EventKind::StopPodSandbox | EventKind::RemovePodSandbox
            );
            let req = api::StateChangeEvent {
                event: protobuf::EnumOrUnknown::new(event_to_wire(kind)),
                pod: p(),
                container: if is_pod_event {
                    protobuf::MessageField::none()
                } else {
                    c()
                },
                ..Default::default()
            };
            self.plugin
                .state_change(ctx, &req)
                .await
                .map_err(call("StateChange"))?;
            return Ok("StateChange");
        }
        let pl = &self.plugin;
        let name = kind.as_str();
        match kind {
            EventKind::RunPodSandbox => {
                let req = api::RunPodSandboxRequest {
                    pod: p(),
                    ..Default::default()
                };
                pl.run_pod_sandbox(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::StopPodSandbox => {
                let req = api::StopPodSandboxRequest {
                    pod: p(),
                    ..Default::default()
                };
                pl.stop_pod_sandbox(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::RemovePodSandbox => {
                let req = api::RemovePodSandboxRequest {
                    pod: p(),
                    ..Default::default()
                };
                pl.remove_pod_sandbox(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::PostCreateContainer => {
                let req = api::PostCreateContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.post_create_container(ctx, &req)
                    .await
                    .map_err(call(name))?;
            }
            EventKind::StartContainer => {
                let req = api::StartContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.start_container(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::PostStartContainer => {
                let req = api::PostStartContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.post_start_container(ctx, &req)
                    .await
                    .map_err(call(name))?;
            }
            EventKind::UpdateContainer => {
                let req = api::UpdateContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.update_container(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::PostUpdateContainer => {
                let req = api::PostUpdateContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.post_update_container(ctx, &req)
                    .await
                    .map_err(call(name))?;
            }
            EventKind::StopContainer => {
                let req = api::StopContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.stop_container(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::RemoveContainer => {
                let req = api::RemoveContainerRequest {
                    pod: p(),
                    container: c(),
                    ..Default::default()
                };
                pl.remove_container(ctx, &req).await.map_err(call(name))?;
            }
            EventKind::CreateContainer => {}
        }
        Ok(name)
    }

    /// Sends `ValidateContainerAdjustment` (v0.10+ runtimes, to validating plugins only).
    pub async fn validate_adjustment(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<api::ValidateContainerAdjustmentResponse, FakeError> {
        let req = api::ValidateContainerAdjustmentRequest {
            pod: protobuf::MessageField::some(pod.clone()),
            container: protobuf::MessageField::some(container.clone()),
            ..Default::default()
        };
        self.plugin
            .validate_container_adjustment(self.ctx(), &req)
            .await
            .map_err(|source| FakeError::Call {
                call: "ValidateContainerAdjustment",
                source,
            })
    }

    /// Sends `UpdatePodSandbox` (v0.10+ runtimes).
    pub async fn update_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), FakeError> {
        let req = api::UpdatePodSandboxRequest {
            pod: protobuf::MessageField::some(pod.clone()),
            ..Default::default()
        };
        self.plugin
            .update_pod_sandbox(self.ctx(), &req)
            .await
            .map_err(|source| FakeError::Call {
                call: "UpdatePodSandbox",
                source,
            })?;
        Ok(())
    }

    /// Sends `Shutdown`.
    pub async fn shutdown(&self) -> Result<(), FakeError> {
        self.plugin
            .shutdown(self.ctx(), &api::Empty::default())
            .await
            .map_err(|source| FakeError::Call {
                call: "Shutdown",
                source,
            })?;
        Ok(())
    }

    /// Resolves when the plugin side has closed the connection.
    pub async fn closed(&self) -> Result<(), MuxError> {
        self.mux.closed().await
    }
}

/// A wire pod with the given identity (and an empty network namespace path).
pub fn wire_pod(id: &str, name: &str, namespace: &str) -> api::PodSandbox {
    api::PodSandbox {
        id: id.into(),
        name: name.into(),
        uid: format!("uid-{id}"),
        namespace: namespace.into(),
        ..Default::default()
    }
}

/// A wire container of `pod_id`, with the given annotations.
pub fn wire_container(
    id: &str,
    pod_id: &str,
    name: &str,
    annotations: &[(&str, &str)],
) -> api::Container {
    api::Container {
        id: id.into(),
        pod_sandbox_id: pod_id.into(),
        name: name.into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// The status code and message of a refused call, if that is what `err` is.
pub fn refusal(err: &FakeError) -> Option<(ttrpc::Code, String)> {
    match err {
        FakeError::Call {
            source: ttrpc::Error::RpcStatus(status),
            ..
        } => Some((status.code(), status.message().to_string())),
        _ => None,
    }
}
