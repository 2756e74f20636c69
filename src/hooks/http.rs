//! The httpGet runner: HTTP/1.1 over a connection made from inside the pod's network
//! namespace. HTTPS skips certificate verification, as the kubelet does. Unlike the kubelet
//! (which only logs), a final status outside 200–399 is a failure.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, HOST, LOCATION, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::net::{choose_addr, connect_in_pod};
use super::output::{Tail, OUTPUT_LIMIT};
use super::{Error, Limits, Outcome, Target};
use crate::annotations::{HttpGet, Scheme};

const MAX_REDIRECTS: usize = 10;

fn user_agent() -> String {
    format!("nri-lifecycle/{}", env!("CARGO_PKG_VERSION"))
}

/// Accepts any certificate: the kubelet does not verify either (the pod is reached by IP).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
    });
    config
        .as_ref()
        .map(|c| tokio_rustls::TlsConnector::from(Arc::clone(c)))
        .map_err(Clone::clone)
}

/// One request's answer: status, redirect target, kept body.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

async fn exchange<I>(io: I, req: Request<Empty<Bytes>>) -> Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn_task = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let mut tail = Tail::default();
        let mut kept = 0usize;
        while kept < OUTPUT_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let take = data.len().min(OUTPUT_LIMIT - kept);
                        tail.push(&data[..take]);
                        kept += take;
                    }
                }
                Some(Err(e)) => return Err(format!("reading body: {e}")),
                None => break,
            }
        }
        Ok(Answer {
            status,
            location,
            body: tail.render(),
        })
    }
    .await;
    conn_task.abort();
    result
}

fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

pub(super) async fn run(get: &HttpGet, target: &Target, limits: &Limits) -> Outcome {
    match fetch(get, target, limits).await {
        Ok((url, answer)) => {
            let code = answer.status.as_u16();
            if (200..400).contains(&code) {
                Outcome::Succeeded {
                    output: answer.body,
                }
            } else {
                Outcome::Failed {
                    reason: format!("http get {url} returned {code}: {}", answer.body),
                }
            }
        }
        Err(e) => Outcome::Failed {
            reason: e.to_string(),
        },
    }
}

async fn fetch(get: &HttpGet, target: &Target, limits: &Limits) -> Result<(String, Answer), Error> {
    let ip = choose_addr(get.host.as_deref(), target, limits).await?;
    let host_name = get
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| ip.to_string());
    let host_header = get
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone());
    let mut scheme = get.scheme;
    let mut port = get.port;
    let mut path = if get.path.starts_with('/') {
        get.path.clone()
    } else {
        format!("/{}", get.path)
    };
    let mut redirects = 0;
    loop {
        let url = format!(
            "{}://{}{path}",
            if scheme == Scheme::Https {
                "https"
            } else {
                "http"
            },
            host_port(&host_name, port)
        );
        let http_err = |reason: String| Error::Http {
            url: url.clone(),
            reason,
        };
        let authority = host_header
            .clone()
            .unwrap_or_else(|| host_port(&host_name, port));
        let mut builder = Request::builder()
            .method("GET")
            .uri(
                path.parse::<Uri>()
                    .map_err(|e| http_err(format!("bad path: {e}")))?,
            )
            .header(HOST, &authority);
        let mut has_ua = false;
        let mut has_accept = false;
        for (k, v) in &get.headers {
            if k.eq_ignore_ascii_case("host") {
                continue;
            }
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| http_err(format!("header {k:?}: {e}")))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| http_err(format!("header {k:?}: {e}")))?;
            has_ua |= name == USER_AGENT;
            has_accept |= name == ACCEPT;
            builder = builder.header(name, value);
        }
        if !has_ua {
            builder = builder.header(USER_AGENT, user_agent());
        }
        if !has_accept {
            builder = builder.header(ACCEPT, "*/*");
        }
        let req = builder
            .body(Empty::<Bytes>::new())
            .map_err(|e| http_err(e.to_string()))?;
        let stream = connect_in_pod(target, SocketAddr::new(ip, port)).await?;
        let answer = match scheme {
            Scheme::Http => exchange(TokioIo::new(stream), req).await,
            Scheme::Https => {
                let connector = tls_connector().map_err(&http_err)?;
                let sni_host = authority
                    .rsplit_once(':')
                    .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                    .map(|(h, _)| h)
                    .unwrap_or(&authority)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let name = ServerName::try_from(sni_host)
                    .map_err(|e| http_err(format!("tls server name: {e}")))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| http_err(format!("tls: {e}")))?;
                exchange(TokioIo::new(tls), req).await
            }
        }
        .map_err(&http_err)?;
        let Some(location) = answer
            .location
            .as_deref()
            .filter(|_| answer.status.is_redirection())
        else {
            return Ok((url, answer));
        };
        // Same-host redirects are followed (scheme, port and path may change); a redirect
        // to another host is not followed and its 3xx counts as the answer, as the kubelet.
        let next = location
            .parse::<Uri>()
            .map_err(|e| http_err(format!("bad redirect {location:?}: {e}")))?;
        if let Some(h) = next.host() {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            if !h.eq_ignore_ascii_case(&host_name) {
                return Ok((url, answer));
            }
            scheme = match next.scheme_str() {
                Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
                Some(_) => Scheme::Http,
                None => scheme,
            };
            port = next.port_u16().unwrap_or(match scheme {
                Scheme::Https => 443,
                Scheme::Http => 80,
            });
        }
        path = next
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(http_err(format!("more than {MAX_REDIRECTS} redirects")));
        }
    }
}
