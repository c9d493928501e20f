//! TLS 1.3 between a client and the tracker (rustls, ring).
//!
//! The tracker's identity is a key pair with a self-signed certificate, made on its first
//! start and kept beside its state ([`ServerIdentity::load_or_create`]), or given. Nobody
//! signs it: a client decides whether to trust the key it is shown by its [`Fingerprint`]
//! ([`KeyCheck`]): one pinned by the user, or the one it remembered for that address
//! (trust on first use), or, for a tracker it has never met, any key, which its caller
//! then remembers. The handshake's signature is always checked against the presented key,
//! so whoever answers holds the private key whose fingerprint was checked.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error("{present} exists but {missing} does not: give both or neither")]
    HalfThere { present: PathBuf, missing: PathBuf },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The fingerprint of the key in a DER certificate, or why there is none.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> Result<Fingerprint, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("{e:?}"))?;
    Ok(Fingerprint::of_spki(ee.subject_public_key_info().as_ref()))
}

/// The fingerprint of the key in the first certificate of a PEM file.
pub fn fingerprint_of_pem(pem: &[u8]) -> Result<Fingerprint, String> {
    let first = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no certificate in it")?
        .map_err(|e| format!("not a PEM certificate: {e:?}"))?;
    fingerprint_of(&first)
}

/// The tracker's key and certificate, ready to accept connections.
pub struct ServerIdentity {
    config: Arc<ServerConfig>,
    fingerprint: Fingerprint,
}

impl ServerIdentity {
    /// Reads the certificate (PEM, first one used) and private key (PEM) at these paths;
    /// with `create`, when neither exists, first makes a new key pair and self-signed
    /// certificate there (the key readable by its owner only). One without the other is an
    /// error: making a new pair then would change the key every client remembers.
    /// Also says whether they were made now.
    pub fn load_or_create(
        cert: &Path,
        key: &Path,
        create: bool,
    ) -> Result<(ServerIdentity, bool), TlsError> {
        let made = match (cert.exists(), key.exists()) {
            (false, false) if create => {
                make(cert, key)?;
                true
            }
            (true, false) => {
                return Err(TlsError::HalfThere {
                    present: cert.into(),
                    missing: key.into(),
                })
            }
            (false, true) => {
                return Err(TlsError::HalfThere {
                    present: key.into(),
                    missing: cert.into(),
                })
            }
            _ => false,
        };
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.into(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let bad = |path: &Path, why: String| TlsError::Bad {
            path: path.into(),
            why,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, format!("not a PEM certificate: {e:?}")))?;
        let first = chain
            .first()
            .ok_or_else(|| bad(cert, "no certificate in it".into()))?;
        let fingerprint = fingerprint_of(first).map_err(|e| bad(cert, e))?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(key, format!("not a PEM private key: {e:?}")))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| bad(key, format!("does not go with the certificate: {e}")))?;
        // Clients connect once per session: resumption would only cost memory.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let config = Arc::new(config);
        Ok((
            ServerIdentity {
                config,
                fingerprint,
            },
            made,
        ))
    }

    /// The configuration to accept connections with ([`crate::tls_server::ServerStream`]).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// A new ECDSA P-256 key pair and a self-signed certificate for it, written atomically:
/// each to a temporary file, synced, then renamed, the key first.
fn make(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let made = rcgen::generate_simple_self_signed(vec!["swarmchat-tracker".to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_new(key, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.cert.pem().as_bytes(), 0o644)
}

/// Writes `bytes` to `path` through a temporary file beside it, with `mode`.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(
        ".{}.new-{}",
        path.file_name()
            .map_or("file".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        TlsError::Write {
            path: path.into(),
            source,
        }
    })
}

/// Which tracker keys a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// Only this one (pinned by the user, or remembered for the address).
    Only(Fingerprint),
    /// Any: a tracker met for the first time (the caller remembers what it was shown).
    Any,
}

/// Checks the tracker's key by its fingerprint and records the one presented, so the
/// caller can say which key it was shown when it refuses it.
#[derive(Debug)]
struct ByFingerprint {
    check: KeyCheck,
    seen: Arc<Mutex<Option<Fingerprint>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ByFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint_of(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
        match self.check {
            KeyCheck::Only(want) if want != fp => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a TLS connection to the tracker did not open.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The tracker presented a key other than the one expected.
    #[error("the server presented key {presented}, not {expected}")]
    WrongKey {
        presented: Fingerprint,
        expected: Fingerprint,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Opens TLS over `tcp` to the tracker at `addr`, accepting its key as `check` says. On
/// success, also the fingerprint of the key it presented.
pub async fn connect(
    tcp: TcpStream,
    addr: SocketAddr,
    check: KeyCheck,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Fingerprint), ConnectError> {
    let (config, seen) = client_config(check);
    let name = ServerName::IpAddress(addr.ip().into());
    match TlsConnector::from(config).connect(name, tcp).await {
        Ok(stream) => {
            let fp = seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expect("a key was checked before the handshake finished");
            Ok((stream, fp))
        }
        Err(e) => {
            let presented = *seen.lock().unwrap_or_else(|e| e.into_inner());
            match (check, presented) {
                (KeyCheck::Only(expected), Some(presented)) if presented != expected => {
                    Err(ConnectError::WrongKey {
                        presented,
                        expected,
                    })
                }
                _ => Err(ConnectError::Io(e)),
            }
        }
    }
}

/// A client configuration accepting keys as `check` says, and where the presented key's
/// fingerprint is recorded (for blocking clients: tests, `rustls::StreamOwned`).
pub fn client_config(check: KeyCheck) -> (Arc<ClientConfig>, Arc<Mutex<Option<Fingerprint>>>) {
    let seen = Arc::new(Mutex::new(None));
    let provider = provider();
    let verifier = ByFingerprint {
        check,
        seen: seen.clone(),
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (Arc::new(config), seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn identity(dir: &Path) -> (ServerIdentity, bool) {
        ServerIdentity::load_or_create(&dir.join("t.cert.pem"), &dir.join("t.key.pem"), true)
            .unwrap()
    }

    #[test]
    fn an_identity_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, made) = identity(dir.path());
        assert!(made);
        let (again, made) = identity(dir.path());
        assert!(!made);
        assert_eq!(first.fingerprint(), again.fingerprint());
        let mode = std::fs::metadata(dir.path().join("t.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Half of it gone: an error naming both, not a new key.
        std::fs::remove_file(dir.path().join("t.cert.pem")).unwrap();
        let err = ServerIdentity::load_or_create(
            &dir.path().join("t.cert.pem"),
            &dir.path().join("t.key.pem"),
            true,
        )
        .err()
        .unwrap();
        assert!(matches!(err, TlsError::HalfThere { .. }), "{err}");
        // Junk: named.
        std::fs::write(dir.path().join("t.cert.pem"), "junk").unwrap();
        let err = ServerIdentity::load_or_create(
            &dir.path().join("t.cert.pem"),
            &dir.path().join("t.key.pem"),
            true,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("t.cert.pem"), "{err}");
    }

    async fn serve_once(identity: ServerIdentity) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let accepted = crate::tls_server::ServerStream::accept(identity.config(), tcp);
                if let Ok(mut s) = accepted.await {
                    let mut buf = [0u8; 5];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                        let _ = s.flush().await;
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_client_accepts_only_the_key_it_expects() {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = identity(dir.path());
        let real = id.fingerprint();
        let addr = serve_once(id).await;

        // First use: any key, and the caller learns which.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut s, fp) = connect(tcp, addr, KeyCheck::Any).await.unwrap();
        assert_eq!(fp, real);
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");

        // The remembered key: accepted.
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(connect(tcp, addr, KeyCheck::Only(real)).await.is_ok());

        // Another key expected: refused, saying which was presented.
        let other = Fingerprint::of_spki(b"another key");
        let tcp = TcpStream::connect(addr).await.unwrap();
        match connect(tcp, addr, KeyCheck::Only(other)).await {
            Err(ConnectError::WrongKey {
                presented,
                expected,
            }) => {
                assert_eq!((presented, expected), (real, other));
            }
            other => panic!("{:?}", other.map(|(_, f)| f)),
        }
    }
}
