//! The pre-installed launch: socket fd and identity from the environment, as the runtime
//! passes them. Its own test binary, because it sets process-wide environment variables.

use std::os::fd::IntoRawFd;
use std::sync::Arc;

use async_trait::async_trait;
use nri_lifecycle::model::{Adjustment, Container, Event, EventKind, Pod, RuntimeInfo};
use nri_lifecycle::nri::{self, Handler};
use nri_test_support::fake_runtime::{FakeRuntime, Generation};
use tokio::sync::Notify;

#[derive(Default)]
struct Quiet {
    shut_down: Notify,
}

#[async_trait]
impl Handler for Quiet {
    fn events(&self) -> Vec<EventKind> {
        vec![EventKind::PostStartContainer]
    }
    async fn configure(&self, _info: RuntimeInfo) {}
    async fn synchronize(&self, _pods: Vec<Pod>, _containers: Vec<Container>) {}
    async fn create_container(
        &self,
        _pod: Pod,
        _c: Container,
    ) -> Result<Adjustment, nri_lifecycle::core::Error> {
        Ok(Adjustment::default())
    }
    async fn event(&self, _event: Event) -> Result<(), nri_lifecycle::core::Error> {
        Ok(())
    }
    async fn shutdown(&self) {
        self.shut_down.notify_one();
    }
}

#[tokio::test]
async fn preinstalled_plugin_registers_from_env_and_exits_when_the_runtime_closes() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fake = FakeRuntime::start(
        {
            ours.set_nonblocking(true).unwrap();
            tokio::net::UnixStream::from_std(ours).unwrap()
        },
        Generation::StateChangeOnly,
    )
    .await
    .unwrap();
    let fd = theirs.into_raw_fd();
    std::env::set_var("NRI_PLUGIN_SOCKET", fd.to_string());
    std::env::set_var("NRI_PLUGIN_NAME", "lifecycle");
    std::env::set_var("NRI_PLUGIN_IDX", "10");

    let handler = Arc::new(Quiet::default());
    let h: Arc<dyn Handler> = handler.clone();
    let plugin = tokio::spawn(nri::run_preinstalled(h));

    let reg = fake.registered().await.unwrap();
    assert_eq!((reg.name.as_str(), reg.index.as_str()), ("lifecycle", "10"));
    let mask = fake.configure(fake.default_configure()).await.unwrap();
    assert_eq!(mask, 1 << 6);

    drop(fake);
    plugin.await.unwrap().unwrap();
    handler.shut_down.notified().await;

    // The socket is ours alone: a second adoption is refused.
    std::env::set_var("NRI_PLUGIN_SOCKET", "0");
    let h: Arc<dyn Handler> = handler.clone();
    let err = nri::run_preinstalled(h).await.unwrap_err();
    assert!(err.to_string().contains("already in use"), "{err}");
}
